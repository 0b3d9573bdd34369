"""The orchestrator's own Prometheus metrics (the per-RPC ones come from services.common)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
LLM_CALLS = Counter(
    "chatagent_llm_calls_total",
    "LLM calls by outcome: ok, truncated (cut at max_tokens), stopped (a stream the persona guard "
    "ended), timeout, unavailable (provider errors and 429s after retries), rejected (the "
    "provider refused the request), circuit_open (not made: the breaker is open), cancelled, "
    "error (anything else).",
    ["outcome"],
)
TRUNCATED = Counter(
    "chatagent_llm_truncated_total",
    "LLM replies cut off at max_tokens (many: LLM_MAX_TOKENS is too low for the replies asked).",
)
UNSETTLED = Counter(
    "chatagent_usage_unrecorded_total",
    "Usage not recorded in the ledger: settle and release after an hour of retrying, "
    "turn_count when counting a stored turn failed.",
    ["what"],
)

# -- product metrics: how the agent is used. Never a user id or message text as a label. ---------

CONVERSATION_TURN = Histogram(
    "chatagent_conversation_turn",
    "Position of each answered turn in its conversation (1 = its first turn). Every conversation "
    "reaching turn N adds one observation of N: turns at exactly N over turns at 1 is the share "
    "of conversations reaching N turns (exact up to 10, where buckets are one apart).",
    buckets=(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20, 30, 50, 100),
)
MESSAGES = Counter(
    "chatagent_messages_total", "User messages answered, by the language of the turn.", ["language"]
)
MESSAGE_FEATURES = Counter(
    "chatagent_message_features_total",
    "User messages answered that contain a feature: emoji; invisible (tag, zero-width or other "
    "characters that render as nothing); unusual (private-use, unassigned or stacked combining "
    "characters); mixed_script (letters of more than one script besides Latin).",
    ["feature"],
)
TURN_COST = Histogram(
    "chatagent_turn_cost_usd",
    "What each answered turn cost in USD (LLM and speech).",
    buckets=(0, 0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
TOOL_ANSWERS = Counter(
    "chatagent_tool_answers_total", "Answered turns whose reply used at least one tool result."
)
TOOL_FOLLOWUPS = Counter(
    "chatagent_tool_answer_followups_total",
    "Turns that follow, in the same conversation, a turn answered with a tool result: the user "
    "kept talking (over chatagent_tool_answers_total: the share of tool answers followed up).",
)
BUDGET_USED = Gauge(
    "chatagent_budget_used_ratio",
    "Share of the global monthly budget spent (0 when no budget is set), read from the ledger.",
    ["scope"],
)
