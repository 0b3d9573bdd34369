"""English: our word table first, then the NRC emotion lexicon, with VADER's polarity.

Tokens are lower-case words (apostrophes kept: "don't"), in clauses split at punctuation and
"but". Each emotion word counts at each occurrence, looked up as written and as its lemma
(simplemma: "cried" -> "cry", for recall):

1. `WORDS`, our table of frequent emotion words with one label each, counting `TABLE_WEIGHT`.
   It exists because the NRC lexicon (as NRCLex ships it) lacks common words ("sad", "great",
   "terrified"), has no class for relief or shame, and spreads many words over several classes
   ("hate": anger, disgust, fear, sadness), which would make "I hate this" sadness on a tie.
2. The NRC lexicon, through NRCLex's token-list interface (its raw-text one needs TextBlob
   corpora and fails offline). A word's one count is shared among its classes; anticipation and
   trust, which NRC gives to ordinary words such as "time" and "tomorrow", count half.

A word within `NEGATION_SPAN` words after a negator ("not", "never", "don't", ...) in the same
clause is shifted as ML-Ask shifts a negated expression (`labels.NEGATED`). `PHRASES` are
read as one word ("can't wait" is excitement, not negated waiting).

`neutral` gets evidence from every word that is no emotion word (`NEUTRAL_PER_WORD`) and more
when VADER finds no sentiment: a factual text is neutral however many of its words NRC
associates with something. VADER's compound score is the polarity.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Final

import simplemma
from nrclex import NRCLex
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from services.emotion import labels
from services.emotion.analyzers.base import Finding

NEGATION_SPAN: Final = 3
# A word of our table (or a phrase) counts this much; an NRC word counts 1, shared among its
# classes. Our words name an emotion; NRC's are often only associated with one ("dark").
TABLE_WEIGHT: Final = 2.0
# VADER's own threshold for a neutral compound score.
VADER_NEUTRAL: Final = 0.05
# Evidence for `neutral` from each word that is no emotion word: NRC associates so many
# ordinary words with an emotion ("leaves": sadness, "arrives": anticipation) that a long
# factual text would otherwise come out as one; at 0.1 a text needs about one emotion word in
# twenty to be more than neutral.
NEUTRAL_PER_WORD: Final = 0.1
# And when VADER finds no sentiment at all: "The package arrived." is not anticipation, but
# "That was a nightmare" (which VADER does not know) is still fear.
VADER_NEUTRAL_WEIGHT: Final = 0.5

# NRC's eight emotions and our labels, with the weight of one count. NRC's "positive" and
# "negative" are sentiments, not emotions: left out.
NRC_CLASSES: Final[Mapping[str, tuple[str, float]]] = {
    "joy": ("joy", 1.0),
    "trust": ("like", 0.5),
    "anticipation": ("excitement", 0.5),
    "surprise": ("surprise", 1.0),
    "sadness": ("sadness", 1.0),
    "anger": ("anger", 1.0),
    "disgust": ("dislike", 1.0),
    "fear": ("fear", 1.0),
}

_TABLE: Final = {
    "joy": """happy happily happier happiest happiness glad joy joyful joyous delighted delight
        cheerful pleased enjoy enjoyed enjoying fun funny great awesome amazing fantastic
        wonderful excellent brilliant yay hooray woohoo haha hahaha lol lmao rofl smile smiling
        laugh laughing celebrate blessed grin""",
    "like": """love loved loves loving lovely adore adorable cute fond thank thanks thankful
        grateful appreciate appreciated beautiful sweet favorite favourite""",
    "relief": """relieved relief relieve phew whew calm calmer relax relaxed relaxing reassured
        safe comfortable peaceful""",
    "excitement": """excited exciting excite thrilled thrilling eager pumped hyped psyched
        stoked""",
    "surprise": """surprised surprising surprise wow whoa woah omg astonished astonishing
        amazed stunned shocked shocking unexpected unbelievable""",
    "sadness": """sad sadly sadder saddest sadness unhappy depressed depressing depression
        lonely alone cry cried crying tears heartbroken miserable gloomy grief sorrow hurt
        disappointed disappointing disappointment upset miss missed lost hopeless""",
    "shame": """ashamed shame shameful embarrassed embarrassing embarrassment humiliated
        humiliating awkward guilty mortified""",
    "anger": """angry anger mad furious annoyed annoying irritated irritating pissed rage
        outraged livid infuriating frustrated frustrating""",
    "dislike": """hate hated hates dislike disgusting disgusted gross yuck ew eww awful
        terrible horrible worst sucks suck boring bored nasty""",
    "fear": """afraid scared scary fear feared frightened frightening terrified terrifying
        anxious anxiety worried worry worrying nervous panic panicking dread creepy""",
}

# Our table: frequent emotion words, one label each.
WORDS: Final[Mapping[str, str]] = {
    word: label for label, words in _TABLE.items() for word in words.split()
}

# Read as one word; the longest match at a position wins.
PHRASES: Final[Mapping[tuple[str, ...], str]] = {
    ("can't", "wait"): "excitement",
    ("cannot", "wait"): "excitement",
    ("can", "not", "wait"): "excitement",
    ("no", "worries"): "relief",
    ("no", "problem"): "relief",
    ("thank", "god"): "relief",
    ("fed", "up"): "anger",
    ("pissed", "off"): "anger",
    ("freaked", "out"): "fear",
    ("freaking", "out"): "fear",
    ("let", "down"): "sadness",
    ("oh", "no"): "fear",
}
_PHRASE_MAX: Final = max(len(phrase) for phrase in PHRASES)

NEGATORS: Final = frozenset(
    {"not", "no", "never", "nothing", "nobody", "none", "neither", "nor", "without", "hardly"}
    | {"barely", "cannot"}
)

_CLAUSE = re.compile(r"[.!?;:,()\[\]\"\n]+|\bbut\b|\bhowever\b")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def load_shared() -> None:
    """simplemma's English dictionary (about 0.4 s to load) and the NRC lexicon, read once into
    their modules' caches."""
    simplemma.lemmatize("warming", lang="en")
    NRCLex()


def lemma(word: str) -> str:
    return str(simplemma.lemmatize(word, lang="en"))


def clauses(text: str) -> Iterator[list[str]]:
    """The lower-case words of each clause of `text`."""
    lowered = text.lower().replace("’", "'").replace("‘", "'")
    for clause in _CLAUSE.split(lowered):
        words = _WORD.findall(clause)
        if words:
            yield words


def _is_negator(word: str) -> bool:
    return word in NEGATORS or word.endswith("n't")


class EnglishAnalyzer:
    def __init__(self, *, use_nrc: bool) -> None:
        self.name: Final = "nrclex+vader" if use_nrc else "words+vader"
        # Per thread: NRCLex keeps the last token list on the object; VADER is cheap to build.
        self._nrc = NRCLex() if use_nrc else None
        self._vader = SentimentIntensityAnalyzer()

    def analyze(self, text: str) -> Finding:
        # Per candidate word: its table label (None: ask NRC), the word, whether negated.
        candidates: list[tuple[str | None, str, bool]] = []
        word_count = 0
        for words in clauses(text):
            word_count += len(words)
            negated_until = -1
            index = 0
            while index < len(words):
                phrase = _phrase_at(words, index)
                if phrase is not None:
                    phrase_label, length = phrase
                    candidates.append((phrase_label, "", False))
                    index += length
                    continue
                word = words[index]
                if _is_negator(word):
                    negated_until = index + NEGATION_SPAN
                else:
                    label = WORDS.get(word) or WORDS.get(lemma(word))
                    if label is not None or self._nrc is not None:
                        candidates.append((label, word, index <= negated_until))
                index += 1
        evidence, emotive = self._evidence(candidates)
        compound = float(self._vader.polarity_scores(text)["compound"])
        neutral = NEUTRAL_PER_WORD * max(0, word_count - emotive)
        if abs(compound) < VADER_NEUTRAL:
            neutral += VADER_NEUTRAL_WEIGHT
        labels.add(evidence, labels.NEUTRAL, neutral)
        return Finding(evidence, polarity=compound)

    def _evidence(
        self, candidates: list[tuple[str | None, str, bool]]
    ) -> tuple[dict[str, float], int]:
        """The evidence of the candidates, and how many of them were emotion words."""
        nrc = self._nrc_classes([word for label, word, _ in candidates if label is None])
        evidence: dict[str, float] = {}
        emotive = 0
        for label, word, negated in candidates:
            if label is not None:
                labels.add(evidence, label, TABLE_WEIGHT, negated=negated)
                emotive += 1
                continue
            emotions = [NRC_CLASSES[name] for name in nrc.get(word, ()) if name in NRC_CLASSES]
            for nrc_label, weight in emotions:
                labels.add(evidence, nrc_label, weight / len(emotions), negated=negated)
            emotive += bool(emotions)
        return evidence, emotive

    def _nrc_classes(self, words: list[str]) -> Mapping[str, list[str]]:
        """NRC's classes of each word, as written or else as its lemma."""
        if self._nrc is None or not words:
            return {}
        lemmas = {word: lemma(word) for word in words}
        self._nrc.load_token_list([*lemmas, *lemmas.values()])
        found: Mapping[str, list[str]] = self._nrc.affect_dict
        return {word: found.get(word) or found.get(base) or [] for word, base in lemmas.items()}


def _phrase_at(words: list[str], index: int) -> tuple[str, int] | None:
    for length in range(min(_PHRASE_MAX, len(words) - index), 1, -1):
        label = PHRASES.get(tuple(words[index : index + length]))
        if label is not None:
            return label, length
    return None
