"""The ChatService turn attacked again, after issue 6: an impatient client cancelling at every
await point, a slow or vanishing Redis, a second replica erasing meanwhile, dependencies that
hang or answer nonsense, a client that never reads its stream.

Each test is an attack that once broke a promise (found by attacking the rebuilt turn) or one
the other turn tests do not try.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio
import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY

from chatagent.v1 import chat_pb2, chat_pb2_grpc, speech_pb2, speech_pb2_grpc
from services.common import redisconn
from services.common.breakers import Breaker
from services.common.channels import open_channel
from services.common.deadline import Deadline
from services.common.server import server_options
from services.common.validation import InvalidArgument
from services.orchestrator import keys
from services.orchestrator.agent import Agent, StoreUnavailable, TurnTimeout
from services.orchestrator.clients import SpeechClient
from services.orchestrator.llm import LlmReply
from services.orchestrator.model import ToolStatus, TurnRequest, TurnResult
from services.orchestrator.servicer import ChatServicer
from services.orchestrator.usage import Reservation, Usage
from tests.support.redis_server import RedisServer
from tests.support.turns import (
    Harness,
    ScriptedLlm,
    calls,
    ends_in_nyan,
    harness,
    said,
    until,
    worst_case_usd,
)


def slow_settles(h: Harness, seconds: float) -> None:
    """Every settle takes `seconds` before it is recorded (a Redis round trip on a bad day)."""
    ledger = h.agent.bookkeeper.ledger
    settle = ledger.settle

    async def slow(reservation: Reservation, usage: Usage) -> None:
        await asyncio.sleep(seconds)
        await settle(reservation, usage)

    ledger.settle = slow  # type: ignore[method-assign]


class SlowLink:
    """A TCP proxy in front of Redis: commands reach it at once, its replies come `delay` late,
    so a client can be cancelled after Redis ran a command and before it heard the answer."""

    def __init__(self, redis_url: str, delay: float) -> None:
        self._port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        self._delay = delay
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        loop = asyncio.get_running_loop()
        late: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._port)

        async def commands() -> None:
            while data := await reader.read(65536):
                upstream_writer.write(data)
                await upstream_writer.drain()

        async def replies() -> None:
            while True:
                data = await upstream_reader.read(65536)
                late.put_nowait((loop.time() + self._delay, data))
                if not data:
                    return

        async def deliver() -> None:
            while True:
                at, data = await late.get()
                await asyncio.sleep(max(0.0, at - loop.time()))
                if not data:
                    return
                writer.write(data)
                await writer.drain()

        parts = [asyncio.create_task(part()) for part in (commands, replies, deliver)]
        try:
            await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for part in parts:
                part.cancel()
            await asyncio.gather(*parts, return_exceptions=True)
            writer.close()
            upstream_writer.close()
            self._connections.discard(task)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)


async def exists_soon(client: redis.Redis, key: str) -> None:
    """Poll Redis directly (not through the slow link) until `key` exists."""
    for _ in range(5000):
        if await client.exists(key):
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{key} never appeared")


# -- cancel at every await point: no hold, no lock, nothing half-written is left ------------


async def _blocker_holds_the_lock(h: Harness, llm: ScriptedLlm) -> asyncio.Task[Any]:
    llm.gate = asyncio.Event()
    blocker = asyncio.create_task(h.chat("先に", user_id="victim"))
    await llm.started.wait()
    return blocker


CANCEL_POINTS = ["waiting_for_the_lock", "awaiting_emotion", "mid_llm", "during_tools", "commit"]


@pytest.mark.parametrize("point", CANCEL_POINTS)
async def test_a_turn_cancelled_anywhere_leaves_its_user_free_and_its_budget_whole(
    store: redis.Redis | None, point: str
) -> None:
    # The budget fits one call's worst case (and an abandoned call's prompt), never two: a
    # hold left behind by the cancelled turn would send the next turn to the planner.
    budget = 1.6 * await worst_case_usd(llm_max_tokens=800)
    llm = ScriptedLlm(default=said("はいにゃん", 10, 10))
    async with harness(
        llm=llm, redis_client=store, user_daily_budget_usd=budget, llm_max_tokens=800
    ) as h:
        blocker = None
        if point == "waiting_for_the_lock":
            blocker = await _blocker_holds_the_lock(h, llm)
            victim = asyncio.create_task(h.chat("こんにちは", user_id="victim", request_id="v"))
            await asyncio.sleep(0.1)
            assert len(llm.requests) == 1  # waiting for the blocker's lock
        elif point == "awaiting_emotion":
            h.emotion.delays = {"Analyze": 0.8}
            victim = asyncio.create_task(h.chat("こんにちは", user_id="victim", request_id="v"))
            # The LLM answers at once: once it was asked, the turn is awaiting the emotion.
            await until(lambda: llm.requests and h.emotion.in_flight)
        elif point == "mid_llm":
            llm.gate = asyncio.Event()
            victim = asyncio.create_task(h.chat("こんにちは", user_id="victim", request_id="v"))
            await llm.started.wait()
        elif point == "during_tools":
            llm.script = [calls(("calculate", {"expression": "6*7"}))]
            h.tools.delays = {"Calculate": 30}
            victim = asyncio.create_task(h.chat("6*7は？", user_id="victim", request_id="v"))
            await until(lambda: h.tools.calls)
        else:
            slow_settles(h, 0.3)
            victim = asyncio.create_task(h.chat("こんにちは", user_id="victim", request_id="v"))
            # The LLM answers at once: the commit is waiting for the (slow) settle.
            await until(lambda: llm.requests and h.agent.bookkeeper.pending)
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        if blocker is not None:
            assert llm.gate is not None
            llm.gate.set()
            await blocker
        llm.gate = None
        await h.settled()
        history = (await h.parts.sessions.load("victim")).history
        answer = await h.parts.sessions.cached_answer("victim", "v")
        # All or nothing: a turn is stored with its answer, or neither is.
        assert ("こんにちは" in [t.user for t in history]) == (answer is not None)
        following = await h.chat("もう一度", user_id="victim", within=2.0)
    assert following.usage.model == "fake-model"
    assert "budget" not in following.degraded


async def test_a_cancel_while_the_redis_lock_is_being_taken_leaves_the_user_free(
    redis_url: str,
) -> None:
    link = SlowLink(redis_url, 0.05)
    slow = redisconn.connect(await link.start(), 2.0)
    direct = redisconn.connect(redis_url, 2.0)
    try:
        async with harness(llm=ScriptedLlm(default=said("はいにゃん")), redis_client=slow) as h:
            victim = asyncio.create_task(h.chat("こんにちは", user_id="quitter", within=10))
            # Redis has run the acquire; its answer is on the way when the client gives up.
            await exists_soon(direct, keys.user_key("quitter", "lock"))
            victim.cancel()
            with pytest.raises(asyncio.CancelledError):
                await victim
            # Far less than the lock's TTL (the victim's deadline + 5 s): the lock was undone.
            retried = await h.chat("こんにちは", user_id="quitter", within=4.0)
    finally:
        await slow.aclose()
        await direct.aclose()
        await link.aclose()
    assert ends_in_nyan(retried.reply)


async def test_a_cancel_while_the_budget_hold_is_being_taken_gives_it_back(
    redis_url: str,
) -> None:
    budget = 1.6 * await worst_case_usd(llm_max_tokens=800)
    link = SlowLink(redis_url, 0.05)
    slow = redisconn.connect(await link.start(), 2.0)
    direct = redisconn.connect(redis_url, 2.0)
    try:
        async with harness(
            llm=ScriptedLlm(default=said("はいにゃん", 10, 10)),
            redis_client=slow,
            user_daily_budget_usd=budget,
            llm_max_tokens=800,
        ) as h:
            await h.chat("こんにちは", user_id="warm-up")  # scripts loaded, connections open
            victim = asyncio.create_task(h.chat("こんにちは", user_id="quitter", within=10))
            day = datetime.now(UTC).strftime("%Y-%m-%d")
            await exists_soon(direct, keys.user_key("quitter", f"usage:holds:{day}"))
            victim.cancel()
            with pytest.raises(asyncio.CancelledError):
                await victim
            await h.settled()
            following = await h.chat("もう一度", user_id="quitter", within=5)
    finally:
        await slow.aclose()
        await direct.aclose()
        await link.aclose()
    assert "budget" not in following.degraded
    assert following.usage.model == "fake-model"


# -- many at once --------------------------------------------------------------------------


async def test_twenty_concurrent_retries_of_one_request_make_one_llm_call(
    store: redis.Redis | None,
) -> None:
    llm = ScriptedLlm(default=said("一回だけにゃん"), delay=0.2)
    async with harness(llm=llm, redis_client=store) as h:
        same = await asyncio.gather(
            *(h.chat("こんにちは", user_id="dup", request_id="r") for _ in range(20))
        )
        assert len(llm.requests) == 1
        assert {r.reply for r in same} == {"一回だけにゃん"}
        assert sum(not r.replayed for r in same) == 1
        # One id, twenty different messages: one is answered, the others refused.
        mixed = await asyncio.gather(
            *(h.chat(f"質問{i}", user_id="dup2", request_id="r") for i in range(20)),
            return_exceptions=True,
        )
        history = (await h.parts.sessions.load("dup2")).history
    answered = [r for r in mixed if isinstance(r, TurnResult)]
    assert len(answered) == 1
    assert all(isinstance(r, InvalidArgument) for r in mixed if r not in answered)
    assert len(llm.requests) == 2
    assert len(history) == 1


# -- the deadline ----------------------------------------------------------------------------


async def test_a_hanging_emotion_service_degrades_a_short_turn_instead_of_failing_it() -> None:
    async with harness(llm=ScriptedLlm(default=said("はいにゃん"))) as h:
        h.emotion.delays = {"Analyze": 30}
        result = await h.chat("こんにちは", within=0.8)  # the LLM answers at once
    assert result.reply == "はいにゃん"
    assert "emotion" in result.degraded


async def test_a_hanging_tools_service_falls_back_within_a_deadline_shorter_than_its_timeout() -> (
    None
):
    llm = ScriptedLlm(script=[calls(("get_time", {"place": "東京"}))], default=said("九時にゃん"))
    async with harness(llm=llm) as h:
        h.tools.delays = {"GetTime": 30}
        result = await h.chat("今何時？", within=1.0)
    assert result.tool_outcomes[0].status == ToolStatus.FALLBACK
    assert "tools" in result.degraded
    assert ends_in_nyan(result.reply)


async def test_a_retry_after_a_deadline_during_the_commit_is_answered_not_run_again(
    store: redis.Redis | None,
) -> None:
    llm = ScriptedLlm(default=said("はいにゃん", 1000, 100), delay=0.05)
    async with harness(llm=llm, redis_client=store) as h:
        slow_settles(h, 0.6)  # the commit waits for the settle; the deadline strikes there
        with pytest.raises(TurnTimeout):
            await h.chat("こんにちは", user_id="retrier", within=0.4, request_id="r1")
        again = await h.chat("こんにちは", user_id="retrier", within=5, request_id="r1")
        await h.settled()
        report = await h.agent.usage("retrier")
    assert len(llm.requests) == 1
    assert again.replayed
    assert report.user_today.prompt_tokens == 1000


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_commit_that_outlives_its_deadline_ends_before_the_next_turn_begins(
    kind: str, request: pytest.FixtureRequest
) -> None:
    client = (
        redisconn.connect(request.getfixturevalue("redis_url"), 2.0) if kind == "redis" else None
    )
    llm = ScriptedLlm(default=said("はいにゃん"))
    try:
        async with harness(llm=llm, redis_client=client) as h:
            slow_settles(h, 0.3)
            with pytest.raises(TurnTimeout):
                await h.chat("一つ目", user_id="fenced", within=0.15)
            llm.gate = asyncio.Event()
            llm.started.clear()
            newer = asyncio.create_task(h.chat("二つ目", user_id="fenced", within=5))
            await llm.started.wait()  # the newer turn holds the lock now
            during = [t.user for t in (await h.parts.sessions.load("fenced")).history]
            llm.gate.set()
            await newer
            after = [t.user for t in (await h.parts.sessions.load("fenced")).history]
    finally:
        if client is not None:
            await client.aclose()
    # The late commit kept the lock until it ended: the next turn saw its result, and the two
    # never interleaved (a retry of the first would have been answered from it).
    assert during in ([], ["一つ目"])
    assert after == [*during, "二つ目"]
    assert len(llm.requests) == 2


# -- erasure ---------------------------------------------------------------------------------


async def test_a_turn_waiting_for_the_lock_when_its_user_is_erased_stores_nothing(
    store: redis.Redis | None,
) -> None:
    llm = ScriptedLlm(default=said("はいにゃん"))
    async with harness(llm=llm, redis_client=store) as h:
        first = await _blocker_holds_the_lock(h, llm)
        sent = asyncio.create_task(
            h.chat(
                "私はパリに住んでいる", user_id="victim", request_id="r", timezone="Europe/Paris"
            )
        )
        await asyncio.sleep(0.1)
        assert len(llm.requests) == 1  # the second waits for the lock
        await h.agent.erase("victim")
        assert llm.gate is not None
        llm.gate.set()
        await asyncio.gather(first, sent, return_exceptions=True)
        await h.settled()
        session = await h.parts.sessions.load("victim")
        answer = await h.parts.sessions.cached_answer("victim", "r")
        report = await h.agent.usage("victim")
    assert session.history == []
    assert session.preferences.timezone == ""
    assert answer is None
    assert report.user_today.turns == 0


async def test_an_erase_between_the_commit_and_the_turn_count_leaves_no_usage(
    redis_url: str,
) -> None:
    link = SlowLink(redis_url, 0.05)
    slow = redisconn.connect(await link.start(), 2.0)
    direct = redisconn.connect(redis_url, 2.0)
    try:
        async with (
            harness(llm=ScriptedLlm(default=said("はいにゃん")), redis_client=slow) as far,
            harness(llm=False, redis_client=direct) as near,
        ):
            await far.chat("こんにちは", user_id="warm-up")
            turn = asyncio.create_task(far.chat("こんにちは", user_id="leaver"))
            # The far replica's commit has run in Redis; its reply is on the way.
            await exists_soon(direct, keys.user_key("leaver", "history"))
            await near.agent.erase("leaver")
            await turn
            await far.settled()
            report = await near.agent.usage("leaver")
            index = await direct.exists(keys.user_key("leaver", "usage:keys"))
    finally:
        await slow.aclose()
        await direct.aclose()
        await link.aclose()
    assert (report.user_today.turns, report.user_month.turns) == (0, 0)
    assert not index


# -- Redis away mid-turn ---------------------------------------------------------------------


async def test_redis_killed_mid_turn_fails_fast_with_unavailable() -> None:
    server = RedisServer().start()
    client = redisconn.connect(server.url, 0.2)
    try:
        llm = ScriptedLlm(default=said("はいにゃん"))
        async with harness(llm=llm, redis_client=client) as h:
            await h.chat("こんにちは", user_id="warm-up")
            llm.gate = asyncio.Event()
            llm.started.clear()
            turn = asyncio.create_task(h.chat("こんにちは", user_id="u", within=1.5))
            await llm.started.wait()
            server.kill()
            asked = time.monotonic()
            llm.gate.set()
            try:
                with pytest.raises(StoreUnavailable):
                    await turn
                took = time.monotonic() - asked
            finally:
                server.start()  # the spend is recorded, and nothing is left retrying
                await h.settled()
    finally:
        await client.aclose()
        server.stop()
    assert took < 1.0


@pytest.mark.parametrize("when", ["before_the_turn", "after_the_lock"])
async def test_a_paused_redis_ends_the_turn_by_its_deadline(when: str) -> None:
    server = RedisServer().start()
    client = redisconn.connect(server.url, 0.5)
    try:
        llm = ScriptedLlm(default=said("はいにゃん"))
        async with harness(llm=llm, redis_client=client) as h:
            await h.chat("こんにちは", user_id="warm-up")
            llm.gate = asyncio.Event()
            llm.started.clear()
            if when == "before_the_turn":
                server.pause()
                llm.gate.set()
            asked = time.monotonic()
            turn = asyncio.create_task(h.chat("こんにちは", user_id="u", within=0.4))
            if when == "after_the_lock":
                await llm.started.wait()
                server.pause()
                llm.gate.set()
            with pytest.raises((StoreUnavailable, TurnTimeout)):
                await turn
            took = time.monotonic() - asked
            server.resume()
    finally:
        server.resume()
        await client.aclose()
        server.stop()
    # By its deadline and a moment for the commit and the lock (not the 0.5 s Redis timeout
    # twice over, per command).
    assert took < 0.4 + 0.6


async def test_spend_of_a_turn_caught_in_a_redis_pause_is_counted_once_when_it_is_back() -> None:
    server = RedisServer().start()
    client = redisconn.connect(server.url, 0.2)
    try:
        llm = ScriptedLlm(default=said("はいにゃん", 1000, 100))
        async with harness(llm=llm, redis_client=client) as h:
            await h.chat("こんにちは", user_id="warm-up")
            llm.gate = asyncio.Event()
            llm.started.clear()
            turn = asyncio.create_task(h.chat("こんにちは", user_id="u", within=1.0))
            await llm.started.wait()
            server.pause()
            llm.gate.set()
            # Each timed-out settle was still delivered to the paused server's socket.
            with pytest.raises((StoreUnavailable, TurnTimeout)):
                await turn
            server.resume()
            await h.settled()
            report = await h.agent.usage("u")
    finally:
        server.resume()
        await client.aclose()
        server.stop()
    assert report.user_today.prompt_tokens == 1000
    assert report.user_today.cost_usd == pytest.approx((1000 * 1.0 + 100 * 2.0) / 1e6)
    assert report.global_today.prompt_tokens == 2000  # with the warm-up's


# -- untrusted answers ------------------------------------------------------------------------


async def test_model_names_the_provider_invents_do_not_grow_the_metrics() -> None:
    answered = 0

    def renamed(_request: Any) -> LlmReply:
        nonlocal answered
        answered += 1
        return LlmReply("はいにゃん", [], 10, 10, f"fake-model-invented-{answered:04d}")

    async with harness(llm=ScriptedLlm(default=renamed)) as h:
        for i in range(20):
            await h.chat("こんにちは", user_id=f"u{i}")
    labels = {
        sample.labels.get("model")
        for metric in REGISTRY.collect()
        if metric.name.startswith(("chatagent_llm_tokens", "chatagent_cost_usd"))
        for sample in metric.samples
    }
    assert not any(str(label).startswith("fake-model-invented") for label in labels)


async def test_a_megabyte_reply_is_cut_to_the_persona_limit_quickly() -> None:
    llm = ScriptedLlm(default=said("あ" * 1_000_000 + "にゃん"))
    async with harness(llm=llm, max_reply_chars=400) as h:
        started = time.monotonic()
        result = await h.chat("こんにちは")
        took = time.monotonic() - started
    assert took < 2.0  # the guard is bounded work on the event loop
    assert len(result.reply) <= 400
    assert ends_in_nyan(result.reply)


def _wav(frames: int, rate: int = 22_050) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x01\x00" * frames)
    return out.getvalue()


class _Speech(speech_pb2_grpc.SpeechServiceServicer):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def Synthesize(self, request: Any, context: Any) -> AsyncIterator[Any]:
        for sequence, chunk in enumerate(self.chunks):
            yield speech_pb2.SynthesizeResponse(sequence=sequence, text="…", audio_wav=chunk)


@contextlib.asynccontextmanager
async def speaking(h: Harness, chunks: list[bytes]) -> AsyncIterator[Agent]:
    """The harness's parts with a SpeechService double that answers `chunks`."""
    server = grpc.aio.server()
    speech_pb2_grpc.add_SpeechServiceServicer_to_server(_Speech(chunks), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = open_channel(f"127.0.0.1:{port}", ["chatagent.v1.SpeechService"])
    speech = SpeechClient(
        channel, Breaker("speech", fail_max=3, reset_seconds=1.0), timeout_seconds=5.0
    )
    agent = Agent(h.settings, replace(h.parts, speech=speech))
    try:
        yield agent
    finally:
        await agent.aclose()
        await channel.close()
        await server.stop(None)


@pytest.mark.parametrize(
    "chunks",
    [[b"not a wav at all"], [_wav(100), b"RIFF\x00\x00\x00\x00WAVE"]],
    ids=["garbage", "header-only"],
)
async def test_speech_that_is_not_wav_degrades_speech_instead_of_failing_the_turn(
    chunks: list[bytes],
) -> None:
    async with (
        harness(llm=ScriptedLlm(default=said("はいにゃん。またねにゃん。"))) as h,
        speaking(h, chunks) as agent,
    ):
        result = await agent.turn(
            TurnRequest(user_id="u", message="こんにちは", include_audio=True, caller="b"),
            deadline=Deadline.after(5),
        )
    assert "speech" in result.degraded
    assert result.reply == "はいにゃん。またねにゃん。"


class _CountingServicer(ChatServicer):
    """ChatServicer counting its StreamChat handlers still running."""

    live = 0

    async def StreamChat(self, request: Any, context: Any) -> AsyncIterator[Any]:
        type(self).live += 1
        try:
            async for response in super().StreamChat(request, context):
                yield response
        finally:
            type(self).live -= 1


async def test_a_stream_nobody_reads_ends_with_its_connection_age() -> None:
    second = _wav(500_000, rate=48_000)  # 1 MB, about ten seconds of speech
    async with (
        harness(
            llm=ScriptedLlm(default=said("はいにゃん。またねにゃん。")),
            turn_timeout_seconds=1.0,
            max_connection_age_seconds=1.0,
            max_connection_age_grace_seconds=1.0,
        ) as h,
        speaking(h, [second] * 6) as agent,
    ):
        servicer = _CountingServicer(agent, h.settings)
        server = grpc.aio.server(options=server_options(h.settings))
        chat_pb2_grpc.add_ChatServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        call = chat_pb2_grpc.ChatServiceStub(channel).StreamChat(
            chat_pb2.StreamChatRequest(
                user_id="reader", message="こんにちは", include_audio=True, request_id="s"
            )
        )
        try:
            # A reader that never reads holds its turn back (the events wait, bounded) until
            # the turn's deadline; the handler, stuck writing to it, ends with the connection,
            # closed at its age and grace (no deadline of ours can end a blocked write).
            await until(lambda: _CountingServicer.live == 1, seconds=2.0)
            await until(lambda: not _CountingServicer.live, seconds=6.0)
        finally:
            call.cancel()
            await channel.close()
            await server.stop(None)
