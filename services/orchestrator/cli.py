"""An interactive chat against a running suite: `python -m services.orchestrator.cli` (or
`make chat`). Prints the reply, the tool calls with their timings, the emotion and what fell
back. Commands: /usage, /forget (erase your data), /quit.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import uuid
from collections.abc import Iterable

import grpc

from chatagent.v1 import chat_pb2, chat_pb2_grpc

_STATUS = {
    value.number: value.name.removeprefix("TOOL_CALL_STATUS_").lower()
    for value in chat_pb2.DESCRIPTOR.enum_types_by_name["ToolCallStatus"].values
}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--addr", default=os.environ.get("CHAT_ADDR", "127.0.0.1:50051"))
    parser.add_argument("--user", default=os.environ.get("CHAT_USER") or getpass.getuser())
    parser.add_argument(
        "--token",
        default=os.environ.get("CHAT_API_TOKEN", ""),
        help="bearer token (default: $CHAT_API_TOKEN)",
    )
    parser.add_argument("--language", default="", help="BCP-47 hint, e.g. ja, en, ko")
    parser.add_argument("--timezone", default="", help="IANA zone, e.g. Asia/Tokyo")
    parser.add_argument("--audio", action="store_true", help="ask for speech; saves turn-N.wav")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per turn")
    return parser.parse_args()


def _lines(interactive: bool) -> Iterable[str]:
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            return
        yield line


def _show(reply: chat_pb2.ChatResponse) -> None:
    print(f"cat> {reply.reply}")
    for call in reply.tool_calls:
        millis = call.duration.ToNanoseconds() / 1e6
        print(f"  tool {call.name}({call.arguments_json}) {_STATUS[call.status]} {millis:.0f} ms")
    print(f"  emotion: {reply.emotion.dominant}  language: {reply.language}")
    usage = reply.usage
    print(
        f"  usage: {usage.prompt_tokens}+{usage.completion_tokens} tokens, "
        f"${usage.cost_usd:.6f} ({usage.model})"
    )
    if reply.degraded:
        print(f"  degraded: {', '.join(reply.degraded)}")
    print(f"  trace: {reply.trace_id}")


def main() -> int:
    args = _arguments()
    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else ()
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting as {args.user!r} with {args.addr}; /usage, /forget, /quit")
    with grpc.insecure_channel(args.addr) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        turn = 0
        for line in _lines(interactive):
            message = line.strip()
            if not message:
                continue
            if message == "/quit":
                break
            try:
                if message == "/usage":
                    usage = stub.GetUsage(
                        chat_pb2.GetUsageRequest(user_id=args.user), metadata=metadata, timeout=10
                    )
                    print(
                        f"  today: {usage.user_today.turns} turns, ${usage.user_today.cost_usd:.6f}"
                        f"; this month: {usage.user_month.turns} turns, "
                        f"${usage.user_month.cost_usd:.6f}"
                    )
                    continue
                if message == "/forget":
                    erased = stub.DeleteUserData(
                        chat_pb2.DeleteUserDataRequest(user_id=args.user),
                        metadata=metadata,
                        timeout=10,
                    )
                    print(f"  erased {erased.erased_records} records")
                    continue
                turn += 1
                reply = stub.Chat(
                    chat_pb2.ChatRequest(
                        user_id=args.user,
                        message=message,
                        language=args.language,
                        timezone=args.timezone,
                        include_audio=args.audio,
                        request_id=uuid.uuid4().hex,
                    ),
                    metadata=metadata,
                    timeout=args.timeout,
                )
            except grpc.RpcError as exc:
                print(f"  error: {exc.code().name}: {exc.details()}")
                continue
            _show(reply)
            if reply.audio:
                path = f"turn-{turn}.wav"
                with open(path, "wb") as out:
                    out.write(reply.audio)
                print(f"  audio: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
