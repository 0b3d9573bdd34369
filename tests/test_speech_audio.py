"""The audio the speech service hands out and takes in: loud samples clipped instead of cracking,
WAV files written by other programs (sizes left unset, stereo, float) read, and espeak-ng as a
process that is killed when its caller goes away."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from services.tts.espeak import EspeakVoice
from services.tts.voice import VoiceUnavailable
from services.tts.wav import Audio, AudioFormatError, read_wav
from services.tts.workers import Worker
from tests.support.loop import wait_until


def wav_bytes(
    samples: bytes, *, rate: int, channels: int = 1, bits: int = 16, tag: int = 1
) -> bytes:
    """A WAV file as a streaming writer leaves it: RIFF and data sizes unset (0xFFFFFFFF)."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    return (
        b"RIFF\xff\xff\xff\xffWAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"LIST\x04\x00\x00\x00INFO"
        + b"data\xff\xff\xff\xff"
        + samples
    )


def test_loud_samples_are_clipped_not_wrapped_around() -> None:
    # Open JTalk's peaks go past the int16 scale (56,643 seen); wrapped, they would crack.
    audio = Audio.from_samples(np.array([56_643.0, -40_000.0, 1000.4]), 48_000, full_scale=32767)
    assert np.frombuffer(audio.pcm, dtype="<i2").tolist() == [32767, -32768, 1000]
    audio = Audio.from_samples(np.array([1.5, -1.0, 0.5]), 22_050, full_scale=1.0)
    assert np.frombuffer(audio.pcm, dtype="<i2").tolist() == [32767, -32767, 16384]


def test_audio_is_a_self_contained_mono_16_bit_wav() -> None:
    audio = Audio(np.arange(4800, dtype="<i2").tobytes(), 48_000)
    with wave.open(io.BytesIO(audio.wav()), "rb") as file:
        assert file.getparams()[:4] == (1, 2, 48_000, 4800)
    assert audio.duration_seconds == pytest.approx(0.1)


def test_wav_files_with_unset_sizes_are_read_to_their_end() -> None:
    pcm = np.array([1, -2, 3, -4], dtype="<i2").tobytes()
    audio = read_wav(wav_bytes(pcm, rate=22_050))
    assert (audio.pcm, audio.sample_rate_hz) == (pcm, 22_050)


def test_stereo_and_float_wavs_become_mono_16_bit() -> None:
    stereo = np.array([100, 300, -100, -300], dtype="<i2").tobytes()
    assert np.frombuffer(
        read_wav(wav_bytes(stereo, rate=24_000, channels=2)).pcm, "<i2"
    ).tolist() == [200, -200]
    floats = np.array([0.5, -2.0], dtype="<f4").tobytes()
    audio = read_wav(wav_bytes(floats, rate=24_000, bits=32, tag=3))
    assert np.frombuffer(audio.pcm, "<i2").tolist() == [16384, -32768]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"ID3\x04mp3 data",
        b"RIFF\x00\x00\x00\x00WAVE",
        wav_bytes(b"\x00" * 6, rate=8000, bits=24),
    ],
)
def test_what_is_not_usable_wav_is_refused(data: bytes) -> None:
    with pytest.raises(AudioFormatError):
        read_wav(data)


def test_a_missing_espeak_ng_is_reported_at_load() -> None:
    voice = EspeakVoice("espeak-ko", "ko", command="/nonexistent/espeak-ng")
    with pytest.raises(VoiceUnavailable, match="cannot run"):
        voice.load()


def children_running(marker: str) -> list[int]:
    """Our child processes whose command line contains `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat_fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat_fields[1]) == os.getpid() and marker.encode() in cmdline:
            found.append(int(entry))
    return found


async def test_a_cancelled_espeak_ng_process_is_killed(tmp_path: Path) -> None:
    # An espeak-ng that hangs: it would speak to nobody for a minute.
    hanging = tmp_path / "espeak-ng"
    hanging.write_text("#!/bin/sh\nexec sleep 61\n")
    hanging.chmod(hanging.stat().st_mode | stat.S_IXUSR)
    voice = EspeakVoice("espeak-ko", "ko", command=str(hanging))
    worker = Worker(0)
    task = asyncio.ensure_future(voice.synthesize("안녕하세요.", worker))
    try:
        await wait_until(lambda: children_running("sleep\x0061"), within=5, message="started")
        [pid] = children_running("sleep\x0061")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(lambda: not Path(f"/proc/{pid}").exists(), within=5, message="killed")
    finally:
        task.cancel()
        worker.close()


async def test_espeak_ng_failing_is_unavailable(tmp_path: Path) -> None:
    failing = tmp_path / "espeak-ng"
    failing.write_text("#!/bin/sh\necho 'no such voice' >&2\nexit 3\n")
    failing.chmod(failing.stat().st_mode | stat.S_IXUSR)
    worker = Worker(0)
    try:
        with pytest.raises(VoiceUnavailable, match="status 3: no such voice"):
            await EspeakVoice("espeak-ko", "ko", command=str(failing)).synthesize("안녕.", worker)
    finally:
        worker.close()
