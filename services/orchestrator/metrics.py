"""The orchestrator's own Prometheus metrics (the per-RPC ones come from services.common)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

TURNS = Counter("chatagent_turns_total", "Chat turns by outcome.", ["outcome"])
TOOL_CALLS = Counter(
    "chatagent_tool_calls_total", "Tool calls by tool and status.", ["tool", "status"]
)
TOOL_LATENCY = Histogram(
    "chatagent_tool_call_seconds",
    "Tool call latency as the orchestrator saw it.",
    ["tool"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3.5, 5, 10),
)
TOKENS = Counter("chatagent_llm_tokens_total", "LLM tokens by model and kind.", ["model", "kind"])
COST = Counter("chatagent_cost_usd_total", "Money spent, by model (and tts).", ["model"])
RATE_LIMITED = Counter(
    "chatagent_rate_limited_total", "Requests refused by a rate limit.", ["scope"]
)
BUDGET_EXHAUSTED = Counter(
    "chatagent_budget_exhausted_total",
    "Turns answered by the local planner because a cost budget was spent.",
    ["scope"],
)
PERSONA = Counter(
    "chatagent_persona_guard_total",
    "Persona guard outcomes: ok, retried (fixed by the corrective retry), repaired.",
    ["outcome"],
)
FALLBACKS = Counter("chatagent_degraded_total", "Parts that fell back in a turn.", ["part"])
TRUNCATED = Counter(
    "chatagent_llm_truncated_total",
    "LLM replies cut off at max_tokens (many: LLM_MAX_TOKENS is too low for the replies asked).",
)
UNSETTLED = Counter(
    "chatagent_usage_unrecorded_total",
    "LLM usage that could not be recorded in the ledger within an hour of retrying.",
    ["what"],
)
