"""Korean (and English when Piper is not there) with espeak-ng, a process per sentence.

The text goes in on stdin (never as an argument, so nothing in it is read as an option), the
WAV comes back on stdout. The process is awaited, not waited for on a thread, so the event loop
never blocks; a call that is cancelled (the client went away, the deadline passed) kills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import unicodedata
from typing import Final

from services.tts.voice import VoiceUnavailable
from services.tts.wav import Audio, AudioFormatError, read_wav
from services.tts.workers import Worker

# How long the check at load may take.
_LOAD_TIMEOUT_SECONDS: Final = 10.0
_MAX_ERROR_CHARS: Final = 200


class EspeakVoice:
    def __init__(self, name: str, espeak_voice: str, *, command: str) -> None:
        self._name = name
        self._argv = (command, "-v", espeak_voice, "-b", "1", "--stdout")
        self._loaded = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def engine(self) -> str:
        return "espeak-ng"

    def load(self) -> None:
        """Check that espeak-ng runs and has the voice (it speaks a word of it)."""
        if self._loaded:
            return
        try:
            done = subprocess.run(
                self._argv,
                input=b"a",
                capture_output=True,
                timeout=_LOAD_TIMEOUT_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise VoiceUnavailable(f"espeak-ng ({self._argv[0]}) cannot run: {exc}") from exc
        self._check(done.returncode, done.stdout, done.stderr)
        self._loaded = True

    async def synthesize(self, text: str, worker: Worker) -> Audio:
        # espeak-ng reads full-width letters by their Unicode names ("ｗ" is not "w").
        spoken = unicodedata.normalize("NFKC", text).encode()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise VoiceUnavailable(f"espeak-ng ({self._argv[0]}) cannot run: {exc}") from exc
        try:
            out, err = await process.communicate(spoken)
        except BaseException:
            # Cancelled: the process must not go on speaking to nobody.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise
        return self._check(process.returncode, out, err)

    def _check(self, status: int | None, out: bytes, err: bytes) -> Audio:
        if status != 0:
            reason = err.decode(errors="replace").strip()[:_MAX_ERROR_CHARS]
            raise VoiceUnavailable(
                f"espeak-ng ({self._name}) failed with status {status}: {reason}"
            )
        try:
            return read_wav(out)
        except AudioFormatError as exc:
            raise VoiceUnavailable(f"espeak-ng ({self._name}) gave no usable audio: {exc}") from exc
