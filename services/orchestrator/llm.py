"""The LLM backend: one chat completion against any OpenAI-compatible endpoint, within a budget.

Retries are ours, not the openai client's (it is built with max_retries=0). Read in
openai 3.57.0's `_base_client.py`: the client honours Retry-After / retry-after-ms, but sleeps
for up to two minutes regardless of any caller's budget, and also retries 408/409 and whatever
`x-should-retry` says. The caller here has a hard budget and a local fallback, so a wait that
cannot fit in the budget must end the call at once (LlmUnavailable) instead of sleeping until
the deadline cancels it.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import httpx
import openai
from openai.types.chat import (
    ChatCompletion,
)

from services.orchestrator.model import TokenUsage, ToolCallRequest

logger = logging.getLogger(__name__)

# Backoff between attempts when the server names no delay (as the openai client does).
INITIAL_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 8.0
# An attempt that may still be retried gets this share of the remaining budget, so one stuck
# connection cannot use it all; the last attempt gets whatever is left.
ATTEMPT_BUDGET_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class LlmReply:
    content: str
    tool_calls: list[ToolCallRequest]
    usage: TokenUsage
    model: str


class LlmError(Exception):
    """The LLM gave no usable answer; the caller falls back to the local planner."""


class LlmUnavailable(LlmError):
    """Overloaded, failing, unreachable or answering nonsense, after the retries allowed."""


class LlmTimeout(LlmError):
    """The time budget ran out."""


class Llm(Protocol):
    async def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        *,
        timeout_seconds: float,
    ) -> LlmReply: ...


class OpenAIChat:
    """Chat completions through one long-lived `openai.AsyncOpenAI` client."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        model: str,
        max_retries: int = 2,
        http_client: httpx.AsyncClient | None = None,
        temperature: float | None = None,
    ) -> None:
        if not api_key:
            # The openai client would fail with a message about its own environment variables.
            raise ValueError("api_key must not be empty (local servers accept any placeholder)")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self._model = model
        self._max_retries = max_retries
        self._temperature = temperature
        self._owns_http_client = http_client is None
        self.client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            # openai accepts httpx and httpx2 clients alike; its annotation names only httpx2.
            http_client=cast(Any, http_client),
        )

    async def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        *,
        timeout_seconds: float,
    ) -> LlmReply:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        try:
            async with asyncio.timeout_at(deadline):
                completion = await self._create_with_retries(messages, tools, deadline)
        except TimeoutError as exc:
            raise LlmTimeout(f"LLM gave no answer within {timeout_seconds:.3g}s") from exc
        return _reply_from(completion, self._model)

    async def aclose(self) -> None:
        # An injected HTTP client belongs to whoever made it.
        if self._owns_http_client:
            await self.client.close()

    async def _create_with_retries(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        deadline: float,
    ) -> ChatCompletion:
        loop = asyncio.get_running_loop()
        failure: openai.APIError
        delay: float
        for attempt in range(self._max_retries + 1):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            last = attempt == self._max_retries
            attempt_timeout = remaining if last else remaining * ATTEMPT_BUDGET_SHARE
            try:
                return await self._create(messages, tools, attempt_timeout)
            except openai.APITimeoutError as exc:
                if last or deadline - loop.time() <= 0:
                    raise TimeoutError from exc
                # The attempt already waited; retry at once on a fresh connection.
                logger.info("LLM attempt %d timed out; retrying", attempt + 1)
                continue
            except openai.APIConnectionError as exc:
                failure = exc
                reason = "connection error"
                delay = _backoff(attempt)
            except openai.APIStatusError as exc:
                if not _retryable(exc.status_code):
                    raise LlmError(f"LLM rejected the request: HTTP {exc.status_code}") from exc
                failure = exc
                reason = f"HTTP {exc.status_code}"
                server_delay = _retry_after_seconds(exc.response.headers)
                delay = server_delay if server_delay is not None else _backoff(attempt)
            except openai.OpenAIError as exc:
                raise LlmUnavailable(f"LLM call failed: {type(exc).__name__}") from exc
            except json.JSONDecodeError as exc:  # a 200 whose JSON body does not parse
                raise LlmUnavailable("LLM answered with a body that is not JSON") from exc
            if last:
                raise LlmUnavailable(
                    f"LLM unavailable after {attempt + 1} attempts: {reason}"
                ) from failure
            if delay >= deadline - loop.time():
                raise LlmUnavailable(
                    f"LLM unavailable ({reason}); the next retry, in {delay:.3g}s, "
                    "would not fit in the time left"
                ) from failure
            logger.info("LLM attempt %d failed (%s); retrying in %.2fs", attempt + 1, reason, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    async def _create(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        attempt_seconds: float,
    ) -> ChatCompletion:
        body: dict[str, Any] = {"model": self._model, "messages": list(messages)}
        if tools:
            body["tools"] = list(tools)
            body["tool_choice"] = "auto"
        if self._temperature is not None:
            body["temperature"] = self._temperature
        # The client's generic `post` (its documented way to send a body as it is) instead of
        # `chat.completions.create`: our messages and tool schemas are plain JSON already, and
        # create() walks them through its TypedDict transformer on every call, about a quarter
        # of a turn's CPU.
        return await self.client.post(
            "/chat/completions",
            cast_to=ChatCompletion,
            body=body,
            options={"timeout": attempt_seconds},
        )


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


def _backoff(attempt: int) -> float:
    delay = min(INITIAL_BACKOFF_SECONDS * 2.0**attempt, MAX_BACKOFF_SECONDS)
    return delay * (1 - 0.25 * random.random())  # noqa: S311 - jitter, not a secret


def _retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The wait the server asks for: retry-after-ms, else Retry-After (seconds or an HTTP date)."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue
        if math.isfinite(seconds):
            return max(seconds, 0.0)
        return math.inf
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _reply_from(completion: object, configured_model: str) -> LlmReply:
    # Without strict validation the openai client builds models from whatever JSON arrived (or
    # hands back text), so nothing below may be assumed present.
    choices = getattr(completion, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise LlmUnavailable("LLM response has no choices")
    message = getattr(choices[0], "message", None)
    if message is None:
        raise LlmUnavailable("LLM response choice has no message")
    content = getattr(message, "content", None)
    if content is not None and not isinstance(content, str):
        raise LlmUnavailable("LLM response content is not text")
    calls = [_tool_call(call, index) for index, call in enumerate(_list(message, "tool_calls"))]
    usage = getattr(completion, "usage", None)
    model = getattr(completion, "model", None)
    return LlmReply(
        content=content or "",
        tool_calls=[call for call in calls if call is not None],
        usage=TokenUsage(
            prompt_tokens=_count(usage, "prompt_tokens"),
            completion_tokens=_count(usage, "completion_tokens"),
        ),
        model=model if isinstance(model, str) and model else configured_model,
    )


def _list(obj: object, name: str) -> list[Any]:
    value = getattr(obj, name, None)
    if value is None:
        return []
    if not isinstance(value, list):
        raise LlmUnavailable(f"LLM response field {name} is not a list")
    return value


def _tool_call(call: object, index: int) -> ToolCallRequest | None:
    function = getattr(call, "function", None)
    if function is None:
        # Custom (free-text) tools are never offered, so their calls cannot be ours.
        logger.warning("ignoring an LLM tool call of type %s", getattr(call, "type", "?"))
        return None
    name = getattr(function, "name", None)
    if not isinstance(name, str) or not name:
        raise LlmUnavailable("LLM tool call has no function name")
    arguments = getattr(function, "arguments", None)
    if arguments is None:
        arguments = "{}"
    elif not isinstance(arguments, str):
        # Some OpenAI-compatible servers send the arguments as an object, not as JSON text.
        arguments = json.dumps(arguments, ensure_ascii=False)
    call_id = getattr(call, "id", None)
    if not isinstance(call_id, str) or not call_id:
        call_id = f"call_{index}"  # the tool result must name a call; some servers omit ids
    return ToolCallRequest(id=call_id, name=name, arguments=arguments)


def _count(usage: object, name: str) -> int:
    value = getattr(usage, name, None)
    return value if isinstance(value, int) and value >= 0 else 0
