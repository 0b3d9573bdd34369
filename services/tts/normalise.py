"""Text made fit to be read aloud: what a voice would read wrongly or not at all is taken out.

espeak-ng and neural voices read emoji by their names ("fire, collision, direct hit"), a kaomoji
letter by letter and 「ｗｗｗ」 as "double-u" three times; an HMM voice falls silent or warns on
them. So, in this order:

1. emoji and pictographs (the `emoji` package's list: sequences, flags, skin tones, keycaps) go;
2. control, zero-width, bidi, variation-selector and private-use characters go;
3. kaomoji go, by pattern: bracketed faces ("(´・ω・｀)", "ヽ(・∀・)ノ", "(T_T)"), bare ones ("^^",
   "T_T", ">_<", ":)", "<3"), and laughter ("ｗｗｗ", "www" outside a word, "草" stays);
4. symbols no voice reads well (★, ♪, arrows, box drawing; "^", "|", "*", "_") go, while those
   that stand for words stay (℃, ™, №, ㎏, °, and the arithmetic and currency signs);
5. runs of one mark are collapsed ("！！！" -> "！", "..." -> "…", "ーーーー" -> "ーー"), and
   lines made only of marks (rules such as "-----") go;
6. whitespace is collapsed to single spaces; line breaks stay (they end sentences).

`normalise` raises `NothingToSay` when no letter or digit is left. Linear in the text: regexes
over it, Python code only per emoji run, kaomoji or rare symbol found.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

import emoji

from services.common.text import quoted


class NothingToSay(ValueError):
    """The text has nothing a voice could speak: no letter or digit, once cleaned."""


# "‼" and "⁉" are emoji, but in text they are the marks that end a sentence.
_MARKS_FIRST: Final = str.maketrans(
    {"‼": "!!", "⁉": "!?", "\r": "\n", "\u2028": "\n", "\u2029": "\n", "\t": " "}
)


def _character_class(chars: set[str]) -> str:
    """A regex class of `chars` as ranges: a class of single characters beyond U+FFFF is
    searched one by one, which made this one a hundred times slower."""
    ranges: list[list[int]] = []
    for code in sorted(map(ord, chars)):
        if ranges and code == ranges[-1][1] + 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return "".join(
        re.escape(chr(low)) + ("" if low == high else "-" + re.escape(chr(high)))
        for low, high in ranges
    )


# Every emoji sequence begins with one of these; the keycap digits and signs only before U+20E3.
_EMOJI_STARTS: Final = _character_class(
    {key[0] for key in emoji.EMOJI_DATA if key[0] not in "#*0123456789"}
)
_EMOJI_JOINERS: Final = "\u200d\u20e3\ufe0f\U000e0020-\U000e007f"
_EMOJI_RUN: Final = re.compile(f"(?:[{_EMOJI_STARTS}]|[#*0-9]\ufe0f?\u20e3|[{_EMOJI_JOINERS}])+")

_INVISIBLE: Final = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f"
    "\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb"
    "\ue000-\uf8ff\U000e0000-\U000e0fff\U000f0000-\U0010ffff]"
)

# Kaomoji. A bracketed one has at least two face marks (eyes, mouth) and no word inside:
# "(^_^)", "(*´ω`*)" are faces, "(笑)", "(Mr. Smith)", "(2^3)" are not.
_FACE_MARKS: Final = frozenset(
    "^＾・･ω∀▽△□◇○●◎≧≦°ﾟ゜ДдεЗ_＿∇⌒´｀`˘ᴗ‿◕•ᵔ◔◡ㅅ益皿ಠ≡;；*＊><＞＜'\"=＝~〜"
)
_LEFT_ARMS: Final = "ヽヾ＼\\\\٩ᕕᕙ⊂ʕ╰┌＜<"
_RIGHT_ARMS: Final = "ノﾉ/／۶وᕗᕤ┘╯ゞっつ⊃ʔ✧彡＞>"
_BRACKETED: Final = re.compile(f"[{_LEFT_ARMS}]*[(（]([^()（）\n]{{1,16}})[)）][{_RIGHT_ARMS}]*")
_EYES: Final = r"[TＴ;；\-><oO0xX^]"
_EYE_MOUTH_EYE: Final = re.compile(rf"\s*{_EYES}\s*[_＿.]\s*{_EYES}\s*[;；]?\s*")
_WORD_PAIR: Final = re.compile(r"[^\W_]{2}")
_BARE_FACES: Final = re.compile(
    r"¯\\_\(ツ\)_/¯"
    r"|\^[_\-.oO・ωー〜~▽]?\^"
    r"|(?<![A-Za-z0-9])(?:[TＴ][_＿][TＴ]|[;；][_＿][;；]|[oO][_＿][oO]|-_-)(?![A-Za-z0-9])"
    r"|[>＞][_＿.\-ω]?[<＜]"
    r"|(?<![\w:/=<>!])[:;=][-^'o]?[)(\]\[DPpO3|\\*]+(?![\w/])"
    r"|(?<![\w<])<3+(?!\d)"
)
_LAUGHTER: Final = re.compile(
    r"(?<![Ａ-Ｚａ-ｚ])[ｗＷ]+(?![Ａ-Ｚａ-ｚ])"
    r"|(?<![A-Za-z])w{2,}(?![A-Za-z.])"
    r"|(?<=[\u3040-\u30ff\u4e00-\u9fff])w+(?![A-Za-z])"
)

# Marks read as their names ("circumflex", "vertical line") or as noise.
_NOISE: Final = str.maketrans({ch: " " for ch in "^`|\\_*＾｀｜＿＊￣"})
# Characters beyond ASCII, kana, CJK and Hangul, whose category is then looked at.
_UNCOMMON: Final = re.compile(
    "[^\x00-\x7f\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7a3\uff00-\uffef]"
)
_ARROWS: Final = re.compile("[\u2190-\u21ff\u27f0-\u27ff\u2900-\u297f\u2b00-\u2bff]")
_KEPT_SYMBOLS: Final = frozenset("°")

_RULE_LINE: Final = re.compile(r"(?m)^[ \t\-=_~*#+・ー―─━.。…]{3,}$")
_HEADING: Final = re.compile(r"(?m)^#{1,6}[ \t]+")
_REPEATED: Final = re.compile(r"([^\w\s])\1+")
_LONG_VOWEL: Final = re.compile("[ーｰ]{3,}")
_SPACES: Final = re.compile(r"[^\S\n]+")
_LINE_BREAKS: Final = re.compile(r" ?\n[\s]*")
_SPEAKABLE: Final = re.compile(r"[^\W_ーｰ々ゝゞヽヾ]")


def normalise(text: str) -> str:
    """`text` cleaned for speech (see the module's steps); NothingToSay when nothing is left."""
    cleaned = text.translate(_MARKS_FIRST)
    cleaned = _EMOJI_RUN.sub(_without_emoji, cleaned)
    cleaned = _INVISIBLE.sub("", cleaned)
    cleaned = _BRACKETED.sub(_without_face, cleaned)
    cleaned = _BARE_FACES.sub(_gap, cleaned)
    cleaned = _LAUGHTER.sub("", cleaned)
    cleaned = _UNCOMMON.sub(_without_pictograph, cleaned.translate(_NOISE))
    cleaned = _HEADING.sub("", _RULE_LINE.sub("", cleaned))
    cleaned = _LONG_VOWEL.sub("ーー", _REPEATED.sub(_collapsed, cleaned))
    cleaned = _LINE_BREAKS.sub("\n", _SPACES.sub(" ", cleaned)).strip()
    if not is_speakable(cleaned):
        raise NothingToSay(
            f"the text {quoted(text)} has nothing to speak: no letter or digit is left once "
            "emoji, kaomoji, symbols and invisible characters are removed"
        )
    return cleaned


def is_speakable(text: str) -> bool:
    """Whether `text` has a letter or digit a voice would say."""
    return _SPEAKABLE.search(text) is not None


def _gap(match: re.Match[str]) -> str:
    """What stands in for removed text: nothing between CJK characters, else a space (so that
    "great:)thanks" does not become one word)."""
    text = match.string
    before = text[match.start() - 1] if match.start() > 0 else " "
    after = text[match.end()] if match.end() < len(text) else " "
    if before.isspace() or after.isspace() or before >= "\u2e80" or after >= "\u2e80":
        return ""
    return " "


def _without_emoji(match: re.Match[str]) -> str:
    rest = emoji.replace_emoji(match.group(), replace="")
    return rest if rest.strip() else _gap(match)


def _without_face(match: re.Match[str]) -> str:
    inside = match.group(1)
    marks = sum(ch in _FACE_MARKS for ch in inside)
    is_face = marks >= 2 or _EYE_MOUTH_EYE.fullmatch(inside) is not None
    if not is_face:
        return match.group()
    words = "".join(" " if ch in _FACE_MARKS else ch for ch in inside)
    if _WORD_PAIR.search(words):
        return match.group()
    return _gap(match)


def _without_pictograph(match: re.Match[str]) -> str:
    ch = match.group()
    if _ARROWS.match(ch):
        return " "
    category = unicodedata.category(ch)
    if category == "Sk" or (category == "So" and ch not in _KEPT_SYMBOLS):
        # Symbols that stand for letters stay: ℃ (°C), ™, №, ㎏, ㍿ (株式会社).
        spelled = unicodedata.normalize("NFKC", ch)
        return ch if spelled != ch and any(c.isalnum() for c in spelled) else " "
    return ch


def _collapsed(match: re.Match[str]) -> str:
    mark = match.group(1)
    if mark in ".・":
        return "…"
    if unicodedata.category(mark) in ("Ps", "Pe", "Pi", "Pf"):
        return match.group()  # brackets and quotes keep their pairs
    return mark
