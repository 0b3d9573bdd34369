"""The reply as the caller hears it while it is written: the LLM's text cut into sentences as they
complete, the persona held on the stream, each sentence sent on as text and (when asked for) to
speech at once, so the first audio comes while the LLM is still writing.

What has been sent is never taken back: `Voice.text` is exactly what the caller received, and
the turn's reply. So the persona is checked before a sentence goes out, not after:

* the first sentence must be in the user's language, or the stream is stopped before anything
  was said (StreamRefused "wrong_language") and the turn takes its corrective path;
* a sentence that would give the system prompt away stops the stream ("echo");
* a sentence that would not fit `max_reply_chars` (with room for the ending) stops it
  ("too_long");
* at the end, a reply that does not end in the ending gets it appended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from services.common.deadline import Deadline
from services.common.language import Language
from services.common.sentences import SentenceSplitter, split_sentences
from services.common.text import without_controls
from services.orchestrator import persona
from services.orchestrator.clients import SpeechChunk, SpeechClient, SpeechUnavailable, join_wavs
from services.orchestrator.llm import StopStream
from services.orchestrator.model import AudioPiece, Emit, TextDelta

logger = logging.getLogger(__name__)

# Sentences being synthesized at once, ahead of the one being played: enough to keep the audio
# flowing, few enough not to flood SpeechService with one turn.
_SPEECH_AHEAD: Final = 2


class StreamRefused(StopStream):
    """A sentence of the stream would break the persona: the stream stops before it is sent."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem  # "wrong_language", "echo" or "too_long"


class Speaker:
    """Speech for each sentence as it is sent: synthesized ahead (bounded), its audio emitted in
    the order of the sentences. A speech service that fails stops the speaking, not the turn."""

    def __init__(
        self,
        speech: SpeechClient,
        language: Language,
        *,
        deadline: Deadline,
        reserve: float,
        emit: Emit,
        on_failure: Callable[[], None],
    ) -> None:
        self._speech = speech
        self._language = language
        self._deadline = deadline
        self._reserve = reserve
        self._emit = emit
        self._on_failure = on_failure
        self._ahead = asyncio.Semaphore(_SPEECH_AHEAD)
        self._pending: asyncio.Queue[asyncio.Task[list[SpeechChunk]] | None] = asyncio.Queue()
        self._player: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[list[SpeechChunk]]] = []
        self._wavs: list[bytes] = []
        self._failed = False
        self.characters = 0

    def say(self, sentence: str) -> None:
        if self._failed:
            return
        task = asyncio.get_running_loop().create_task(self._synthesize(sentence))
        self._tasks.append(task)
        self._pending.put_nowait(task)
        if self._player is None:
            self._player = asyncio.get_running_loop().create_task(self._play())

    async def _synthesize(self, sentence: str) -> list[SpeechChunk]:
        async with self._ahead:
            return await self._speech.synthesize(
                sentence, self._language, deadline=self._deadline, reserve=self._reserve
            )

    async def _play(self) -> None:
        sequence = 0
        while (task := await self._pending.get()) is not None:
            try:
                chunks = await task
            except SpeechUnavailable as exc:
                logger.info("speech unavailable", extra={"error": str(exc)})
                self._fail()
                return
            for chunk in chunks:
                await self._emit(AudioPiece(sequence, chunk.text, chunk.wav))
                sequence += 1
                self._wavs.append(chunk.wav)
                self.characters += chunk.characters

    def _fail(self) -> None:
        self._failed = True
        self._on_failure()
        self.cancel()

    async def finish(self) -> bytes:
        """Wait (until the reserve before the deadline) for the audio of what was said; the
        whole of it as one WAV ("" when there is none, or speech failed)."""
        if self._player is not None:
            self._pending.put_nowait(None)
            try:
                async with asyncio.timeout(max(0.0, self._deadline.remaining() - self._reserve)):
                    await asyncio.shield(self._player)
            except TimeoutError:
                logger.info("speech did not finish in time; the rest is left out")
                self._fail()
        if self._failed or not self._wavs:
            return b""
        try:
            return join_wavs(self._wavs)
        except SpeechUnavailable:
            self._fail()
            return b""

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._player is not None and self._player is not asyncio.current_task():
            self._player.cancel()


class Voice:
    """What has been said of the reply (see the module docstring)."""

    def __init__(
        self,
        language: Language,
        config: persona.PersonaConfig,
        *,
        emit: Emit,
        speaker: Speaker | None = None,
    ) -> None:
        self._language = language
        self._config = config
        self._emit = emit
        self.speaker = speaker
        self._ending = config.ending(language)
        self._separator = persona.separator(language)
        self._room = len(self._separator) + len(self._ending) + 1
        self._prompt = ""
        self.refusal = ""  # what stopped the stream last ("" when nothing did)
        self._sent: list[str] = []
        self._splitter = SentenceSplitter()

    @property
    def text(self) -> str:
        return "".join(self._sent)

    @property
    def started(self) -> bool:
        return bool(self._sent)

    def listen(self, prompt: str) -> None:
        """Start a new stream (after a stopped one, nothing of it having been said)."""
        self._prompt = prompt
        self.refusal = ""
        self._splitter = SentenceSplitter()

    async def hear(self, piece: str) -> None:
        """A piece of the LLM's text (the stream's `on_text`)."""
        for sentence in self._splitter.feed(without_controls(piece)):
            await self._say(sentence)

    async def end(self) -> None:
        """The stream ended: the last sentence, if it may be said."""
        for sentence in self._splitter.flush():
            try:
                await self._say(sentence)
            except StreamRefused as refused:
                if refused.problem == "wrong_language":
                    raise
                # Too long or an echo: the reply ends with what was said.

    async def say_all(self, text: str) -> None:
        """A reply written without the stream (the planner's, a repair): said sentence by
        sentence, within the same bounds."""
        for sentence in split_sentences(text):
            try:
                await self._say(sentence, checked=True)
            except StreamRefused:
                break

    async def close(self) -> None:
        """End the reply in the persona's ending, if what was said does not."""
        said = self.text
        if not said or persona.ends_with_ending(said, self._ending):
            return
        tail = self._separator + self._ending if not said[-1:].isspace() else self._ending
        await self._send(tail)

    async def _say(self, sentence: str, *, checked: bool = False) -> None:
        if not checked:
            if not self._sent and not persona.language_ok(sentence, self._language, self._config):
                self._refuse("wrong_language")
            if self._prompt and persona.reproduces_prompt(self.text + sentence, self._prompt):
                self._refuse("echo")
        joined = (" " if self._sent and self._language != "ja" else "") + sentence
        if len(self.text) + len(joined) + self._room > self._config.max_reply_chars:
            self._refuse("too_long")
        await self._send(joined)

    def _refuse(self, problem: str) -> None:
        self.refusal = problem
        raise StreamRefused(problem)

    async def _send(self, text: str) -> None:
        self._sent.append(text)
        await self._emit(TextDelta(text))
        if self.speaker is not None and text.strip():
            self.speaker.say(text.strip())
