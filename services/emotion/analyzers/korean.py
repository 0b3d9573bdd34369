"""Korean: a small keyword and stem table. A heuristic, not a model.

No package on PyPI does multi-class Korean emotion offline (kiwipiepy lemmatises well but costs
seconds and hundreds of megabytes at start), so a table of about 140 stems, forms and two-word
phrases of frequent emotion words, and the chat conventions ㅋㅋ/ㅎㅎ (laughter) and ㅠㅠ/ㅜㅜ
(tears), is matched against the text. Entries are matched as written, leftmost and longest
first, so that "불편하" (uncomfortable) is not read as "편하" (comfortable); each match counts
once.

A match is negated, and shifted as ML-Ask shifts a negated expression (`labels.NEGATED`),
when "안" or "못" stands before it ("안 좋아", "안좋아") or its word ends in 지 and the next
one starts with 않 or 못 ("기쁘지 않아"). What it misses: words outside the table, spelling
variants, sarcasm, and any word that merely contains a stem ("헐" in "헐값").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from services.emotion import labels
from services.emotion.analyzers.base import Finding

_TABLE: Final = {
    "joy": """기쁘 기뻐 기뻤 기쁜 기쁨 행복 즐거 즐겁 즐겼 재미있 재밌 좋아 좋다 좋네 좋은 좋았
        좋지 좋아요 최고 웃겨 웃기 웃음 만족 짱""",
    "like": """사랑 좋아하 좋아해 좋아했 귀여 귀엽 고마 고맙 감사 반했 반하""",
    "relief": """안심 다행 안도 편안 편하 후련 걱정없 살았다""",
    "excitement": """설레 설렌 설렜 두근 기대돼 기대된 기대하 신나 신난 신났 흥분""",
    "surprise": """놀라 놀랐 놀랄 놀란 깜짝 헐 대박""",
    "sadness": """슬프 슬퍼 슬펐 슬픈 슬픔 우울 외로 외롭 눈물 울었 울어 서운 속상 그리워 그립
        아쉽 아쉬 힘들 힘드 힘든 괴로 괴롭 실망""",
    "shame": """부끄러 부끄럽 창피 민망 쪽팔 수치""",
    "anger": """화나 화났 화난 빡치 빡쳐 열받 짜증 분노 억울 어이없""",
    "dislike": """싫어 싫다 싫은 싫었 미워 밉 역겨 지겨 지긋지긋 최악 별로 불편 불편하 귀찮
        재미없 구려""",
    "fear": """무서 무섭 무서웠 두려 두렵 겁나 겁먹 불안 걱정 긴장 떨려""",
}

# Stems and forms, one label each.
STEMS: Final[Mapping[str, str]] = {
    stem: label for label, stems in _TABLE.items() for stem in stems.split()
}
# Phrases of two words, written with one space.
PHRASES: Final[Mapping[str, str]] = {
    "화가 나": "anger",
    "화가 났": "anger",
    "열 받": "anger",
    "어이가 없": "anger",
    "겁이 나": "fear",
    "걱정 없": "relief",
    "걱정 마": "relief",
    "기대가 돼": "excitement",
    "재미 없": "dislike",
    "울고 싶": "sadness",
}
# Runs of these letters: laughter and tears.
RUNS: Final[Mapping[str, str]] = {"ㅋ": "joy", "ㅎ": "joy", "ㅠ": "sadness", "ㅜ": "sadness"}

_ENTRIES: Final = sorted([*STEMS, *PHRASES], key=len, reverse=True)
_MATCH = re.compile("|".join(re.escape(entry) for entry in _ENTRIES) + "|ㅋ{2,}|ㅎ{2,}|[ㅠㅜ]+")
_NEGATORS: Final = frozenset({"안", "못"})
_ENDS_IN_JI = re.compile(r"지[도는가를만]?$")
_NEGATED_NEXT = re.compile(r" (?:않|못)")
_WHITESPACE = re.compile(r"\s+")


class KoreanAnalyzer:
    name: Final = "ko-keywords"

    def analyze(self, text: str) -> Finding:
        text = _WHITESPACE.sub(" ", text)
        evidence: dict[str, float] = {}
        for match in _MATCH.finditer(text):
            found = match.group()
            label = STEMS.get(found) or PHRASES.get(found) or RUNS[found[0]]
            labels.add(evidence, label, 1.0, negated=_negated(text, match.start(), match.end()))
        return Finding(evidence)


def _negated(text: str, start: int, end: int) -> bool:
    word_start = text.rfind(" ", 0, start) + 1
    before = text[word_start:start]
    if before in _NEGATORS:  # 안좋아
        return True
    if not before and word_start > 0:
        previous = text[text.rfind(" ", 0, word_start - 1) + 1 : word_start - 1]
        if previous in _NEGATORS:  # 안 좋아
            return True
    word_end = text.find(" ", end)
    if word_end < 0:
        word_end = len(text)
    # 기쁘지 않아, 좋아하지는 못해
    return bool(_ENDS_IN_JI.search(text[start:word_end]) and _NEGATED_NEXT.match(text, word_end))
