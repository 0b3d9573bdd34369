"""Ending a call with a status, typed so the checker knows the handler stops there."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import grpc
import grpc.aio


async def abort(
    context: grpc.aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    message: str,
    trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
) -> NoReturn:
    """End the call with `code` and `message` (and trailing metadata)."""
    await context.abort(code, message, trailing_metadata=tuple(trailing_metadata))
    raise AssertionError("unreachable: abort raises")  # pragma: no cover
