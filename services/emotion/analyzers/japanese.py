"""Japanese: ML-Ask (pymlask) over MeCab with the IPA dictionary.

ML-Ask finds the emotive expressions of Nakamura's dictionary in the text's lemmas, shifting
negated ones (「嫌いではない」) by its contextual valence shifters; its ten classes are our labels
but `neutral`. The evidence for a label is the number of distinct expressions ML-Ask found for
it (ML-Ask reports each expression once however often it occurs). It misses slang, emoji and
kaomoji. With any dictionary other than ipadic it silently finds nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import ipadic
from mlask import MLAsk

from services.emotion.analyzers.base import Finding

# ML-Ask's classes (romanised Japanese) and our labels.
CLASSES: Final[Mapping[str, str]] = {
    "yorokobi": "joy",  # 喜
    "suki": "like",  # 好
    "yasu": "relief",  # 安
    "takaburi": "excitement",  # 昂
    "odoroki": "surprise",  # 驚
    "aware": "sadness",  # 哀
    "haji": "shame",  # 恥
    "ikari": "anger",  # 怒
    "iya": "dislike",  # 厭
    "kowa": "fear",  # 怖
}


class MlaskAnalyzer:
    name: Final = "mlask"

    def __init__(self) -> None:
        # One MeCab tagger per analyser, and one analyser per thread: taggers are not
        # thread-safe.
        self._mlask = MLAsk(ipadic.MECAB_ARGS)
        # The first parse pages the dictionary in (tens of milliseconds): at start, not in a call.
        self._mlask.analyze("嬉しい")

    def analyze(self, text: str) -> Finding:
        found = self._mlask.analyze(text).get("emotion") or {}
        evidence: dict[str, float] = {}
        for name, expressions in found.items():
            label = CLASSES.get(name)
            if label is not None and expressions:
                evidence[label] = evidence.get(label, 0.0) + len(expressions)
        return Finding(evidence)
