"""Arithmetic expressions in a message, as the calculator tool accepts them.

Integers joined by - or / without spaces are dates, phone numbers, scores, ranges and fractions
("2026-11-26", "090-1234-5678", "3-2", "24/7") unless the message asks for arithmetic.
"""

from __future__ import annotations

import re
from typing import Final

from services.orchestrator.planner.intents import CALC_WORD_RE
from services.orchestrator.planner.text import words

# One message may hold several expressions ("1+1 and 2*3"); more than this is not a question.
MAX_EXPRESSIONS: Final = 3
MAX_PIECES: Final = 10

# Longest names first, so that log10 is not read as log followed by 10.
_FUNCTIONS: Final = (
    "factorial|radians|degrees|log10|log2|atan2|hypot|floor|trunc|round|sqrt|cbrt|asin|acos|atan"
    "|sinh|cosh|tanh|ceil|comb|perm|exp|log|sin|cos|tan|abs|gcd|lcm|min|max"
)
# One character (or function name) an expression may contain. The alternatives begin with
# disjoint characters and nothing is nested, so scanning a run is linear in its length.
_ATOM: Final = (
    r"(?:[0-9０-９.,+\-*/×÷^%()（）＋－＊／＾−]"
    rf"|(?:{words(*_FUNCTIONS.split('|'))})(?=\s*[(（])"
    rf"|(?:{words('pi', 'tau')})(?![a-z])|π)"
)
_EXPRESSION_RUN_RE: Final = re.compile(rf"{_ATOM}(?:{_ATOM}|[ \t\u3000])*")
_OPERATOR_WORDS: Final[dict[str, str]] = {
    "たす": "+",
    "足す": "+",
    "プラス": "+",
    "plus": "+",
    "더하기": "+",
    "ひく": "-",
    "引く": "-",
    "マイナス": "-",
    "minus": "-",
    "빼기": "-",
    "かける": "*",
    "掛ける": "*",
    "times": "*",
    "multiplied by": "*",
    "곱하기": "*",
    "わる": "/",
    "割る": "/",
    "divided by": "/",
    "나누기": "/",
}
_OPERATOR_WORD_RE: Final = re.compile(
    r"([0-9０-９)）])(\s*(?:"
    + "|".join(sorted((re.escape(w) for w in _OPERATOR_WORDS), key=len, reverse=True))
    + r")\s*)(?=[0-9０-９(（])"
)
_BINARY_RE: Final = re.compile(
    r"[0-9０-９)）πiu.]\s*(?:\*\*|//|[+\-*/×÷^%＋－＊／＾−])\s*[-+−]?\s*[0-9０-９(（πpt.a-z]"
)
_CALL_RE: Final = re.compile(rf"(?<![a-z])(?:{_FUNCTIONS})\s*[(（]")
_AMBIGUOUS_RE: Final = re.compile(r"[0-9０-９]+(?:[-/－／−][0-9０-９]+)+")
_THOUSANDS_RE: Final = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_ASKED_BEFORE_RE: Final = re.compile(
    r"(?:\bwhat\s*(?:'s|’s|\s+is)|\bhow\s+much\s+is|計算して|計算|계산해|계산)\s*:?\s*$"
)
# A bare "?" after "11/26" is as likely a date as a sum, so it takes "=" or a word that asks.
_ASKED_AFTER_RE: Final = re.compile(
    r"\s*(?:=|(?:は|って|는|은)\s*[?？]|(?:(?:は|って|는|은|이|가|is)\s*)?(?:いくつ|何|なに|얼마|몇))"
)
_LEADING_JUNK: Final = ",.)）*/×÷^%＊／＾ \t\u3000"
_TRAILING_JUNK: Final = ",.+-*/×÷^%(（＋－＊／＾− \t\u3000"


def find_expressions(folded: str) -> list[tuple[int, str]]:
    """The expressions in the folded text with where each starts, at most MAX_EXPRESSIONS.

    Operator words between numbers are spelled as symbols ("3たす4" -> "3+ 4"). An expression is
    not cut to the tool's limit: a shortened sum is a different sum, and the tool refuses an
    over-long one honestly.
    """
    text = _with_operator_symbols(folded)
    found: list[tuple[int, str]] = []
    calc_asked = CALC_WORD_RE.search(text) is not None
    for run in _EXPRESSION_RUN_RE.finditer(text):
        raw = run.group(0)
        left = len(raw) - len(raw.lstrip(_LEADING_JUNK))
        candidate = raw.lstrip(_LEADING_JUNK).rstrip(_TRAILING_JUNK)
        start = run.start() + left
        if not candidate:
            continue
        asked = (
            calc_asked
            or _ASKED_BEFORE_RE.search(text, max(0, start - 20), start) is not None
            or _ASKED_AFTER_RE.match(text[start + len(candidate) : start + len(candidate) + 8])
            is not None
        )
        pieces = _split_top_level_commas(_THOUSANDS_RE.sub("", candidate))
        # "1,2,3,..." is a list, not thousands of sums: look at the first few pieces only.
        for piece in pieces[:MAX_PIECES]:
            expression = _balanced(piece).lstrip(_LEADING_JUNK).rstrip(_TRAILING_JUNK)
            expression = " ".join(expression.split())
            if _is_arithmetic(expression, asked=asked):
                found.append((start, expression))
                if len(found) == MAX_EXPRESSIONS:
                    return found
    return found


def _with_operator_symbols(text: str) -> str:
    """The text with operator words between numbers spelled as symbols.

    Replacements keep the text's length, so positions found in it are positions in the message.
    """

    def symbol(match: re.Match[str]) -> str:
        operand, spelled = match.group(1, 2)
        return operand + _OPERATOR_WORDS[" ".join(spelled.split())].center(len(spelled))

    return _OPERATOR_WORD_RE.sub(symbol, text)


def _split_top_level_commas(text: str) -> list[str]:
    if "," not in text:
        return [text]
    pieces: list[str] = []
    depth = 0
    begin = 0
    for index, char in enumerate(text):
        if char in "(（":
            depth += 1
        elif char in ")）":
            depth -= 1
        elif char == "," and depth <= 0:
            pieces.append(text[begin:index])
            begin = index + 1
    pieces.append(text[begin:])
    return pieces


def _balanced(text: str) -> str:
    """The text without the brackets that have no partner ("3+4)" -> "3+4")."""
    if not any(bracket in text for bracket in "()（）"):
        return text
    unmatched: set[int] = set()
    opened: list[int] = []
    for index, char in enumerate(text):
        if char in "(（":
            opened.append(index)
        elif char in ")）":
            if opened:
                opened.pop()
            else:
                unmatched.add(index)
    unmatched.update(opened)
    if not unmatched:
        return text
    return "".join(char for index, char in enumerate(text) if index not in unmatched)


def _is_arithmetic(expression: str, *, asked: bool) -> bool:
    if not _BINARY_RE.search(expression) and not _CALL_RE.search(expression):
        return False
    return asked or not _AMBIGUOUS_RE.fullmatch(expression)
