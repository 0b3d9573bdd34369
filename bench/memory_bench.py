"""Memory at scale: 100,000 distinct users, one turn each, through a real orchestrator process
on the Redis store.

The orchestrator answers with its local planner (no LLM: the turn is the cheapest one, so the
run takes minutes), with ToolService and EmotionService doubles; each turn carries a request id,
as a production caller's does, so its stored answer counts too. Clients: several grpc.aio
callers at once. At 1%, 10% and 100% of the users (1k, 10k, 100k by default):

* the orchestrator's resident set (VmRSS from /proc/<pid>/status) against the one after a
  warm-up; target: growth <= 50 MB over the whole run (the sessions live in Redis, not in it);
* Redis `INFO memory` used_memory against the one after the warm-up, divided by the sessions
  written; target <= 8 KB per idle session. Also `MEMORY USAGE` of every key of one sample user
  (its history, preferences, stored answer, ...), which leaves out Redis's per-key overhead in
  its dictionaries, so the delta is the figure the target is checked against.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import grpc.aio
import redis

from bench.common import METADATA, Section, machine, machine_line, orchestrator_env, rss_kib
from chatagent.v1 import chat_pb2, chat_pb2_grpc
from services.orchestrator import keys
from tests.support.doubles import emotion_double, tools_double
from tests.support.process import ServiceProcess
from tests.support.redis_server import RedisServer

RSS_TARGET_MB = 50.0
REDIS_TARGET_KB = 8.0
MESSAGE = "こんにちは、今日も元気？"


def user_id(n: int) -> str:
    return f"mem-user-{n:06d}"


def sample_usage(client: redis.Redis, user: str) -> dict[str, int]:
    """Bytes by MEMORY USAGE of each key of one user, by concern. The pattern is built from the
    id's digest, which holds no pattern characters; the service itself never scans."""
    found: dict[str, int] = {}
    for key in client.scan_iter(match=f"{keys.PREFIX}:user:{{{keys.user_tag(user)}}}:*"):
        concern = key.decode().rsplit("}:", 1)[-1]
        if concern.startswith("answer:"):  # one per request id
            concern = "answer:<request id>"
        found[concern] = found.get(concern, 0) + int(client.memory_usage(key, samples=0) or 0)
    return found


async def drive(address: str, first: int, last: int, concurrency: int) -> int:
    """One turn for each user first..last-1; returns the errors."""
    errors = 0
    queue = iter(range(first, last))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)

        async def worker() -> None:
            nonlocal errors
            for n in queue:
                request = chat_pb2.ChatRequest(
                    user_id=user_id(n), message=MESSAGE, language="ja",
                    request_id=str(uuid.uuid4()),
                )  # fmt: skip
                try:
                    await stub.Chat(request, metadata=METADATA, timeout=30)
                except grpc.RpcError:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return errors


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def main(argv: list[str] | None = None) -> Section:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    info = machine()
    checkpoints = sorted({max(1, args.users // 100), max(1, args.users // 10), args.users})
    rows: list[dict[str, Any]] = []
    with (
        RedisServer() as store,
        tools_double() as tools,
        emotion_double() as emotion,
        ServiceProcess(
            "orchestrator",
            orchestrator_env(
                REDIS_URL=store.url, TOOLS_ADDR=tools.address, EMOTION_ADDR=emotion.address,
                SPEECH_ADDR="127.0.0.1:1", OPENAI_API_KEY="",
            ),
        ) as chat,
    ):  # fmt: skip
        chat.start(wait_for="chatagent.v1.ChatService", timeout=60)
        assert chat.process is not None
        client = redis.Redis.from_url(store.url)
        try:
            # Warm-up on other users: imports, caches, channels and the shared keys (caller,
            # global) in place before the baseline; those users are erased from the count.
            warm = 200
            asyncio.run(drive(chat.address, 10_000_000, 10_000_000 + warm, args.concurrency))
            warm_keys = int(client.dbsize())
            base_rss = rss_kib(chat.process.pid)
            base_redis = used_memory(client)
            print(
                f"  baseline after {warm} warm-up turns: orchestrator RSS {base_rss / 1024:.1f}"
                f" MiB, Redis used_memory {base_redis / 1024:.0f} KiB, {warm_keys} keys",
                flush=True,
            )
            done = errors = 0
            started = time.perf_counter()
            for checkpoint in checkpoints:
                errors += asyncio.run(drive(chat.address, done, checkpoint, args.concurrency))
                done = checkpoint
                rss = rss_kib(chat.process.pid)
                memory = used_memory(client)
                sample = sample_usage(client, user_id(0))
                sample_keys, sample_bytes = len(sample), sum(sample.values())
                row = {
                    "users": checkpoint,
                    "seconds": round(time.perf_counter() - started, 1),
                    "errors": errors,
                    "rss_mib": rss / 1024,
                    "rss_growth_mib": (rss - base_rss) / 1024,
                    "redis_used_mib": memory / 2**20,
                    "redis_per_session_kib": (memory - base_redis) / checkpoint / 1024,
                    "keys": int(client.dbsize()) - warm_keys,
                    "sample_keys": sample_keys,
                    "sample_bytes": sample_bytes,
                    "sample_by_concern": sample,
                }
                rows.append(row)
                print(
                    f"  {checkpoint:,} users ({row['seconds']:.0f} s, {errors} errors): RSS "
                    f"{row['rss_mib']:.1f} MiB (+{row['rss_growth_mib']:.1f}), Redis "
                    f"{row['redis_per_session_kib']:.2f} KiB per session, sample user "
                    f"{sample_keys} keys / {sample_bytes} B",
                    flush=True,
                )
        finally:
            client.close()
    section = render(rows, args, info)
    print(section.markdown)
    return section


def render(rows: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, Any]) -> Section:
    lines = [
        f"Measured {machine_line(info)}. {args.users:,} distinct users, one turn each (local "
        f"planner, request ids on), {args.concurrency} concurrent gRPC callers, Redis store.",
        "",
        "| users | elapsed (s) | errors | orchestrator RSS (MiB) | RSS growth (MiB) "
        "| Redis used (MiB) | Redis per session (KiB) | keys | sample user: keys / bytes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['users']:,} | {row['seconds']:.0f} | {row['errors']} | {row['rss_mib']:.1f} "
            f"| {row['rss_growth_mib']:+.1f} | {row['redis_used_mib']:.1f} "
            f"| {row['redis_per_session_kib']:.2f} | {row['keys']:,} "
            f"| {row['sample_keys']} / {row['sample_bytes']:,} |"
        )
    last = rows[-1]
    rss_ok = last["rss_growth_mib"] <= RSS_TARGET_MB
    redis_ok = last["redis_per_session_kib"] <= REDIS_TARGET_KB
    lines += [
        "",
        f"- orchestrator RSS growth over {last['users']:,} users: "
        f"{last['rss_growth_mib']:+.1f} MiB (target ≤ {RSS_TARGET_MB:.0f} MB): "
        f"{'pass' if rss_ok else 'FAIL'}",
        f"- Redis per idle session: {last['redis_per_session_kib']:.2f} KiB (target ≤ "
        f"{REDIS_TARGET_KB:.0f} KB): {'pass' if redis_ok else 'FAIL'}",
        f"- errors: {last['errors']}",
        "- the sample user's keys by MEMORY USAGE: "
        + ", ".join(
            f"{name} {size:,} B" for name, size in sorted(last["sample_by_concern"].items())
        ),
    ]
    data = {
        "machine": info,
        "users": args.users,
        "concurrency": args.concurrency,
        "rows": rows,
        "targets": {"rss_growth": rss_ok, "redis_per_session": redis_ok},
    }
    return Section(f"Memory: {args.users:,} users on the Redis store", "\n".join(lines), data)


if __name__ == "__main__":
    main()
