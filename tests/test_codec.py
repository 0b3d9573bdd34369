"""The answer codec: what a retried request id is answered with, and when it is not."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from services.orchestrator.codec import (
    decode_answer,
    decode_turn,
    encode_answer,
    encode_turn,
    fingerprint,
)
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

REQUEST = TurnRequest(
    user_id="alice",
    message="今何時で、天気はどうで、ついでに運勢も教えて",
    language="ja",
    timezone="Asia/Tokyo",
    include_audio=True,
    request_id="r-1",
    caller="backend",
)
RESULT = TurnResult(
    reply="今は十時、東京は晴れ、運勢は大吉にゃん",
    language="ja",
    emotion=Emotion(scores={"joy": 0.75, "neutral": 0.25}, dominant="joy"),
    tool_outcomes=(
        ToolOutcome(
            ToolCallRequest("c1", "get_time", '{"timezone": "Asia/Tokyo"}'),
            ToolStatus.OK,
            {"time": "10:00", "nested": {"list": [1, 2.5, None, "猫"]}},
            0.012,
        ),
        ToolOutcome(
            ToolCallRequest("c2", "get_weather", "{"),
            ToolStatus.INVALID_ARGUMENT,
            {"error": "the arguments are not a JSON object"},
            0.0,
        ),
        ToolOutcome(
            ToolCallRequest("c3", "get_fortune", "{}"), ToolStatus.FALLBACK, {"fortune": "吉"}, 1.5
        ),
    ),
    usage=TurnUsage(
        prompt_tokens=150, completion_tokens=30, tts_characters=19, cost_usd=2.1e-4, model="m"
    ),
    degraded=("speech",),
    request_id="r-1",
    trace_id="0af7651916cd43dd8448eb211c80319c",
    audio=b"RIFF....WAVE",
)


def test_an_answer_round_trips_with_its_fingerprint_marked_as_replayed() -> None:
    mark = fingerprint(REQUEST)
    stored = encode_answer(RESULT, mark)
    assert b"RIFF" not in stored
    stored_mark, replayed = decode_answer(stored)
    assert stored_mark == mark
    # Everything the caller saw the first time, except the audio, which is not kept.
    assert replayed == replace(RESULT, audio=b"", replayed=True)
    assert replayed.tool_outcomes[1].status is ToolStatus.INVALID_ARGUMENT


def test_a_retry_must_repeat_the_message_its_hints_and_its_caller() -> None:
    mark = fingerprint(REQUEST)
    assert fingerprint(replace(REQUEST)) == mark
    for changed in (
        replace(REQUEST, message=REQUEST.message + "？"),
        replace(REQUEST, message=""),
        replace(REQUEST, language="en"),
        replace(REQUEST, timezone="Europe/Paris"),
        replace(REQUEST, include_audio=False),
        # Another caller's answer is never handed out, even for the same user and id.
        replace(REQUEST, caller="other"),
    ):
        assert fingerprint(changed) != mark, changed
    # The request id is where the answer is kept, not part of what was asked.
    assert fingerprint(replace(REQUEST, request_id="r-2")) == mark
    assert len(mark) == 32
    assert set(mark) <= set("0123456789abcdef")


def test_a_fingerprint_does_not_shift_text_between_fields() -> None:
    a = TurnRequest(user_id="u", message="hello", language="en", timezone="")
    b = TurnRequest(user_id="u", message="hell", language="oen", timezone="")
    c = TurnRequest(user_id="u", message="hello", language="", timezone="en")
    assert len({fingerprint(a), fingerprint(b), fingerprint(c)}) == 3


@pytest.mark.parametrize(
    "stored",
    [
        b"",
        b"\xff\xfe not utf-8",
        b"not json",
        b"null",
        b"[1, 2]",
        b'"a string"',
        b"{}",
        b'{"v": 1}',
        b'{"v": 1, "fingerprint": "x", "result": {"reply": "hi"}}',
        b'{"v": 1, "fingerprint": "x", "result": []}',
    ],
    ids=lambda raw: raw.decode(errors="replace")[:30] or "empty",
)
def test_garbage_is_not_an_answer(stored: bytes) -> None:
    # ValueError, whatever the damage: the store treats it as no answer.
    with pytest.raises(ValueError, match=r"version|unexpected shape|Expecting value|can't decode"):
        decode_answer(stored)


@pytest.mark.parametrize("version", [None, 0, 2, "1"])
def test_an_answer_of_another_version_is_not_an_answer(version: object) -> None:
    envelope = json.loads(encode_answer(RESULT, fingerprint(REQUEST)))
    envelope["v"] = version
    with pytest.raises(ValueError, match="version"):
        decode_answer(json.dumps(envelope).encode())


def test_an_answer_with_an_unknown_tool_status_is_not_an_answer() -> None:
    envelope = json.loads(encode_answer(RESULT, fingerprint(REQUEST)))
    envelope["result"]["tool_outcomes"][0]["status"] = 99
    with pytest.raises(ValueError, match="ToolStatus"):
        decode_answer(json.dumps(envelope).encode())


def test_what_cannot_be_stored_fails_before_anything_is_written() -> None:
    with pytest.raises(ValueError, match="float"):
        encode_answer(replace(RESULT, usage=replace(RESULT.usage, cost_usd=float("nan"))), "x")
    with pytest.raises(UnicodeEncodeError):
        encode_answer(replace(RESULT, reply="\ud800"), "x")
    with pytest.raises(UnicodeEncodeError):
        encode_turn(HistoryTurn(user="\udfff", assistant="", language="ja", at=0.0))


def test_a_history_turn_round_trips_and_its_size_is_its_utf8_bytes() -> None:
    turn = HistoryTurn(user="猫", assistant="にゃん", language="ja", at=1.5, request_id="r")
    stored = encode_turn(turn)
    assert decode_turn(stored) == turn
    assert "にゃん".encode() in stored
    # A turn stored before request ids were kept decodes with none.
    legacy = b'{"user":"u","assistant":"a","language":"en","at":1}'
    assert decode_turn(legacy) == HistoryTurn("u", "a", "en", 1.0)
