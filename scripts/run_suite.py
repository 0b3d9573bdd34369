"""`make run`: every service of the suite in the foreground, logs prefixed by service.

Each service is a package under services/ with a __main__.py. Ctrl-C (or SIGTERM) stops them all
gracefully; if one dies on its own, the others are stopped too and the exit status says so.
A variable named `<SERVICE>__<VAR>` (e.g. `TOOLS__LOG_LEVEL=DEBUG`) sets VAR for that service only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
STOP_TIMEOUT_SECONDS = 30.0
# Started first: the orchestrator depends on the others.
ORDER = ["tools", "emotion", "tts", "orchestrator"]


def discover() -> list[str]:
    found = [
        path.parent.name
        for path in (ROOT / "services").glob("*/__main__.py")
        if path.parent.name != "common"
    ]
    return sorted(
        found, key=lambda name: (ORDER.index(name) if name in ORDER else len(ORDER), name)
    )


def service_env(name: str) -> dict[str, str]:
    prefix = name.upper() + "__"
    own = {key[len(prefix) :]: value for key, value in os.environ.items() if key.startswith(prefix)}
    return {**os.environ, "PYTHONUNBUFFERED": "1", **own}


def pump(name: str, stream: IO[bytes], width: int, lock: threading.Lock) -> None:
    prefix = f"{name:<{width}} | ".encode()
    for line in iter(stream.readline, b""):
        with lock:
            sys.stdout.buffer.write(prefix + line)
            sys.stdout.buffer.flush()


def main() -> int:
    names = discover()
    if not names:
        print("no services found under services/", file=sys.stderr)
        return 1
    width = max(len(n) for n in names)
    lock = threading.Lock()
    stopping = threading.Event()
    children: dict[str, subprocess.Popen[bytes]] = {}
    pumps = []
    for name in names:
        # A session of its own: Ctrl-C reaches only this supervisor, which stops the services
        # in order instead of all of them racing on the same SIGINT.
        child = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            cwd=ROOT,
            env=service_env(name),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert child.stdout is not None
        children[name] = child
        pump_thread = threading.Thread(
            target=pump, args=(name, child.stdout, width, lock), daemon=True
        )
        pump_thread.start()
        pumps.append(pump_thread)

    def request_stop(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print(f"started: {', '.join(names)} (Ctrl-C stops all)", flush=True)

    failed = ""
    while not stopping.wait(0.2):
        for name, child in children.items():
            if child.poll() is not None:
                failed = name
                stopping.set()
                break

    for child in reversed(list(children.values())):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    status = 0
    for name, child in children.items():
        try:
            code = child.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            code = child.wait()
        if code != 0:
            status = 1
            print(f"{name} exited with status {code}", file=sys.stderr, flush=True)
    for pump_thread in pumps:
        pump_thread.join(timeout=5)
    if failed:
        print(f"{failed} stopped on its own; stopped the others", file=sys.stderr, flush=True)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
