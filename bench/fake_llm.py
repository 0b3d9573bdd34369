"""The benchmarks' fake LLM as a process of its own: `python -m bench.fake_llm` prints its base
URL on the first line of stdout and serves until its stdin closes.

A request whose last message is the user's gets one response asking for three tools at once
(get_time, get_fortune, calculate); any other request (the tool results are in) gets the cat's
reply. No delay: the fake is as fast as a Python HTTP server can be, so the contenders' own cost
is what differs.
"""

from __future__ import annotations

import sys
from typing import Any

from tests.support.fake_openai import Reply, fake_openai

TOOL_CALLS = [
    {"id": "call_time", "name": "get_time", "arguments": '{"place":"東京"}'},
    {"id": "call_fortune", "name": "get_fortune", "arguments": "{}"},
    {"id": "call_calc", "name": "calculate", "arguments": '{"expression":"6*7"}'},
]
REPLY = "東京は朝の九時半、今日の運勢は大吉、六かける七は四十二だにゃん。"


def respond(body: dict[str, Any]) -> Reply:
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    if last.get("role") == "user":
        return Reply(tool_calls=TOOL_CALLS, prompt_tokens=120, completion_tokens=40)
    return Reply(content=REPLY, prompt_tokens=200, completion_tokens=30)


def main() -> None:
    with fake_openai() as llm:

        def answer(body: dict[str, Any]) -> Reply:
            # The fake records every request; a long run must not grow it without bound.
            if len(llm.requests) > 1000:
                llm.requests.clear()
            return respond(body)

        llm.responder = answer
        print(llm.base_url, flush=True)
        sys.stdin.read()  # until the parent closes the pipe (or dies)


if __name__ == "__main__":
    main()
