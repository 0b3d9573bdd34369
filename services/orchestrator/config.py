"""ChatService configuration, from the environment."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from services.common.config import Port, Seconds, ServiceSettings, Timezone
from services.common.language import Language, is_supported
from services.orchestrator.persona import PersonaConfig
from services.orchestrator.usage import Prices

PositiveInt = Annotated[int, Field(ge=1)]
Money = Annotated[float, Field(ge=0)]

# USD per million tokens (prompt, completion), for the cost of each turn. Override with
# LLM_PRICES='{"my-model": [0.2, 0.8]}'; a model missing from the table costs nothing and is
# logged once, so a missing price is noticed rather than silently under-billed.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "local-planner": (0.0, 0.0),
}


class OrchestratorSettings(ServiceSettings):
    SERVICE_NAME: ClassVar[str] = "orchestrator"

    port: Port = 50051
    metrics_port: Port = 9101

    tools_addr: str = "127.0.0.1:50052"
    emotion_addr: str = "127.0.0.1:50054"
    speech_addr: str = "127.0.0.1:50053"

    # Comma-separated bearer tokens, each "name:token" (the name is the caller's identity for
    # quotas and logs) or a bare token (named "token-1", "token-2", ... by position); empty turns
    # authentication off (and says so in the log).
    chat_api_tokens: SecretStr = SecretStr("")

    openai_api_key: SecretStr = SecretStr("")
    openai_base_url: str = ""
    llm_model: str = "gpt-4o-mini"
    llm_timeout_seconds: Seconds = 20.0
    llm_max_retries: Annotated[int, Field(ge=0, le=5)] = 2
    llm_prices: dict[str, tuple[float, float]] = Field(default_factory=lambda: DEFAULT_PRICES)
    # The bound on every completion, corrective retries included; 0 derives it from
    # MAX_REPLY_CHARS (two tokens a character, at least 256: room for tool calls too).
    llm_max_tokens: Annotated[int, Field(ge=0, le=100_000)] = 0
    # What speech costs, USD per million characters synthesized: 0 for the embedded voices,
    # e.g. 15 for OpenAI's tts-1. Held against the budgets like an LLM call.
    tts_usd_per_million_chars: Money = 0.0
    # How the bound is sent: "max_tokens" (vLLM, Ollama, llama.cpp, OpenAI's chat models) or
    # "max_completion_tokens" (OpenAI's reasoning models).
    llm_max_tokens_parameter: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"

    max_message_chars: Annotated[int, Field(ge=1, le=100_000)] = 4000
    max_reply_chars: Annotated[int, Field(ge=20, le=10_000)] = 400
    max_tool_rounds: Annotated[int, Field(ge=0, le=10)] = 3
    # Tool calls of one LLM response that are run; the rest get an error result. And per turn.
    max_tool_calls_per_round: Annotated[int, Field(ge=1, le=64)] = 8
    max_tool_calls_per_turn: Annotated[int, Field(ge=1, le=256)] = 16
    persona_endings: dict[str, str] = Field(
        default_factory=lambda: {"ja": "にゃん", "en": "nyan", "ko": "냥"}
    )
    default_timezone: Timezone = "UTC"
    default_language: Language = "ja"
    # Where the weather is looked up for a user who named no place, has asked about none
    # before, and whose time zone names no city.
    default_place: Annotated[str, Field(min_length=1, max_length=100)] = "東京"
    # The planner takes places only from names its gazetteer knows (cities above this).
    gazetteer_min_population: Annotated[int, Field(ge=0)] = 15000

    # A turn without a caller deadline gets this one.
    turn_timeout_seconds: Seconds = 30.0
    tool_timeout_seconds: Seconds = 5.0
    emotion_timeout_seconds: Seconds = 1.0
    speech_timeout_seconds: Seconds = 10.0

    breaker_fail_max: PositiveInt = 5
    breaker_reset_seconds: Seconds = 30.0

    history_max_turns: Annotated[int, Field(ge=1, le=1000)] = 20
    history_max_bytes: Annotated[int, Field(ge=1024)] = 32_768
    session_ttl_seconds: Annotated[float, Field(gt=0, le=30 * 86_400)] = 86_400.0
    max_sessions: PositiveInt = 10_000

    user_rate_per_minute: Annotated[float, Field(gt=0)] = 30.0
    user_burst: PositiveInt = 10
    global_rate_per_second: Annotated[float, Field(gt=0)] = 200.0
    global_burst: PositiveInt = 400
    # Each caller (named token or client certificate) over all of its users.
    caller_rate_per_minute: Annotated[float, Field(gt=0)] = 600.0
    caller_burst: PositiveInt = 100
    # 0 means no budget.
    user_daily_budget_usd: Money = 1.0
    caller_daily_budget_usd: Money = 100.0
    global_monthly_budget_usd: Money = 1000.0

    @field_validator("llm_prices", mode="before")
    @classmethod
    def _prices(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("llm_prices")
    @classmethod
    def _sane_prices(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for model, pair in value.items():
            if not all(math.isfinite(price) and price >= 0 for price in pair):
                raise ValueError(f"the price of {model!r} must be two finite numbers >= 0")
        return value

    @field_validator("persona_endings", mode="before")
    @classmethod
    def _endings(cls, value: Any) -> Any:
        endings = json.loads(value) if isinstance(value, str) else value
        if not isinstance(endings, dict) or not all(is_supported(k) for k in endings):
            raise ValueError('must be a JSON object keyed by "ja", "en" or "ko"')
        return endings

    @model_validator(mode="after")
    def _shared_state(self) -> Self:
        if self.workers > 1 and not self.redis_url:
            raise ValueError(
                "WORKERS above 1 needs REDIS_URL: separate processes share sessions, limits, "
                "budgets and breaker state only through Redis"
            )
        return self

    @model_validator(mode="after")
    def _persona(self) -> Self:
        try:
            self.persona()
        except ValueError as exc:
            raise ValueError(f"PERSONA_ENDINGS / MAX_REPLY_CHARS: {exc}") from None
        return self

    @model_validator(mode="after")
    def _priced(self) -> Self:
        # Money never fails open: with a budget set, the model must have a price.
        budgets = (
            self.user_daily_budget_usd,
            self.caller_daily_budget_usd,
            self.global_monthly_budget_usd,
        )
        priced = Prices(self.llm_prices, fallback_model=self.llm_model).knows(self.llm_model)
        if self.uses_openai and any(budgets) and not priced:
            raise ValueError(
                f"LLM_PRICES: no price for LLM_MODEL {self.llm_model!r}, so budgets could not "
                "be kept; add it, e.g. LLM_PRICES='{\"my-model\": [0.2, 0.8]}' (USD per "
                "million prompt and completion tokens)"
            )
        return self

    @model_validator(mode="after")
    def _tokens(self) -> Self:
        try:
            self.api_tokens  # noqa: B018 - parsed for its errors
        except ValueError as exc:
            raise ValueError(f"CHAT_API_TOKENS: {exc}") from None
        return self

    @property
    def max_tokens(self) -> int:
        return self.llm_max_tokens or max(256, 2 * self.max_reply_chars)

    def persona(self) -> PersonaConfig:
        return PersonaConfig(endings=self.persona_endings, max_reply_chars=self.max_reply_chars)

    @property
    def api_tokens(self) -> dict[str, str]:
        """The callers by name, each with its token."""
        named: dict[str, str] = {}
        entries = [t.strip() for t in self.chat_api_tokens.get_secret_value().split(",")]
        for position, entry in enumerate((e for e in entries if e), start=1):
            name, colon, token = entry.partition(":")
            if not colon:
                name, token = f"token-{position}", entry
            name, token = name.strip(), token.strip()
            if not name or not token:
                raise ValueError(f"entry {position} must be name:token or a token")
            if name in named:
                raise ValueError(f"the caller name {name!r} is given twice")
            if token in named.values():
                raise ValueError(f"entry {position} repeats another caller's token")
            named[name] = token
        return named

    @property
    def uses_openai(self) -> bool:
        return bool(self.openai_api_key.get_secret_value() or self.openai_base_url)
