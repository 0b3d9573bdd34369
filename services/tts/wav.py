"""Audio as this service hands it out: mono 16-bit PCM, one self-contained WAV file a sentence.

Engines give float samples on their own scales (Open JTalk on the int16 scale and past it, Piper
within ±1); `Audio.from_samples` clips them before they become 16-bit, so a loud syllable is
clipped instead of wrapping around into a crack. `read_wav` takes the WAV files other programs
write (espeak-ng's `--stdout` leaves the sizes unset, streamed OpenAI WAVs may too).
"""

from __future__ import annotations

import io
import struct
import wave
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

_INT16_MAX: Final = 32767
_PCM: Final = 1
_EXTENSIBLE: Final = 0xFFFE
_FLOAT: Final = 3


class AudioFormatError(ValueError):
    """Bytes that are not a WAV file this service can convert."""


@dataclass(frozen=True, slots=True)
class Audio:
    """Mono 16-bit little-endian PCM samples and their rate."""

    pcm: bytes
    sample_rate_hz: int

    @classmethod
    def from_samples(
        cls, samples: npt.NDArray[np.floating], sample_rate_hz: int, *, full_scale: float
    ) -> Audio:
        """Float samples where `full_scale` is the loudest 16-bit value, clipped."""
        scaled = np.asarray(samples, dtype=np.float64) * (_INT16_MAX / full_scale)
        clipped = np.clip(np.rint(scaled), -_INT16_MAX - 1, _INT16_MAX)
        return cls(clipped.astype("<i2").tobytes(), sample_rate_hz)

    @property
    def frames(self) -> int:
        return len(self.pcm) // 2

    @property
    def duration_seconds(self) -> float:
        return self.frames / self.sample_rate_hz

    def wav(self) -> bytes:
        """The samples as a WAV file."""
        out = io.BytesIO()
        with wave.open(out, "wb") as file:
            file.setnchannels(1)
            file.setsampwidth(2)
            file.setframerate(self.sample_rate_hz)
            file.writeframes(self.pcm)
        return out.getvalue()


def read_wav(data: bytes) -> Audio:
    """The audio of a WAV file of 16-bit PCM or 32-bit float samples, any number of channels
    (mixed down to mono). Chunk sizes past the end of the data, as streaming writers leave them,
    are read as "to the end"."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioFormatError("the audio is not a WAV file")
    at = 12
    fmt: tuple[int, int, int, int] | None = None
    while at + 8 <= len(data):
        chunk, size = struct.unpack_from("<4sI", data, at)
        body = data[at + 8 : at + 8 + size]
        if chunk == b"fmt ":
            fmt = _format(body)
        elif chunk == b"data":
            if fmt is None:
                raise AudioFormatError("the WAV file has its samples before its format")
            return _decode(body, *fmt)
        at += 8 + size + (size & 1)
    raise AudioFormatError("the WAV file has no samples")


def _format(body: bytes) -> tuple[int, int, int, int]:
    if len(body) < 16:
        raise AudioFormatError("the WAV file's format chunk is too short")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _EXTENSIBLE and len(body) >= 26:
        (tag,) = struct.unpack_from("<H", body, 24)  # the sub-format GUID's first two bytes
    if channels < 1 or rate < 1:
        raise AudioFormatError("the WAV file has no channels or no sample rate")
    return tag, channels, rate, bits


def _decode(body: bytes, tag: int, channels: int, rate: int, bits: int) -> Audio:
    if tag == _PCM and bits == 16:
        if channels == 1:
            return Audio(body[: len(body) // 2 * 2], rate)
        dtype, width, full_scale = "<i2", 2, float(_INT16_MAX)
    elif tag == _FLOAT and bits == 32:
        dtype, width, full_scale = "<f4", 4, 1.0
    else:
        raise AudioFormatError(
            f"the WAV file holds {bits}-bit samples of format {tag}; 16-bit PCM or 32-bit "
            "float is needed"
        )
    frame = width * channels
    samples = np.frombuffer(body[: len(body) // frame * frame], dtype=dtype)
    mono = samples.reshape(-1, channels).mean(axis=1)
    return Audio.from_samples(mono, rate, full_scale=full_scale)
