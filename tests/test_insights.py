"""Product metrics: what each answered turn tells about how the agent is used, with labels from
fixed sets only (never a user id or text)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY

from services.orchestrator import insights
from services.orchestrator.codec import decode_turn, encode_turn
from services.orchestrator.insights import CONVERSATION_GAP_SECONDS, message_features, progress_of
from services.orchestrator.model import HistoryTurn
from services.orchestrator.usage import Account, Budgets, MemoryLedger, Usage
from tests.support.turns import calls, harness, said, until


@pytest.mark.parametrize(
    ("message", "features"),
    [
        ("こんにちは、東京の天気は？", set()),
        ("What time is it in Seoul?", set()),
        ("hello 😀", {"emoji"}),
        # Joiners and variation selectors inside an emoji are the emoji, not hidden text.
        ("家族 👨\u200d👩\u200d👧 ❤\ufe0f", {"emoji"}),
        (
            "the flag \U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
            {"emoji"},
        ),
        ("hel\u200blo", {"invisible"}),
        ("hi\U000e0069\U000e0067\U000e006e\U000e006f\U000e0072\U000e0065", {"invisible"}),
        ("\u3164 hello", {"invisible"}),
        ("z\u0336\u0322\u031b\u031ba\u0337lgo", {"unusual"}),
        ("private \ue000 use", {"unusual"}),
        ("p\u0430ypal login", {"mixed_script"}),  # a Cyrillic а inside a Latin word
        ("Привет こんにちは", {"mixed_script"}),
        ("hello こんにちは 안녕", {"mixed_script"}),
        ("hello こんにちは", set()),
        ("안녕 hello", set()),
        ("ｶﾀｶﾅ と ひらがな と 漢字", set()),
    ],
)
def test_message_features(message: str, features: set[str]) -> None:
    assert message_features(message) == features


def history(*turns: tuple[float, int, int]) -> list[HistoryTurn]:
    """(finished at, position, tool results) per stored turn."""
    return [
        HistoryTurn("q", "a", "ja", at, position=position, tool_results=tools)
        for at, position, tools in turns
    ]


def test_a_conversation_counts_on_while_turns_come_within_the_gap() -> None:
    assert progress_of([], now=1000.0) == insights.FIRST_TURN
    previous = history((900.0, 1, 0), (1000.0, 2, 1))
    after = progress_of(previous, now=1000.0 + CONVERSATION_GAP_SECONDS)
    assert (after.position, after.follows_tool_answer) == (3, True)
    # After a long silence a new conversation begins: neither its position nor a follow-up.
    later = progress_of(previous, now=1000.0 + CONVERSATION_GAP_SECONDS + 1)
    assert (later.position, later.follows_tool_answer) == (1, False)


def test_turns_stored_without_positions_count_from_the_history() -> None:
    old = [HistoryTurn("q", "a", "ja", 100.0 + i) for i in range(4)]
    # Written before positions were kept: the stored record has neither field.
    stored = encode_turn(old[-1]).replace(b',"position":0,"tool_results":0', b"")
    assert b"position" not in stored
    old[-1] = decode_turn(stored)
    assert progress_of(old, now=200.0).position == 5
    # A tampered record cannot make positions negative.
    bad = decode_turn(encode_turn(old[-1]).replace(b'"position":0', b'"position":-9'))
    assert bad.position == 0


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_answered_turns_feed_the_product_metrics() -> None:
    before = {
        "first": sample("chatagent_conversation_turn_bucket", {"le": "1.0"}),
        "turns": sample("chatagent_conversation_turn_count"),
        "third": sample("chatagent_conversation_turn_bucket", {"le": "2.0"}),
        "ja": sample("chatagent_messages_total", {"language": "ja"}),
        "en": sample("chatagent_messages_total", {"language": "en"}),
        "emoji": sample("chatagent_message_features_total", {"feature": "emoji"}),
        "cost": sample("chatagent_turn_cost_usd_count"),
        "cost_sum": sample("chatagent_turn_cost_usd_sum"),
        "tool_answers": sample("chatagent_tool_answers_total"),
        "followups": sample("chatagent_tool_answer_followups_total"),
    }
    async with harness(llm_prices={"fake-model": (1.0, 2.0)}, llm_model="fake-model") as h:
        assert h.llm is not None
        h.llm.script += [calls(("get_time", {"timezone": "Asia/Tokyo"})), said("今は九時だにゃん")]
        await h.chat("今何時？😺", user_id="product")
        h.llm.script += [said("どういたしましてにゃん")]
        await h.chat("ありがとう", user_id="product")
        h.llm.script += [said("Hello nyan")]
        await h.chat("hello there", user_id="product", language="en")
        # A replay of an answered request is not a new turn of the conversation.
        h.llm.script += [said("一度だけにゃん")]
        await h.chat("もう一回", user_id="product", request_id="r1")
        await h.chat("もう一回", user_id="product", request_id="r1")
    assert sample("chatagent_conversation_turn_count") - before["turns"] == 4
    # One conversation: one first turn; positions 1, 2, 3, 4.
    assert sample("chatagent_conversation_turn_bucket", {"le": "1.0"}) - before["first"] == 1
    assert sample("chatagent_conversation_turn_bucket", {"le": "2.0"}) - before["third"] == 2
    assert sample("chatagent_messages_total", {"language": "ja"}) - before["ja"] == 3
    assert sample("chatagent_messages_total", {"language": "en"}) - before["en"] == 1
    assert sample("chatagent_message_features_total", {"feature": "emoji"}) - before["emoji"] == 1
    assert sample("chatagent_turn_cost_usd_count") - before["cost"] == 4
    assert sample("chatagent_turn_cost_usd_sum") - before["cost_sum"] > 0
    # The tool answer was followed up by the next turn; the others used no tool.
    assert sample("chatagent_tool_answers_total") - before["tool_answers"] == 1
    assert sample("chatagent_tool_answer_followups_total") - before["followups"] == 1


async def test_no_label_holds_a_user_id_or_text() -> None:
    async with harness(llm=False) as h:
        await h.chat("秘密の合言葉はうさぎ😀", user_id="user-with-a-secret-name")
    for family in REGISTRY.collect():
        if not family.name.startswith("chatagent_"):
            continue
        for metric_sample in family.samples:
            values = " ".join(metric_sample.labels.values())
            assert "user-with-a-secret-name" not in values, family.name
            assert "うさぎ" not in values, family.name


async def test_the_budget_gauge_reads_the_global_month_from_the_ledger() -> None:
    ledger = MemoryLedger(Budgets(global_monthly_usd=10.0))
    now = datetime(2026, 12, 1, tzinfo=UTC)
    hold = await ledger.reserve(Account("u", "c"), 0, epoch=0, hold_seconds=60, now=now)
    await ledger.settle(hold, Usage(cost_nanos=2_500_000_000))
    task = asyncio.create_task(
        insights.watch_budget(ledger, 10.0, lambda: now, interval_seconds=0.01)
    )
    try:
        gauge = "chatagent_budget_used_ratio"
        await until(lambda: sample(gauge, {"scope": "global_monthly"}) == pytest.approx(0.25))
    finally:
        task.cancel()
