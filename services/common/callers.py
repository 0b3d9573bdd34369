"""Who is calling: the name of the API token a call authenticated with, else the subject of its
verified client certificate. Set by the authentication interceptor (services.common.auth), read
by the handlers and by the access log."""

from __future__ import annotations

import contextvars
from typing import Any

import grpc.aio

# The token's name, for the handler's own task.
caller_var: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")


def caller_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller of the call being served: its token's name, else "cert:<subject>" from a
    verified client certificate, else "" (no authentication)."""
    named = caller_var.get()
    if named:
        return named
    auth = context.auth_context()
    for key in ("x509_common_name", "x509_subject"):
        values = list(auth.get(key, ())) if auth else []
        if values:
            return "cert:" + bytes(values[0]).decode("utf-8", "replace")[:200]
    return ""
