"""How what a turn stores is written down: the history codec and, beside it, the answer codec
(the first answer to a request id, returned to a retry with the same id).

Both are compact UTF-8 JSON. Encoding raises before anything is stored if a value cannot be
encoded (a lone surrogate, a NaN); decoding raises ValueError on anything it does not recognise,
which the store treats as missing rather than as an answer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from typing import Any

from services.orchestrator.model import (
    Emotion,
    HistoryTurn,
    ToolCallRequest,
    ToolOutcome,
    ToolStatus,
    TurnRequest,
    TurnResult,
    TurnUsage,
)

_ANSWER_VERSION = 1


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


# -- history ---------------------------------------------------------------------------------


def encode_turn(turn: HistoryTurn) -> bytes:
    """The turn as stored in the history; its length is what `max_bytes` counts."""
    return _dumps(
        {
            "user": turn.user,
            "assistant": turn.assistant,
            "language": turn.language,
            "at": turn.at,
            "request_id": turn.request_id,
            "position": turn.position,
            "tool_results": turn.tool_results,
        }
    )


def decode_turn(raw: bytes) -> HistoryTurn:
    try:
        data = json.loads(raw)
        return HistoryTurn(
            user=str(data["user"]),
            assistant=str(data["assistant"]),
            language=str(data["language"]),
            at=float(data["at"]),
            request_id=str(data.get("request_id", "")),
            position=max(0, int(data.get("position", 0))),
            tool_results=max(0, int(data.get("tool_results", 0))),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError("a stored turn has an unexpected shape") from exc


# -- answers ---------------------------------------------------------------------------------


def fingerprint(request: TurnRequest) -> str:
    """What a retry must repeat for the stored answer to be its answer: the same message, the
    same hints, from the same caller. A request id reused for anything else is refused, not
    answered (another caller's answer is never handed out)."""
    parts = (
        request.message,
        request.language,
        request.timezone,
        str(request.include_audio),
        request.caller,
    )
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _names(kind: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(kind))


# Field by field, shallow: dataclasses.asdict deep-copies every tool result on the way to JSON
# (a tenth of a turn's CPU in the orchestrator's own code). Named from the classes, so a field
# added to one is kept without a change here.
_RESULT_FIELDS = _names(TurnResult)
_USAGE_FIELDS = _names(TurnUsage)
_EMOTION_FIELDS = _names(Emotion)
_CALL_FIELDS = _names(ToolCallRequest)


def encode_answer(result: TurnResult, request_fingerprint: str) -> bytes:
    """The answer kept for a retried request id (without audio, which is not worth keeping)."""
    body: dict[str, Any] = {name: getattr(result, name) for name in _RESULT_FIELDS}
    body["emotion"] = {name: getattr(result.emotion, name) for name in _EMOTION_FIELDS}
    body["usage"] = {name: getattr(result.usage, name) for name in _USAGE_FIELDS}
    body["degraded"] = list(result.degraded)
    body["audio"] = ""
    body["replayed"] = False
    body["tool_outcomes"] = [
        {
            "call": {name: getattr(o.call, name) for name in _CALL_FIELDS},
            "status": int(o.status),
            "result": o.result,
            "duration_seconds": o.duration_seconds,
        }
        for o in result.tool_outcomes
    ]
    return _dumps({"v": _ANSWER_VERSION, "fingerprint": request_fingerprint, "result": body})


def decode_answer(data: bytes) -> tuple[str, TurnResult]:
    """(the request's fingerprint, the answer marked as replayed)."""
    try:
        envelope = json.loads(data)
        if envelope.get("v") != _ANSWER_VERSION:
            raise ValueError("unknown answer version")
        body = envelope["result"]
        result = TurnResult(
            reply=body["reply"],
            language=body["language"],
            emotion=Emotion(**body["emotion"]),
            tool_outcomes=tuple(
                ToolOutcome(
                    ToolCallRequest(**o["call"]),
                    ToolStatus(o["status"]),
                    o["result"],
                    o["duration_seconds"],
                )
                for o in body["tool_outcomes"]
            ),
            usage=TurnUsage(**body["usage"]),
            degraded=tuple(body["degraded"]),
            request_id=body["request_id"],
            trace_id=body["trace_id"],
            replayed=True,
        )
        return str(envelope["fingerprint"]), result
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError("a stored answer has an unexpected shape") from exc
