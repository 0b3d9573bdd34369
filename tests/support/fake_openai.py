"""A local stand-in for an OpenAI-compatible /v1/chat/completions endpoint, steerable per test.

Replies come from, in order: the `script` queue (one entry per request), the `responder`
callable (request body -> Reply), then `default`. A Reply is either a completion (text and/or
tool calls, usage, model), an error (status + headers, e.g. 429 with Retry-After), or a raw body
for malformed answers; any of them may be held back for `delay_seconds` (a hung upstream). Held
requests are released at shutdown, so the server always stops promptly.

`"stream": true` requests get server-sent events: text deltas, tool-call deltas (name first,
then the arguments in pieces), a finish chunk, a usage chunk when
`stream_options.include_usage` is set, then `data: [DONE]`; the first chunk may be held back
after the headers (`stream_first_chunk_delay_seconds`: a provider slow to its first token).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_MODEL = "fake-model"


@dataclass
class Reply:
    """What the fake answers to one request."""

    content: str | None = None
    # Each: {"id": ..., "name": ..., "arguments": JSON text or a dict (dumped as JSON)}.
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 11
    completion_tokens: int = 7
    include_usage: bool = True
    model: str = DEFAULT_MODEL
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0
    # Sent instead of a completion: a dict is sent as JSON, bytes as they are (malformed answers).
    body: dict[str, Any] | bytes | None = None
    content_type: str = "application/json"
    # Streaming only: the text is sent in pieces of this many characters.
    stream_piece_chars: int = 4
    stream_piece_delay_seconds: float = 0.0
    # Streaming only: the status and headers go out at once, the first chunk this much later
    # (a provider slow to its first token; `delay_seconds` holds back the headers too).
    stream_first_chunk_delay_seconds: float = 0.0
    # Streaming only: the connection is dropped after this many chunks, mid-body (a provider or
    # proxy that died halfway); None: the whole stream.
    stream_break_after_chunks: int | None = None

    @staticmethod
    def error(status: int, *, headers: dict[str, str] | None = None, message: str = "") -> Reply:
        text = message or f"fake upstream error {status}"
        return Reply(
            status=status,
            headers=headers or {},
            body={"error": {"message": text, "type": "fake_error", "code": str(status)}},
        )

    @staticmethod
    def rate_limited(
        *, retry_after: float | None = None, retry_after_ms: float | None = None
    ) -> Reply:
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        if retry_after_ms is not None:
            headers["retry-after-ms"] = f"{retry_after_ms:g}"
        return Reply.error(429, headers=headers, message="rate limited")

    @staticmethod
    def hang(seconds: float) -> Reply:
        return Reply(content="too late", delay_seconds=seconds)


@dataclass
class Request:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]  # lower-case names
    client_port: int
    at: float  # time.monotonic() when the request arrived

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))

    @property
    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.body.get("tools", [])]


Responder = Callable[[dict[str, Any]], Reply]


@dataclass
class FakeOpenAI:
    base_url: str = ""  # "http://127.0.0.1:<port>/v1"
    script: deque[Reply] = field(default_factory=deque)
    responder: Responder | None = None
    default: Reply = field(default_factory=lambda: Reply(content="はい、にゃん"))
    requests: list[Request] = field(default_factory=list)
    # Set to release requests that are being held (a hung upstream), so the server can stop.
    release: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def reset(self) -> None:
        """As new, for the next test of a module that shares one fake."""
        with self._lock:
            self.script.clear()
            self.requests.clear()
        self.responder = None
        self.default = Reply(content="はい、にゃん")

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self.script.extend(replies)

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            if self.script:
                return self.script.popleft()
        if self.responder is not None:
            return self.responder(body)
        return self.default

    def _next_id(self) -> str:
        with self._lock:
            return f"chatcmpl-fake-{next(self._ids)}"


def _arguments_text(call: dict[str, Any]) -> str:
    arguments = call.get("arguments", "{}")
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def completion_body(reply: Reply, completion_id: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": _arguments_text(call)},
            }
            for call in reply.tool_calls
        ]
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if reply.tool_calls else "stop",
            }
        ],
    }
    if reply.include_usage:
        body["usage"] = _usage(reply)
    return body


def _usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def stream_chunks(
    reply: Reply, completion_id: str, include_usage: bool
) -> Iterator[dict[str, Any]]:
    """The chunks of a streamed completion, in the order OpenAI sends them."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": reply.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    yield chunk({"role": "assistant", "content": ""})
    text = reply.content or ""
    step = max(1, reply.stream_piece_chars)
    for start in range(0, len(text), step):
        yield chunk({"content": text[start : start + step]})
    for index, call in enumerate(reply.tool_calls):
        head = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": ""},
        }
        yield chunk({"tool_calls": [head]})
        arguments = _arguments_text(call)
        for start in range(0, len(arguments), step):
            piece = {"index": index, "function": {"arguments": arguments[start : start + step]}}
            yield chunk({"tool_calls": [piece]})
    yield chunk({}, "tool_calls" if reply.tool_calls else "stop")
    if include_usage and reply.include_usage:
        yield {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": reply.model,
            "choices": [],
            "usage": _usage(reply),
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a burst of new connections beyond it has its SYNs
    # dropped and retried a second later, which shows up as one-second latency outliers.
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout, cancelled call) leaves a broken pipe behind: expected.
        pass


@contextmanager
def fake_openai() -> Iterator[FakeOpenAI]:
    state = FakeOpenAI()

    class Handler(BaseHTTPRequestHandler):
        # Keep-alive, so tests can see whether the client reuses its connection.
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes; with Nagle on, the body waits for the
        # client's delayed ACK (40 ms) on every keep-alive request.
        disable_nagle_algorithm = True
        timeout = 30  # an idle kept-alive connection does not hold a thread for ever

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = {"_unparsed": raw.decode("utf-8", "replace")}
            state.requests.append(
                Request(
                    path=self.path,
                    body=body,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    client_port=self.client_address[1],
                    at=time.monotonic(),
                )
            )
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send_json(404, {"error": {"message": "not found", "type": "fake_error"}})
                return
            reply = state._next_reply(body)
            if reply.delay_seconds and state.release.wait(reply.delay_seconds):
                self.close_connection = True
                return
            if reply.status != 200 or reply.body is not None:
                self._send_raw(reply.status, reply.body, reply.content_type, reply.headers)
            elif body.get("stream"):
                options = body.get("stream_options") or {}
                self._send_stream(reply, bool(options.get("include_usage")))
            else:
                self._send_json(200, completion_body(reply, state._next_id()), reply.headers)

        def _send_json(
            self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            self._send_raw(status, body, "application/json", headers or {})

        def _send_raw(
            self,
            status: int,
            body: dict[str, Any] | bytes | None,
            content_type: str,
            headers: dict[str, str],
        ) -> None:
            if isinstance(body, bytes):
                payload = body
            else:
                payload = json.dumps(body if body is not None else {}).encode()
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def _send_stream(self, reply: Reply, include_usage: bool) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if reply.stream_first_chunk_delay_seconds:
                self.wfile.flush()  # the headers are out; the first chunk waits
                if state.release.wait(reply.stream_first_chunk_delay_seconds):
                    self.close_connection = True
                    return
            for index, chunk in enumerate(stream_chunks(reply, state._next_id(), include_usage)):
                if index == reply.stream_break_after_chunks:
                    self.close_connection = True  # no last chunk: the body is cut short
                    return
                self._write_chunk(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
                if reply.stream_piece_delay_seconds and state.release.wait(
                    reply.stream_piece_delay_seconds
                ):
                    self.close_connection = True
                    return
            self._write_chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")

        def _write_chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
