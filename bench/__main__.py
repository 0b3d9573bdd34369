"""`make bench`: timing goals, printed as tables. Not part of `make test`."""

from __future__ import annotations

from bench import emotion_bench, speech_bench, tools_bench, turn_bench

if __name__ == "__main__":
    tools_bench.main()
    print()
    emotion_bench.main()
    print()
    speech_bench.main()
    print()
    turn_bench.main()
