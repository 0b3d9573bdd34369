"""ChatService configuration, from the environment."""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from services.common.config import Port, Seconds, ServiceSettings, Timezone
from services.common.language import Language, is_supported
from services.orchestrator.persona import PersonaConfig

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

    # Comma-separated bearer tokens; empty turns authentication off (and says so in the log).
    chat_api_tokens: SecretStr = SecretStr("")

    openai_api_key: SecretStr = SecretStr("")
    openai_base_url: str = ""
    llm_model: str = "gpt-4o-mini"
    llm_timeout_seconds: Seconds = 20.0
    llm_max_retries: Annotated[int, Field(ge=0, le=5)] = 2
    llm_prices: dict[str, tuple[float, float]] = Field(default_factory=lambda: DEFAULT_PRICES)

    max_message_chars: Annotated[int, Field(ge=1, le=100_000)] = 4000
    max_reply_chars: Annotated[int, Field(ge=20, le=10_000)] = 400
    max_tool_rounds: Annotated[int, Field(ge=0, le=10)] = 3
    persona_endings: dict[str, str] = Field(
        default_factory=lambda: {"ja": "にゃん", "en": "nyan", "ko": "냥"}
    )
    default_timezone: Timezone = "UTC"
    default_language: Language = "ja"

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
    # 0 means no budget.
    user_daily_budget_usd: Money = 1.0
    global_monthly_budget_usd: Money = 1000.0

    @field_validator("llm_prices", mode="before")
    @classmethod
    def _prices(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("persona_endings", mode="before")
    @classmethod
    def _endings(cls, value: Any) -> Any:
        endings = json.loads(value) if isinstance(value, str) else value
        if not isinstance(endings, dict) or not all(is_supported(k) for k in endings):
            raise ValueError('must be a JSON object keyed by "ja", "en" or "ko"')
        return endings

    @model_validator(mode="after")
    def _persona(self) -> Self:
        try:
            self.persona()
        except ValueError as exc:
            raise ValueError(f"PERSONA_ENDINGS / MAX_REPLY_CHARS: {exc}") from None
        return self

    def persona(self) -> PersonaConfig:
        return PersonaConfig(endings=self.persona_endings, max_reply_chars=self.max_reply_chars)

    @property
    def api_tokens(self) -> list[str]:
        return [t.strip() for t in self.chat_api_tokens.get_secret_value().split(",") if t.strip()]

    @property
    def uses_openai(self) -> bool:
        return bool(self.openai_api_key.get_secret_value() or self.openai_base_url)
