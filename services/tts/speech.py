"""A text spoken sentence by sentence: the service's logic, without gRPC.

`Speaker.prepare` checks a request and turns its text into an `Utterance`: the text cleaned
(`normalise`), its language, the voice, and the sentences to speak (`split_sentences`; those
with nothing to say left out). `Speaker.speak` then admits the call, takes a worker for each
sentence in turn and yields one `Chunk` per sentence as soon as it is synthesized, so the first
audio comes after one sentence, not after the text; only one sentence's audio is held at a
time, however long the text. A sentence whose engine found nothing to say is skipped; the
sequence numbers of what is sent have no gaps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Final

from services.common.deadline import Deadline, DeadlineExhausted
from services.common.language import Language, base_language, detect_language
from services.common.sentences import split_sentences
from services.tts import metrics
from services.tts.normalise import NothingToSay, is_speakable, normalise
from services.tts.voice import Voice, Voices, VoiceUnavailable
from services.tts.wav import Audio
from services.tts.workers import Worker, WorkerPool

logger = logging.getLogger(__name__)

# Texts up to this long are prepared on the event loop (well under a millisecond); longer ones
# (up to ~6 ms at 5,000 characters) on a thread.
_INLINE_CHARS: Final = 500
_WARM_UP: Final = "準備🔥(^^)ｗ"


class TextTooLong(ValueError):
    """The text is longer than one call may speak."""


@dataclass(frozen=True, slots=True)
class Utterance:
    """What a request asks to be spoken, checked."""

    voice: Voice
    language: Language
    sentences: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One spoken sentence."""

    sequence: int
    text: str
    audio: Audio

    @property
    def characters(self) -> int:
        """The characters synthesized (what speech is billed by)."""
        return len(self.text)


class Speaker:
    def __init__(
        self,
        voices: Voices,
        workers: Sequence[Worker],
        *,
        max_chars: int,
        max_sentence_chars: int,
        max_queue: int,
        default_language: Language,
    ) -> None:
        self._voices = voices
        self._workers = tuple(workers)
        self._pool = WorkerPool(workers, max_queue=max_queue)
        self._max_chars = max_chars
        self._max_sentence_chars = max_sentence_chars
        self._default_language = default_language
        self._ready = False

    @property
    def pool(self) -> WorkerPool:
        return self._pool

    async def load(self) -> None:
        """Load the voices onto the workers, off the event loop; the readiness check."""
        started = time.monotonic()
        await asyncio.to_thread(self._load)
        if not self._ready:
            logger.info(
                "voices loaded",
                extra={
                    "workers": len(self._workers),
                    "seconds": round(time.monotonic() - started, 3),
                },
            )
        self._ready = True

    def _load(self) -> None:
        # The emoji table is indexed on first use (about 10 ms): not in the first request.
        normalise(_WARM_UP)
        self._voices.load(self._workers)

    async def prepare(self, text: str, language: str = "", voice: str = "") -> Utterance:
        """The request checked: TextTooLong, NothingToSay or UnknownVoice (all ValueError)."""
        if len(text) > self._max_chars:
            raise TextTooLong(
                f"the text has {len(text):,} characters; at most {self._max_chars:,} are "
                "spoken in one call"
            )
        if len(text) > _INLINE_CHARS:
            return await asyncio.to_thread(self._prepare, text, language, voice)
        return self._prepare(text, language, voice)

    def _prepare(self, text: str, language_tag: str, voice_name: str) -> Utterance:
        cleaned = normalise(text)
        if language_tag.strip():
            language = base_language(language_tag, self._default_language)
        else:
            language = detect_language(cleaned, default=self._default_language)
        voice = self._voices.choose(voice_name.strip(), language)
        sentences = split_sentences(cleaned, max_chars=self._max_sentence_chars)
        return Utterance(voice, language, tuple(s for s in sentences if is_speakable(s)))

    async def speak(self, utterance: Utterance, deadline: Deadline) -> AsyncGenerator[Chunk, None]:
        """Each sentence's audio as soon as it is synthesized. Overloaded when as many calls
        are admitted as the workers and the queue allow; DeadlineExhausted when the deadline
        passes first; VoiceUnavailable when the voice fails; NothingToSay when no sentence had
        any sound."""
        if not self._ready:
            raise VoiceUnavailable("the voices are still loading")
        sequence = 0
        async with self._pool.admission():
            for sentence in utterance.sentences:
                # The worker is given back before the sentence is sent: a client that reads
                # slowly holds none.
                async with self._pool.worker(deadline) as worker:
                    audio = await self._synthesize(utterance.voice, sentence, worker, deadline)
                if audio.frames == 0:
                    continue
                yield Chunk(sequence, sentence, audio)
                sequence += 1
        if sequence == 0:
            raise NothingToSay("the voice found nothing to say in the text")

    async def _synthesize(
        self, voice: Voice, sentence: str, worker: Worker, deadline: Deadline
    ) -> Audio:
        if deadline.expired():
            raise DeadlineExhausted("the deadline passed before the whole text was spoken")
        started = time.perf_counter()
        try:
            async with deadline.timeout():
                audio = await voice.synthesize(sentence, worker)
        except TimeoutError:
            raise DeadlineExhausted(
                "the deadline passed before the whole text was spoken"
            ) from None
        except VoiceUnavailable:
            metrics.FAILURES.labels(voice.engine).inc()
            raise
        metrics.SENTENCE_SECONDS.labels(voice.engine).observe(time.perf_counter() - started)
        metrics.CHARACTERS.labels(voice.engine).inc(len(sentence))
        metrics.AUDIO_SECONDS.labels(voice.engine).inc(audio.duration_seconds)
        return audio

    async def aclose(self) -> None:
        await self._voices.aclose()
        for worker in self._workers:
            worker.close()
