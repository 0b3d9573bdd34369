"""`make bench`: every benchmark in turn, each printing its own tables, then one report of all
their figures, bench/REPORT.md (with the date, the machine's cores and load at the start, and the
git revision), and the figures of the new benchmarks as data in bench/results.json.

`python -m bench --quick` runs everything at smoke-test sizes (minutes, not the full run's
figures) and writes its report, data and plot to bench/quick/ instead (ignored by git), so a
smoke test never passes for the real report. `--only NAME[,NAME]` runs some of them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    emotion_bench,
    memory_bench,
    peers_bench,
    speech_bench,
    sustained_bench,
    tools_bench,
    turn_bench,
)
from bench.common import Section, machine, machine_line

HERE = Path(__file__).resolve().parent


class _Tee(io.TextIOBase):
    """Writes to the console and keeps a copy: the older benchmarks print their tables."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.copy = io.StringIO()

    def write(self, text: str) -> int:
        self.console.write(text)
        self.console.flush()
        return self.copy.write(text)


def printed(title: str, run: Callable[[], object]) -> Section:
    """A benchmark that prints Markdown tables: its output is its section."""
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        run()
    return Section(title, tee.copy.getvalue().strip())


def benchmarks(quick: bool, out: Path) -> dict[str, Callable[[], Section]]:
    peers = ["--seconds", "2", "--phase-samples", "3"] if quick else []
    memory = ["--users", "1000"] if quick else []
    sustained = ["--seconds", "30", "--rate", "20"] if quick else []
    return {
        "peers": lambda: peers_bench.main(peers),
        "memory": lambda: memory_bench.main(memory),
        "sustained": lambda: sustained_bench.main([*sustained, "--out-dir", str(out)]),
        "tools": lambda: printed("Tools service", tools_bench.main),
        "emotion": lambda: printed("Emotion service", emotion_bench.main),
        "speech": lambda: printed("Speech service", speech_bench.main),
        "turn": lambda: printed("Orchestrator turn, tool phase and streaming", turn_bench.main),
    }


def render(info: dict[str, Any], sections: list[Section], quick: bool, seconds: float) -> str:
    lines = [
        "# Benchmark report",
        "",
        f"Written by `make bench` (`python -m bench{' --quick' if quick else ''}`). "
        f"Run {machine_line(info)}; the whole run took {seconds / 60:.0f} min.",
        "",
        "Every process (load generator, fake LLM, services, peers) shares the machine's cores, "
        "so the figures are of this machine on this day: compare the ratios measured in one run, "
        "and rerun on a quiet machine (load average well below the core count) before quoting "
        "absolute numbers.",
    ]
    if quick:
        lines += ["", "**Smoke-test sizes (`--quick`): not the full run's figures.**"]
    lines += ["", "## Contents", ""]
    lines += [f"- {section.title}" for section in sections]
    for section in sections:
        lines += ["", f"## {section.title}", "", section.markdown]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes")
    parser.add_argument("--only", default="", help="comma-separated: " + "peers,memory,...")
    args = parser.parse_args()
    info = machine()
    started = time.perf_counter()
    out = HERE / "quick" if args.quick else HERE
    out.mkdir(exist_ok=True)
    report = out / "REPORT.md"
    runs = benchmarks(args.quick, out)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(runs)
    sections: list[Section] = []
    failed = []
    for name in chosen:
        print(f"\n== {name} ==", flush=True)
        try:
            sections.append(runs[name]())
        except Exception:
            # One broken benchmark must not lose the others' figures: it is reported as such.
            failed.append(name)
            text = traceback.format_exc()
            print(text, file=sys.stderr, flush=True)
            sections.append(Section(f"{name}: FAILED", f"```\n{text.strip()}\n```"))
    report.write_text(render(info, sections, args.quick, time.perf_counter() - started))
    data = {"machine": info, "quick": args.quick}
    data |= {section.title: section.data for section in sections if section.data}
    results = out / "results.json"
    results.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str) + "\n")
    print(f"\nwrote {report.relative_to(HERE.parent)} and {results.relative_to(HERE.parent)}")
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
