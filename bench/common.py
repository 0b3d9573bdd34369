"""What the benchmarks share: the machine they ran on, percentiles, the orchestrator's bench
settings, a fake LLM in a process of its own, and one benchmark's results as data for the report.
"""

from __future__ import annotations

import datetime
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"  # noqa: S105 - a local test token
METADATA = (("authorization", f"Bearer {TOKEN}"),)


@dataclass
class Section:
    """One benchmark's results: Markdown for the report, the figures as data for results.json,
    and the files (plots) it wrote next to the report."""

    title: str
    markdown: str
    data: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def machine() -> dict[str, Any]:
    """When, where and on what revision a run was made, taken at its start."""
    load1, load5, load15 = os.getloadavg()
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],  # noqa: S607
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        revision, dirty = "unknown", ""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "load_average": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "revision": revision + (" (with uncommitted changes)" if dirty else ""),
        "python": sys.version.split()[0],
    }


def machine_line(info: dict[str, Any]) -> str:
    load = " / ".join(f"{x:.2f}" for x in info["load_average"])
    return (
        f"{info['date']}, {info['cores']} cores, load average {load} (1 / 5 / 15 min) at the "
        f"start, revision {info['revision']}, Python {info['python']}"
    )


def percentile(samples: list[float], fraction: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def p50(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def rss_kib(pid: int) -> int:
    """A process's resident set (VmRSS) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def orchestrator_env(**extra: str) -> dict[str, str]:
    """The orchestrator with limits far away (the load generator is one caller and few users)
    and budgets on, far away: every LLM call is still reserved and settled, as in production."""
    env = {
        "OPENAI_API_KEY": "sk-bench",
        "CHAT_API_TOKENS": f"bench:{TOKEN}",
        "LOG_LEVEL": "WARNING",
        "USER_RATE_PER_MINUTE": "1000000",
        "USER_BURST": "100000",
        "GLOBAL_RATE_PER_SECOND": "1000000",
        "GLOBAL_BURST": "100000",
        "CALLER_RATE_PER_MINUTE": "100000000",
        "CALLER_BURST": "1000000",
        "LLM_MODEL": "fake-model",
        "LLM_PRICES": '{"fake-model": [0.15, 0.6]}',
        "USER_DAILY_BUDGET_USD": "1000000",
        "CALLER_DAILY_BUDGET_USD": "100000000",
        "GLOBAL_MONTHLY_BUDGET_USD": "100000000",
        # No trace export for any contender: the comparison is of the turn, not of telemetry.
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
    }
    env.update(extra)
    return env


class FakeLlmProcess:
    """tests.support.fake_openai in a process of its own (bench.fake_llm), so that its HTTP
    threads do not share a GIL with the contender under test. It answers a request whose last
    message is from the user with three tool calls in one response, and any other with a reply."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> FakeLlmProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.fake_llm"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("http://"):
            self.__exit__()
            raise RuntimeError(f"the fake LLM did not start: {line!r}")
        self.base_url = line
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        assert self.process.stdin is not None
        self.process.stdin.close()  # it exits when its stdin closes
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
