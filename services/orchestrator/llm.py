"""The LLM backend: one chat completion against any OpenAI-compatible endpoint, within a budget.

The turn speaks neutral messages (`model.Message`) and tool specs; this adapter alone knows the
Chat Completions wire format: it builds the request body from them and reads the reply back into
an `LlmReply`, trusting nothing in it.

Retries are ours, not the openai client's (it is built with max_retries=0). Read in
openai 3.57.0's `_base_client.py`: the client honours Retry-After / retry-after-ms, but sleeps
for up to two minutes regardless of any caller's budget, and also retries 408/409 and whatever
`x-should-retry` says. The caller here has a hard budget and a local fallback, so a wait that
cannot fit in the budget must end the call at once (LlmUnavailable) instead of sleeping until
the deadline cancels it.

Each call is one span (OpenTelemetry's GenAI conventions, `chat {model}`, kind CLIENT) from the
first attempt to the last chunk, retries included (an event each). It carries what an operator
needs and nothing the user wrote: model, bound, token counts, finish reason, response id, error
class; never the messages or the reply (see `_LlmSpan`).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import math
import random
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, cast

import httpx
import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.common.deadline import Deadline
from services.orchestrator.model import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCallRequest,
    ToolResultMessage,
    UserMessage,
)
from services.orchestrator.toolspec import ToolSpec

logger = logging.getLogger(__name__)

# Backoff between attempts when the server names no delay (as the openai client does).
INITIAL_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 8.0
# An attempt that may still be retried gets this share of the remaining budget, so one stuck
# connection cannot use it all; the last attempt gets whatever is left.
ATTEMPT_BUDGET_SHARE = 0.5
# Per-message framing the providers count on top of the text (role, separators), and a floor
# under every estimate; generous on purpose, since the estimate is a budget's worst case.
_TOKENS_PER_MESSAGE: Final = 8
_TOKENS_BASE: Final = 16

MaxTokensParameter = Literal["max_tokens", "max_completion_tokens"]


@dataclass(frozen=True, slots=True)
class LlmRequest:
    """One completion: the conversation so far, the tools offered, the completion's bound."""

    messages: Sequence[Message]
    tools: Sequence[ToolSpec]
    max_tokens: int


@dataclass(frozen=True, slots=True)
class LlmReply:
    content: str
    tool_calls: list[ToolCallRequest]
    prompt_tokens: int
    completion_tokens: int
    model: str
    truncated: bool = False  # the provider stopped at max_tokens
    # False when the provider said nothing of the tokens (a stream stopped early, or a provider
    # that omits usage): the caller then estimates them.
    usage_reported: bool = True
    stopped: bool = False  # a streamed reply the caller stopped (StopStream) before its end


OnText = Callable[[str], Awaitable[None]]


class StopStream(Exception):
    """Raised by a stream's `on_text`: the rest of the reply is not wanted. The stream ends and
    its reply, as far as it came, is returned with `stopped` set."""


def estimate_prompt_tokens(request: LlmRequest) -> int:
    """An upper estimate of the prompt's tokens: one per two UTF-8 bytes of its text and of the
    tool schemas, plus framing. Tokenizers give about one token per four bytes of English and
    per two to three bytes of Japanese or Korean (each character three bytes, one or 1.5
    tokens), so the estimate is above the truth for the text this agent sees."""
    size = 0
    for message in request.messages:
        if isinstance(message, SystemMessage | UserMessage):
            size += _utf8_len(message.text)
        elif isinstance(message, AssistantMessage):
            size += _utf8_len(message.text)
            size += sum(
                _utf8_len(c.name) + _utf8_len(c.arguments) + len(c.id) for c in message.tool_calls
            )
        else:
            size += len(message.call_id) + _utf8_len(_result_json(message.result))
    size += sum(len(_tool_json(spec)) for spec in request.tools)
    return _TOKENS_BASE + (size + 1) // 2 + _TOKENS_PER_MESSAGE * len(request.messages)


def estimate_text_tokens(text: str) -> int:
    """At most this many tokens wrote `text`: the prompt estimate's rule, two bytes a token."""
    return (_utf8_len(text) + 1) // 2


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class LlmError(Exception):
    """The LLM gave no usable answer; the caller falls back to the local planner."""


class LlmUnavailable(LlmError):
    """Overloaded, failing, unreachable or answering nonsense, after the retries allowed."""


class LlmRejected(LlmError):
    """The provider refused the request itself (HTTP 4xx other than 429)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"LLM rejected the request: HTTP {status}")
        self.status = status

    @property
    def is_request_error(self) -> bool:
        """The request was at fault (malformed, too large), not the provider: a breaker counts
        it as an answer. A refused key (401, 403) or a missing model (404) is the provider's
        setup failing, and counts against it."""
        return self.status in (400, 413, 422)


def is_request_error(error: BaseException) -> bool:
    return isinstance(error, LlmRejected) and error.is_request_error


class LlmTimeout(LlmError):
    """The time budget ran out."""


class Llm(Protocol):
    async def complete(self, request: LlmRequest, *, timeout_seconds: float) -> LlmReply: ...

    async def stream(
        self, request: LlmRequest, *, timeout_seconds: float, on_text: OnText
    ) -> LlmReply:
        """The completion streamed: `on_text` gets the reply's text as it arrives (and may stop
        it with StopStream); the whole reply, tool calls assembled, is returned at the end."""
        ...


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
        max_tokens_parameter: MaxTokensParameter = "max_tokens",
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        """`tracer_provider`: where the calls' spans go (the process's provider by default)."""
        if not api_key:
            # The openai client would fail with a message about its own environment variables.
            raise ValueError("api_key must not be empty (local servers accept any placeholder)")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self._model = model
        self._max_retries = max_retries
        self._temperature = temperature
        self._max_tokens_parameter = max_tokens_parameter
        self._owns_http_client = http_client is None
        self.client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            # openai accepts httpx and httpx2 clients alike; its annotation names only httpx2.
            http_client=cast(Any, http_client),
        )
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        self._span_name = f"chat {_bounded(model)}"
        self._span_attributes = _request_attributes(
            model, str(self.client.base_url), temperature=temperature
        )

    async def complete(self, request: LlmRequest, *, timeout_seconds: float) -> LlmReply:
        deadline = Deadline.after(timeout_seconds)
        body = self._body(request)
        with self._span(request) as span:
            try:
                async with deadline.timeout():
                    with span.current():
                        completion = await self._create_with_retries(body, deadline)
            except TimeoutError as exc:
                raise LlmTimeout(f"LLM gave no answer within {timeout_seconds:.3g}s") from exc
            span.response(
                response_id=getattr(completion, "id", None),
                model=getattr(completion, "model", None),
                finish_reason=_first_finish_reason(completion),
                usage=getattr(completion, "usage", None),
            )
            return _reply_from(completion, self._model)

    async def stream(
        self, request: LlmRequest, *, timeout_seconds: float, on_text: OnText
    ) -> LlmReply:
        deadline = Deadline.after(timeout_seconds)
        body = self._body(request)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        said = False

        async def heard(piece: str) -> None:
            nonlocal said
            said = True
            await on_text(piece)

        with self._span(request) as span:
            try:
                async with deadline.timeout():
                    for restart in range(self._max_retries + 1):
                        # Retries happen before the first text only: nothing has been said yet.
                        with span.current():
                            chunks = await self._create_with_retries(body, deadline, stream=True)
                        try:
                            # Read in the caller's context, not the LLM span's: what `on_text`
                            # starts (speech, sentence by sentence) belongs to the turn.
                            return await _read_stream(chunks, heard, self._model, span)
                        except openai.APIError as exc:
                            # The answer began (its headers came) and then the stream did not:
                            # a first chunk later than the attempt's share of the time, or a
                            # connection or error event halfway. openai raises these from the
                            # iterator, where the retries above never see them.
                            timed_out = isinstance(exc, openai.APITimeoutError)
                            last = restart == self._max_retries or deadline.expired()
                            if said or last:
                                if timed_out:
                                    raise TimeoutError from exc
                                raise LlmUnavailable(
                                    "the LLM's stream broke off"
                                    + (" after its first words" if said else "")
                                ) from exc
                            reason = "stream timeout" if timed_out else "stream broke off"
                            logger.info("LLM stream %d failed (%s); retrying", restart + 1, reason)
                            with span.current():
                                _retry_event(restart, reason, 0.0)
                    raise AssertionError("unreachable")  # the last restart returns or raises
            except TimeoutError as exc:
                raise LlmTimeout(f"LLM gave no answer within {timeout_seconds:.3g}s") from exc

    def _span(self, request: LlmRequest) -> _LlmSpan:
        attributes = dict(self._span_attributes)
        attributes[_MAX_TOKENS_ATTRIBUTE] = request.max_tokens
        span = self._tracer.start_span(self._span_name, kind=SpanKind.CLIENT, attributes=attributes)
        return _LlmSpan(span)

    async def aclose(self) -> None:
        # An injected HTTP client belongs to whoever made it.
        if self._owns_http_client:
            await self.client.close()

    def _body(self, request: LlmRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model,
            "messages": [_wire_message(message) for message in request.messages],
            self._max_tokens_parameter: request.max_tokens,
        }
        if request.tools:
            body["tools"] = [_tool_definition(spec) for spec in request.tools]
            body["tool_choice"] = "auto"
        if self._temperature is not None:
            body["temperature"] = self._temperature
        return body

    async def _create_with_retries(
        self, body: dict[str, Any], deadline: Deadline, *, stream: bool = False
    ) -> Any:
        failure: openai.APIError
        delay: float
        for attempt in range(self._max_retries + 1):
            remaining = deadline.remaining()
            if remaining <= 0:
                raise TimeoutError
            last = attempt == self._max_retries
            attempt_timeout = remaining if last else remaining * ATTEMPT_BUDGET_SHARE
            try:
                return await self._create(
                    body, attempt_timeout, stream=stream, read_seconds=remaining
                )
            except openai.APITimeoutError as exc:
                if last or deadline.expired():
                    raise TimeoutError from exc
                # The attempt already waited; retry at once on a fresh connection.
                logger.info("LLM attempt %d timed out; retrying", attempt + 1)
                _retry_event(attempt, "timeout", 0.0)
                continue
            except openai.APIConnectionError as exc:
                failure = exc
                reason = "connection error"
                delay = _backoff(attempt)
            except openai.APIStatusError as exc:
                if not _retryable(exc.status_code):
                    raise LlmRejected(exc.status_code) from exc
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
            if delay >= deadline.remaining():
                raise LlmUnavailable(
                    f"LLM unavailable ({reason}); the next retry, in {delay:.3g}s, "
                    "would not fit in the time left"
                ) from failure
            logger.info("LLM attempt %d failed (%s); retrying in %.2fs", attempt + 1, reason, delay)
            _retry_event(attempt, reason, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    async def _create(
        self,
        body: dict[str, Any],
        attempt_seconds: float,
        *,
        stream: bool = False,
        read_seconds: float | None = None,
    ) -> Any:
        # The client's generic `post` (its documented way to send a body as it is) instead of
        # `chat.completions.create`: our messages and tool schemas are plain JSON already, and
        # create() walks them through its TypedDict transformer on every call, about a quarter
        # of a turn's CPU.
        if stream:
            timeout = httpx.Timeout(attempt_seconds, read=read_seconds or attempt_seconds)
            # An attempt's share bounds connecting and sending; reading (the headers, the first
            # token, each one after) may take all the time left: a provider slow to its first
            # token is thinking, not failing, and a new request would start its thinking over.
            # The price: a provider that never answers at all is not retried within the call.
            return await self.client.post(
                "/chat/completions",
                cast_to=ChatCompletion,
                body=body,
                # openai normalizes an httpx.Timeout as it does its own httpx2 one.
                options=cast(Any, {"timeout": timeout}),
                stream=True,
                stream_cls=openai.AsyncStream[ChatCompletionChunk],
            )
        return await self.client.post(
            "/chat/completions",
            cast_to=ChatCompletion,
            body=body,
            options={"timeout": attempt_seconds},
        )


# -- the wire format ---------------------------------------------------------------------------


def _result_json(result: Mapping[str, Any]) -> str:
    return json.dumps(result, ensure_ascii=False, separators=(",", ":"))


# Built once per spec object (the specs live for the process): its "tools" entry and that
# entry's JSON, whose length the prompt estimate counts.
_DEFINITIONS: dict[int, tuple[ToolSpec, dict[str, Any], str]] = {}


def _definition(spec: ToolSpec) -> tuple[dict[str, Any], str]:
    cached = _DEFINITIONS.get(id(spec))
    if cached is None or cached[0] is not spec:
        definition = {
            "type": "function",
            "function": {
                "name": spec.name,
                "description": spec.description,
                "parameters": spec.parameters,
            },
        }
        cached = _DEFINITIONS[id(spec)] = (spec, definition, json.dumps(definition))
    return cached[1], cached[2]


def _tool_definition(spec: ToolSpec) -> dict[str, Any]:
    """The Chat Completions "tools" entry of a spec."""
    return _definition(spec)[0]


def _tool_json(spec: ToolSpec) -> str:
    return _definition(spec)[1]


def _wire_message(message: Message) -> dict[str, Any]:
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": message.text}
    if isinstance(message, UserMessage):
        return {"role": "user", "content": message.text}
    if isinstance(message, AssistantMessage):
        if not message.tool_calls:
            return {"role": "assistant", "content": message.text}
        return {
            "role": "assistant",
            "content": message.text or None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in message.tool_calls
            ],
        }
    assert isinstance(message, ToolResultMessage)
    return {
        "role": "tool",
        "tool_call_id": message.call_id,
        "content": _result_json(message.result),
    }


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
    taken: set[str] = set()  # ids within one reply must be unique: each result names its call
    calls = [
        _tool_call(call, index, taken) for index, call in enumerate(_list(message, "tool_calls"))
    ]
    usage = getattr(completion, "usage", None)
    model = getattr(completion, "model", None)
    return LlmReply(
        content=content or "",
        tool_calls=[call for call in calls if call is not None],
        prompt_tokens=_count(usage, "prompt_tokens"),
        completion_tokens=_count(usage, "completion_tokens"),
        model=model[:_MAX_MODEL_CHARS] if isinstance(model, str) and model else configured_model,
        truncated=getattr(choices[0], "finish_reason", None) == "length",
        usage_reported=usage is not None,
    )


# A streamed reply is read this far at most, whatever the provider keeps sending.
_MAX_STREAMED_CHARS: Final = 100_000
_MAX_STREAMED_CALLS: Final = 256


@dataclass
class _StreamedCall:
    id: object = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    size: int = 0


async def _read_stream(
    chunks: Any, on_text: OnText, configured_model: str, span: _LlmSpan | None = None
) -> LlmReply:
    """The streamed chunks as one reply: text handed to `on_text` as it comes, tool calls put
    together from their pieces, usage from the last chunk. Nothing in a chunk is trusted.
    What the provider said of the response goes on `span`, however the stream ends."""
    text: list[str] = []
    size = 0
    calls: dict[int, _StreamedCall] = {}
    usage: object = None
    model: object = None
    response_id: object = None
    finish: object = None
    stopped = False
    try:
        async for chunk in _aiter(chunks):
            response_id = response_id or getattr(chunk, "id", None)
            model = getattr(chunk, "model", None) or model
            usage = getattr(chunk, "usage", None) or usage
            choices = getattr(chunk, "choices", None)
            if not isinstance(choices, list) or not choices:
                continue
            choice = choices[0]
            finish = getattr(choice, "finish_reason", None) or finish
            delta = getattr(choice, "delta", None)
            piece = getattr(delta, "content", None)
            if isinstance(piece, str) and piece and size < _MAX_STREAMED_CHARS:
                piece = piece[: _MAX_STREAMED_CHARS - size]
                size += len(piece)
                text.append(piece)
                await on_text(piece)
            for part in getattr(delta, "tool_calls", None) or ():
                _add_call_piece(calls, part)
    except StopStream:
        stopped = True
    finally:
        if span is not None:
            span.response(
                response_id=response_id,
                model=model,
                finish_reason=finish,
                usage=usage,
                stopped=stopped,
            )
        close = getattr(chunks, "close", None)
        if close is not None:
            await close()
    taken: set[str] = set()
    assembled = [
        _tool_call(_AssembledCall(c), index, taken)
        for index, c in enumerate(calls[i] for i in sorted(calls))
    ]
    return LlmReply(
        content="".join(text),
        tool_calls=[] if stopped else [call for call in assembled if call is not None],
        prompt_tokens=_count(usage, "prompt_tokens"),
        completion_tokens=_count(usage, "completion_tokens"),
        model=model[:_MAX_MODEL_CHARS] if isinstance(model, str) and model else configured_model,
        truncated=finish == "length",
        usage_reported=usage is not None,
        stopped=stopped,
    )


async def _aiter(chunks: Any) -> AsyncIterator[Any]:
    async for chunk in chunks:
        yield chunk


def _add_call_piece(calls: dict[int, _StreamedCall], part: object) -> None:
    index = getattr(part, "index", None)
    if not isinstance(index, int) or index < 0:
        return
    call = calls.get(index)
    if call is None:
        if len(calls) >= _MAX_STREAMED_CALLS:
            return
        call = calls[index] = _StreamedCall()
    call.id = getattr(part, "id", None) or call.id
    function = getattr(part, "function", None)
    name = getattr(function, "name", None)
    if isinstance(name, str) and name and not call.name:
        call.name = name[:_MAX_STREAMED_NAME]
    arguments = getattr(function, "arguments", None)
    if isinstance(arguments, str) and call.size < _MAX_STREAMED_ARGUMENTS:
        call.arguments.append(arguments[: _MAX_STREAMED_ARGUMENTS - call.size])
        call.size += len(arguments)


_MAX_STREAMED_NAME: Final = 200
_MAX_STREAMED_ARGUMENTS: Final = 64_000


class _AssembledCall:
    """A streamed call in the shape `_tool_call` reads (as a non-streamed reply's call)."""

    def __init__(self, streamed: _StreamedCall) -> None:
        self.id = streamed.id
        self.type = "function"
        self.function = _Function(streamed.name, "".join(streamed.arguments))


@dataclass(frozen=True, slots=True)
class _Function:
    name: str
    arguments: str


def _list(obj: object, name: str) -> list[Any]:
    value = getattr(obj, name, None)
    if value is None:
        return []
    if not isinstance(value, list):
        raise LlmUnavailable(f"LLM response field {name} is not a list")
    return value


def _tool_call(call: object, index: int, taken: set[str]) -> ToolCallRequest | None:
    function = getattr(call, "function", None)
    if function is None:
        # Custom (free-text) tools are never offered, so their calls cannot be ours.
        logger.info("ignoring an LLM tool call that names no function")
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
    if (
        not isinstance(call_id, str)
        or not call_id
        or len(call_id) > _MAX_CALL_ID_CHARS
        or call_id in taken
    ):
        # The tool result must name its call: some servers omit ids, and two results naming
        # one id make the next request invalid.
        call_id = _fresh_id(index, taken)
    taken.add(call_id)
    return ToolCallRequest(id=call_id, name=name, arguments=arguments)


def _fresh_id(index: int, taken: set[str]) -> str:
    candidate = f"call_{index}"
    suffix = 0
    while candidate in taken:
        suffix += 1
        candidate = f"call_{index}_{suffix}"
    return candidate


_MAX_MODEL_CHARS: Final = 100
# Ids go into the next request and the logs; providers use a few dozen characters.
_MAX_CALL_ID_CHARS: Final = 64
# A count beyond this is nonsense (no context window is this large); it is capped, not trusted.
_MAX_TOKEN_COUNT: Final = 10_000_000


def _count(usage: object, name: str) -> int:
    value = getattr(usage, name, None)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return min(value, _MAX_TOKEN_COUNT)


# -- the span of one call ----------------------------------------------------------------------

# OpenTelemetry GenAI semantic conventions (gen-ai-spans, openai). `gen_ai.provider.name`
# replaced `gen_ai.system`; both are set, so queries of either find the calls.
_PROVIDER: Final = "openai"
_MAX_TOKENS_ATTRIBUTE: Final = "gen_ai.request.max_tokens"
# Whatever the provider sends is untrusted: strings from it are cut to this on a span.
_MAX_ATTRIBUTE_CHARS: Final = 128
_MAX_FINISH_REASON_CHARS: Final = 32


def _bounded(value: str, limit: int = _MAX_ATTRIBUTE_CHARS) -> str:
    return value if len(value) <= limit else value[:limit]


def _request_attributes(model: str, base_url: str, *, temperature: float | None) -> dict[str, Any]:
    url = urllib.parse.urlsplit(base_url)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": _PROVIDER,
        "gen_ai.system": _PROVIDER,
        "gen_ai.request.model": _bounded(model),
        "server.address": _bounded(url.hostname or ""),
        "server.port": url.port or (443 if url.scheme == "https" else 80),
    }
    if temperature is not None:
        attributes["gen_ai.request.temperature"] = temperature
    return attributes


def _first_finish_reason(completion: object) -> object:
    choices = getattr(completion, "choices", None)
    if not isinstance(choices, list) or not choices:
        return None
    return getattr(choices[0], "finish_reason", None)


def _retry_event(attempt: int, reason: str, delay_seconds: float) -> None:
    """A retry, on the current (the call's) span; `reason` is ours ("HTTP 503", "timeout")."""
    trace.get_current_span().add_event(
        "chatagent.llm.retry",
        {"attempt": attempt + 1, "reason": reason, "delay_seconds": round(delay_seconds, 3)},
    )


class _LlmSpan:
    """The span of one LLM call, ended when the call is, however it ends.

    A failure sets the status to ERROR and `error.type` to the class of what went wrong
    (`LlmTimeout`, `LlmUnavailable`, `LlmRejected` with `http.response.status_code`, ...):
    never the exception's text, and no exception event, for an exception's text may quote the
    request. A call cancelled by its caller (the turn was cancelled, or ran out of time) is an
    ERROR with `error.type` "cancelled": the provider may have billed it, and the operator
    should see it. A stream the turn stopped on purpose (StopStream) is no error; it carries
    `chatagent.llm.stopped`.
    """

    def __init__(self, span: Span) -> None:
        self._span = span

    def __enter__(self) -> _LlmSpan:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> None:
        try:
            if error is not None:
                self._failed(error)
        finally:
            self._span.end()

    def current(self) -> contextlib.AbstractContextManager[Span]:
        """The span as the current one (for the HTTP requests of the call, its retries)."""
        return trace.use_span(
            self._span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )

    def response(
        self,
        *,
        response_id: object,
        model: object,
        finish_reason: object,
        usage: object,
        stopped: bool = False,
    ) -> None:
        """What the provider said of its response; each part only if it said it."""
        span = self._span
        if isinstance(response_id, str) and response_id:
            span.set_attribute("gen_ai.response.id", _bounded(response_id))
        if isinstance(model, str) and model:
            span.set_attribute("gen_ai.response.model", _bounded(model))
        if isinstance(finish_reason, str) and finish_reason:
            span.set_attribute(
                "gen_ai.response.finish_reasons",
                [_bounded(finish_reason, _MAX_FINISH_REASON_CHARS)],
            )
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", _count(usage, "prompt_tokens"))
            span.set_attribute("gen_ai.usage.output_tokens", _count(usage, "completion_tokens"))
        if stopped:
            span.set_attribute("chatagent.llm.stopped", True)

    def _failed(self, error: BaseException) -> None:
        if isinstance(error, asyncio.CancelledError):
            kind = "cancelled"
        else:
            kind = type(error).__name__
            status = _http_status(error)
            if status is not None:
                self._span.set_attribute("http.response.status_code", status)
        self._span.set_attribute("error.type", kind)
        self._span.set_status(Status(StatusCode.ERROR))


def _http_status(error: BaseException) -> int | None:
    """The HTTP status the provider answered with, if the failure was an answer."""
    if isinstance(error, LlmRejected):
        return error.status
    cause = error.__cause__
    if isinstance(cause, openai.APIStatusError):
        return cause.status_code
    return None
