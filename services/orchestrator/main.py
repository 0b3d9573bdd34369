"""Starts the ChatService: `python -m services.orchestrator`."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc.aio

from chatagent.v1 import chat_pb2, chat_pb2_grpc, emotion_pb2, speech_pb2, tools_pb2
from services.common import redisconn, server
from services.common.auth import BearerTokenInterceptor
from services.common.breakers import Breaker, BreakerBoard
from services.common.channels import open_channel
from services.common.gazetteer import Gazetteer, load_gazetteer
from services.common.language import warm_up
from services.orchestrator import insights
from services.orchestrator.agent import Agent, AgentParts
from services.orchestrator.clients import EmotionClient, SpeechClient, ToolRunner, is_caller_error
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.limits import MemoryRateLimiter, Rate, RateLimiter, RedisRateLimiter
from services.orchestrator.llm import Llm, LlmTimeout, OpenAIChat, is_request_error
from services.orchestrator.servicer import ChatServicer
from services.orchestrator.sessions import MemorySessionStore, RedisSessionStore, SessionStore
from services.orchestrator.toolspec import tool_specs
from services.orchestrator.usage import Budgets, Ledger, MemoryLedger, RedisLedger

logger = logging.getLogger(__name__)

SERVICE_NAME = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name


def _service(module: object, name: str) -> str:
    return str(module.DESCRIPTOR.services_by_name[name].full_name)  # type: ignore[attr-defined]


def stores(
    settings: OrchestratorSettings, client: redisconn.Client | None
) -> tuple[SessionStore, RateLimiter, Ledger]:
    """The session store, the rate limiter and the ledger: in Redis when a client is given,
    else in this process."""
    user_rate = Rate(per_second=settings.user_rate_per_minute / 60, burst=settings.user_burst)
    caller_rate = Rate(per_second=settings.caller_rate_per_minute / 60, burst=settings.caller_burst)
    global_rate = Rate(per_second=settings.global_rate_per_second, burst=settings.global_burst)
    budgets = Budgets(
        user_daily_usd=settings.user_daily_budget_usd,
        caller_daily_usd=settings.caller_daily_budget_usd,
        global_monthly_usd=settings.global_monthly_budget_usd,
    )
    if client is not None:
        # The ledger reads each user's epoch from the session store's keys, in the same slot.
        return (
            RedisSessionStore(
                client,
                max_turns=settings.history_max_turns,
                max_bytes=settings.history_max_bytes,
                ttl_seconds=settings.session_ttl_seconds,
            ),
            RedisRateLimiter(client, user=user_rate, caller=caller_rate, global_=global_rate),
            RedisLedger(client, budgets),
        )
    sessions = MemorySessionStore(
        max_users=settings.max_sessions,
        max_turns=settings.history_max_turns,
        max_bytes=settings.history_max_bytes,
        ttl_seconds=settings.session_ttl_seconds,
    )
    return (
        sessions,
        MemoryRateLimiter(user=user_rate, caller=caller_rate, global_=global_rate),
        MemoryLedger(budgets, erasures=sessions.erasures),
    )


@dataclass(frozen=True, slots=True)
class Channels:
    tools: grpc.aio.Channel
    emotion: grpc.aio.Channel
    speech: grpc.aio.Channel


def open_channels(settings: OrchestratorSettings) -> Channels:
    return Channels(
        tools=open_channel(settings.tools_addr, [_service(tools_pb2, "ToolService")]),
        emotion=open_channel(settings.emotion_addr, [_service(emotion_pb2, "EmotionService")]),
        speech=open_channel(settings.speech_addr, [_service(speech_pb2, "SpeechService")]),
    )


def build_agent(
    settings: OrchestratorSettings,
    *,
    client: redisconn.Client | None,
    board: BreakerBoard,
    channels: Channels,
    llm: Llm | None,
    places: Gazetteer | None,
) -> Agent:
    """The agent and its parts, wired as in production (tests build theirs here too)."""

    def breaker(name: str, **predicates: Any) -> Breaker:
        return board.breaker(
            name,
            fail_max=settings.breaker_fail_max,
            reset_seconds=settings.breaker_reset_seconds,
            **predicates,
        )

    sessions, limiter, ledger = stores(settings, client)
    return Agent(
        settings,
        AgentParts(
            sessions=sessions,
            limiter=limiter,
            ledger=ledger,
            tools=ToolRunner(
                channels.tools,
                {
                    name: breaker(f"tools.{name}", is_caller_error=is_caller_error)
                    for name in tool_specs()
                },
                timeout_seconds=settings.tool_timeout_seconds,
            ),
            emotion=EmotionClient(
                channels.emotion,
                breaker("emotion", is_caller_error=is_caller_error),
                timeout_seconds=settings.emotion_timeout_seconds,
            ),
            speech=SpeechClient(
                channels.speech,
                breaker("speech", is_caller_error=is_caller_error),
                timeout_seconds=settings.speech_timeout_seconds,
            ),
            llm=llm,
            llm_breaker=breaker(
                "llm",
                is_timeout=lambda error: isinstance(error, LlmTimeout),
                is_caller_error=is_request_error,
            ),
            places=places,
        ),
    )


async def setup(host: server.ServiceHost, settings: OrchestratorSettings) -> None:
    # A ToolService RPC this orchestrator cannot offer stops the start, naming it.
    tool_specs()
    client: redisconn.Client | None = None
    if settings.redis_url:
        client = redisconn.connect(
            settings.redis_url, settings.redis_timeout_seconds, cluster=settings.redis_cluster
        )
        host.add_closer("redis", client.aclose)
        # Sessions, limits and budgets live there: without Redis no turn can be served, so
        # readiness follows it for the life of the process.
        host.add_dependency_monitor("redis", functools.partial(redisconn.ping, client))
    channels = open_channels(settings)
    for name in ("tools", "emotion", "speech"):
        host.add_closer(f"{name} channel", getattr(channels, name).close)

    llm: Llm | None = None
    if settings.uses_openai:
        openai_chat = OpenAIChat(
            api_key=settings.openai_api_key.get_secret_value() or "unused",
            base_url=settings.openai_base_url or None,
            model=settings.llm_model,
            max_retries=settings.llm_max_retries,
            max_tokens_parameter=settings.llm_max_tokens_parameter,
        )
        host.add_closer("llm", openai_chat.aclose)
        llm = openai_chat
        logger.info("LLM: OpenAI-compatible endpoint", extra={"model": settings.llm_model})
    else:
        logger.info("LLM: the local planner (no OPENAI_API_KEY or OPENAI_BASE_URL)")

    board = BreakerBoard(client)
    places = await asyncio.to_thread(load_gazetteer, settings.gazetteer_min_population)
    agent = build_agent(
        settings, client=client, board=board, channels=channels, llm=llm, places=places
    )
    host.add_readiness_check("breakers", board.start)
    host.add_closer("breakers", board.aclose)
    budget_gauge = asyncio.create_task(
        insights.watch_budget(
            agent.parts.ledger, settings.global_monthly_budget_usd, agent.parts.wall_clock
        ),
        name="budget gauge",
    )

    async def stop_budget_gauge() -> None:
        budget_gauge.cancel()

    host.add_closer("budget gauge", stop_budget_gauge)
    # Closed before the channels and Redis: what is still being recorded gets its moment.
    host.add_closer("agent", agent.aclose)
    chat_pb2_grpc.add_ChatServiceServicer_to_server(ChatServicer(agent, settings), host.server)
    # The language model loads in about half a second; not on the event loop, and not per turn.
    host.add_readiness_check("language model", lambda: asyncio.to_thread(warm_up))


def interceptors(settings: OrchestratorSettings) -> Sequence[grpc.aio.ServerInterceptor]:
    tokens = settings.api_tokens
    if not tokens:
        logger.warning(
            "AUTHENTICATION IS OFF: CHAT_API_TOKENS is empty, so any caller may chat; "
            "set it to a comma-separated list of name:token pairs"
        )
        return []
    return [BearerTokenInterceptor(tokens)]


def main() -> None:
    server.run(OrchestratorSettings, [SERVICE_NAME], setup, interceptors)
