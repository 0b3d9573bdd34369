"""Load every data file the services read at run time, with the network unusable.

`python -m scripts.check_offline_data` loads, through the services' own loaders, what the four
services need besides their code: the generated contract and its descriptors (the tool
descriptions), the time zones, the gazetteer, the language identifier, the voices (Open JTalk's
dictionary and voice, the Piper voice, espeak-ng and its voices) and the emotion analysers
(ML-Ask with the IPA dictionary, the NRC lexicon, VADER, simplemma), and the CA bundle the
weather client verifies Open-Meteo with. Each is then asked something whose answer shows that
its data is really there (ML-Ask with any dictionary but ipadic silently finds nothing).

While it runs, a connection or name lookup for anything but loopback fails, and a write outside
the temporary directory fails the check (in Kubernetes the root filesystem is read-only and only
the temp dir, an emptyDir, is writable). Both are Python audit hooks, installed before any
service module is imported: they see what Python code does, not what a C library or a
subprocess does on its own (the image build runs the check with `--network=none` and a tmpfs
/tmp for that).

`python -m scripts.check_offline_data speech emotion` runs only the checks named (see `CHECKS`).
Exits 0 when everything loaded; 1 with one line per missing or broken part otherwise. The image
build runs it in the final stage as the services' user, so an image without its data never
ships; tests/test_image.py runs it on the development machine.
"""

from __future__ import annotations

import sys

# Before anything is imported: the check must not write bytecode next to the code it imports
# (site-packages is read-only in the image), or it would flag its own writes.
sys.dont_write_bytecode = True

import asyncio  # noqa: E402
import ipaddress  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from typing import Any, Final  # noqa: E402

# Where a write is allowed: devices, and the temp directory (an emptyDir in Kubernetes), added
# once found (`find_temp_dir`).
_writable: tuple[str, ...] = ("/dev",)
_WRITE_FLAGS: Final = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
# File system events that change something, with the index of each path argument.
_CHANGES: Final = {
    "os.mkdir": (0,),
    "os.rename": (0, 1),
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.truncate": (0,),
    "os.symlink": (1,),
    "os.link": (1,),
}

# What was attempted and refused (or, for writes, what would fail on a read-only root).
network_attempts: list[str] = []
writes: list[str] = []


class NetworkDisabled(OSError):
    """A connection or lookup the check does not allow: a part tried to go online."""


def _is_loopback(host: object) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return False
    host = host.strip("[]").split("%", 1)[0]
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _address_host(address: object) -> object:
    # AF_INET/AF_INET6: (host, port, ...); AF_UNIX: a path (str or bytes), always local.
    if isinstance(address, tuple) and address:
        return address[0]
    if isinstance(address, str | bytes):
        return "localhost"
    return address


def _is_writable_place(path: object) -> bool:
    if isinstance(path, int):
        return True  # an open descriptor: the check is made where it was opened
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str | os.PathLike):
        return True
    real = os.path.realpath(os.fspath(path))
    return any(real == root or real.startswith(root + os.sep) for root in _writable)


def _opens_for_writing(mode: object, flags: object) -> bool:
    if isinstance(mode, str):
        return any(char in mode for char in "wax+")
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        host = _address_host(args[1] if event == "socket.connect" else args[-1])
        if not _is_loopback(host):
            network_attempts.append(f"{event} to {host!r}")
            raise NetworkDisabled(f"the network is off for this check ({event} to {host!r})")
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex"):
        if not _is_loopback(args[0]):
            network_attempts.append(f"{event} of {args[0]!r}")
            raise NetworkDisabled(f"the network is off for this check (looking up {args[0]!r})")
    elif event == "open":
        path, mode, flags = args
        if _opens_for_writing(mode, flags) and not _is_writable_place(path):
            writes.append(f"open {path!r} for writing")
    elif event in _CHANGES:
        for index in _CHANGES[event]:
            if index < len(args) and not _is_writable_place(args[index]):
                writes.append(f"{event} {args[index]!r}")


# -- the parts ----------------------------------------------------------------------------------

Check = Callable[[], Awaitable[str]]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


async def generated_code() -> str:
    import importlib
    import pkgutil

    import chatagent.v1
    from services.orchestrator.toolspec import tool_specs

    modules = sorted(m.name for m in pkgutil.iter_modules(chatagent.v1.__path__))
    _require(bool(modules), "chatagent/v1 has no generated modules (run grpc_tools.protoc)")
    for name in modules:
        importlib.import_module(f"chatagent.v1.{name}")
    # The tool descriptions the LLM reads come from descriptors.binpb's source comments.
    specs = tool_specs()
    undescribed = sorted(spec.name for spec in specs.values() if not spec.description)
    _require(
        not undescribed,
        f"tools without a description {undescribed}: descriptors.binpb lacks source info "
        "(generate it with --include_source_info)",
    )
    return f"{len(modules)} modules, {len(specs)} tool descriptions from descriptors.binpb"


async def time_zones() -> str:
    from services.common.timezones import resolve_zone

    zones = ("Asia/Tokyo", "Asia/Seoul", "America/New_York", "Europe/London", "UTC")
    for zone in zones:
        resolve_zone(zone)
    return f"{len(zones)} zones resolved"


async def gazetteer() -> str:
    from services.common.config import load
    from services.common.gazetteer import load_gazetteer
    from services.orchestrator.config import OrchestratorSettings
    from services.tools.config import ToolSettings

    populations = {
        load(ToolSettings).gazetteer_min_population,
        load(OrchestratorSettings).gazetteer_min_population,
    }
    sizes = []
    for population in sorted(populations):
        places = await asyncio.to_thread(load_gazetteer, population)
        for name in ("東京", "Tokyo", "서울", "New York"):
            _require(places.find(name) is not None, f"the gazetteer does not know {name!r}")
        sizes.append(f"{len(places):,} names (cities above {population:,})")
    return ", ".join(sizes)


async def language_identifier() -> str:
    from services.common import language

    await asyncio.to_thread(language.warm_up)
    samples = {
        "en": "The weather is lovely today and I would like to go for a long walk.",
        "fr": "Le temps est magnifique aujourd'hui et je voudrais faire une longue promenade.",
    }
    for expected, text in samples.items():
        found = language.identify(text)
        _require(found == expected, f"py3langid says {found!r} for {expected!r} text")
    return f"py3langid loaded (unpacked into {tempfile.gettempdir()})"


async def speech() -> str:
    from services.common.config import load
    from services.common.deadline import Deadline
    from services.tts.config import SpeechSettings
    from services.tts.embedded import EmbeddedVoices
    from services.tts.main import speaker_for
    from services.tts.workers import start_workers

    settings = load(SpeechSettings)
    # The embedded voices whatever TTS_BACKEND says: the image ships them either way.
    voices = EmbeddedVoices(
        espeak_command=settings.tts_espeak_ng, piper_threads=settings.tts_piper_threads
    )
    speaker = speaker_for(settings, voices, start_workers(1))
    try:
        await speaker.load()
        # (text, language tag, voice asked for, the voice that must speak it)
        samples = (
            ("こんにちは、元気だにゃん。", "ja", "", "mei"),
            ("Hello, how are you today?", "en", "", "joe"),
            ("Hello, how are you today?", "en", "espeak-en", "espeak-en"),
            ("안녕하세요, 반갑습니다.", "ko", "", "espeak-ko"),
        )
        spoken = []
        for text, tag, asked, expected in samples:
            utterance = await speaker.prepare(text, tag, asked)
            _require(
                utterance.voice.name == expected,
                f"{tag} is spoken by {utterance.voice.name}, not {expected} (did its voice "
                "fail to load? see the warning above)",
            )
            chunks = [chunk async for chunk in speaker.speak(utterance, Deadline.after(60.0))]
            seconds = sum(chunk.audio.duration_seconds for chunk in chunks)
            _require(seconds > 0.2, f"{expected} spoke {seconds:.2f} s of audio for {text!r}")
            spoken.append(f"{expected} {seconds:.1f} s")
        return ", ".join(spoken)
    finally:
        await speaker.aclose()


async def emotion() -> str:
    from services.common.deadline import Deadline
    from services.emotion.analyzers import ANALYZER_SETS, english
    from services.emotion.pool import AnalysisPool

    # simplemma's English data: without it lemmas are the words themselves, silently.
    _require(english.lemma("cried") == "cry", "simplemma has no English dictionary")
    samples = (
        ("今日は本当に嬉しい。", "ja", "joy"),
        ("I am so happy and glad today!", "en", "joy"),
        ("정말 기뻐요", "ko", "joy"),
    )
    read = []
    for name, factory in ANALYZER_SETS.items():
        pool = AnalysisPool(factory, workers=1, max_queue=len(samples), max_chars=2000)
        await pool.start()
        try:
            for text, tag, expected in samples:
                found = await pool.analyze(text, tag, Deadline.after(30.0))
                _require(
                    found.dominant == expected,
                    f"{name}/{found.analyzer} finds {found.dominant!r} in {text!r}, not "
                    f"{expected!r} (a missing or wrong dictionary finds nothing)",
                )
                if tag == "en":
                    _require(found.polarity > 0, f"VADER gives {text!r} no positive polarity")
            read.append(name)
        finally:
            await pool.close()
    return "analyser sets " + ", ".join(read) + " read ja, en and ko"


async def https_roots() -> str:
    import httpx

    # The tools service's weather client verifies Open-Meteo with httpx's default context
    # (certifi's bundle), loaded when the client is made.
    client = httpx.AsyncClient()
    await client.aclose()
    return "httpx's CA bundle loaded"


def guard() -> str | None:
    """Turn the network off for this process and allow writes only in the temp directory.

    Returns the temp directory (the first writable of $TMPDIR, /tmp, /var/tmp, /usr/tmp and the
    working directory), or None when there is none. It is looked for before the hook is on,
    since finding it means writing a file into each candidate. The hook stays for the life of
    the process (audit hooks cannot be removed).
    """
    global _writable
    try:
        found: str | None = os.path.realpath(tempfile.gettempdir())
    except FileNotFoundError:
        found = None
    if found is not None:
        _writable = (found, "/dev")
    sys.addaudithook(_audit)
    return found


CHECKS: Final[dict[str, Check]] = {
    "generated code": generated_code,
    "time zones": time_zones,
    "gazetteer": gazetteer,
    "language identifier": language_identifier,
    "speech": speech,
    "emotion": emotion,
    "https roots": https_roots,
}


async def run(names: list[str]) -> list[str]:
    failures = []
    for name in names:
        check = CHECKS[name]
        started = time.monotonic()
        try:
            detail = await check()
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            failures.append(f"{name}: {reason}")
            print(f"FAIL {name}: {reason}", flush=True)
            traceback.print_exc(file=sys.stderr)
            continue
        print(f"ok   {name}: {detail} ({time.monotonic() - started:.1f} s)", flush=True)
    return failures


def main(argv: list[str]) -> int:
    unknown = [name for name in argv if name not in CHECKS]
    if unknown:
        print(f"no such check: {unknown}; the checks are {list(CHECKS)}", file=sys.stderr)
        return 2
    # The services' own warnings (a voice that did not load says why) go to stderr.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    temp = guard()
    failures = []
    if temp is None:
        # py3langid (the emotion service, the orchestrator) cannot load without one.
        failures.append("temp dir: none is writable (mount an emptyDir at /tmp)")
        print(f"FAIL {failures[-1]}", flush=True)
    else:
        print(f"ok   temp dir: {temp} is writable", flush=True)
    names = argv or list(CHECKS)
    failures += asyncio.run(run(names))
    failures += [f"network used: {attempt}" for attempt in dict.fromkeys(network_attempts)]
    failures += [
        f"writes outside {temp or 'the temp dir'} (read-only in the image): {write}"
        for write in dict.fromkeys(writes)
    ]
    if failures:
        print("missing or broken at run time:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    print(
        "every data file the services need loaded offline"
        if names == list(CHECKS)
        else "passed offline: " + ", ".join(names)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
