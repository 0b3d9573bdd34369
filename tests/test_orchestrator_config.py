"""The orchestrator's settings: what a bad value says at start, and what the defaults derive."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.orchestrator.config import OrchestratorSettings

LLM = {"openai_base_url": "http://127.0.0.1:1/v1"}


def settings(**values: Any) -> OrchestratorSettings:
    return OrchestratorSettings(**values)


def test_tokens_are_named_callers_and_bare_tokens_get_names_by_position() -> None:
    parsed = settings(chat_api_tokens="shop:s3cret, bank:t0ken,plain").api_tokens
    assert parsed == {"shop": "s3cret", "bank": "t0ken", "token-3": "plain"}


@pytest.mark.parametrize(
    ("tokens", "problem"),
    [
        ("shop:a,shop:b", "given twice"),
        ("shop:a,bank:a", "repeats another caller's token"),
        ("shop:", "must be name:token"),
        (":token", "must be name:token"),
    ],
)
def test_bad_tokens_are_refused_naming_the_variable(tokens: str, problem: str) -> None:
    with pytest.raises(ValidationError) as refused:
        settings(chat_api_tokens=tokens)
    assert "CHAT_API_TOKENS" in str(refused.value)
    assert problem in str(refused.value)


def test_a_budget_needs_a_price_for_the_model() -> None:
    with pytest.raises(ValidationError, match="no price for LLM_MODEL 'mystery'"):
        settings(llm_model="mystery", llm_prices={"other": (1.0, 1.0)}, **LLM)
    # Without an LLM, or without budgets, a price is not needed.
    settings(llm_model="mystery", llm_prices={"other": (1.0, 1.0)})
    settings(
        llm_model="mystery",
        llm_prices={},
        user_daily_budget_usd=0,
        caller_daily_budget_usd=0,
        global_monthly_budget_usd=0,
        **LLM,
    )
    # A dated name is priced by its prefix.
    settings(llm_model="gpt-4o-mini-2024-07-18", **LLM)


@pytest.mark.parametrize("price", [-1.0, float("nan"), float("inf")])
def test_prices_must_be_finite_and_not_negative(price: float) -> None:
    with pytest.raises(ValidationError, match="finite"):
        settings(llm_prices={"m": (price, 1.0)})


def test_max_tokens_is_derived_from_the_reply_length_unless_set() -> None:
    assert settings(max_reply_chars=400).max_tokens == 800
    assert settings(max_reply_chars=50).max_tokens == 256
    assert settings(llm_max_tokens=1234).max_tokens == 1234
