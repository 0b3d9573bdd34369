"""What the cat says, in each language: the sentences of a reply before they are finished.

A phrase has no final punctuation and no ending (にゃん): composition adds them, so the persona's
ending is always the reply's last word.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from services.common.language import Language

# How a sentence ends: the mark it takes in the middle of a reply and at its end.
Kind = Literal["statement", "sorry", "exclaim", "question", "raw"]


@dataclass(frozen=True, slots=True)
class Phrases:
    greeting: str
    greeting_morning: str
    greeting_evening: str
    help: tuple[str, str]
    small_talk: tuple[str, ...]
    offer: str
    ask_place: str
    ask_expression: str
    time_here: str
    time_place: str
    weather: str
    rain_hint: str
    fortune: str
    lucky_item: str
    calculation: str
    big_number: str
    no_place: str
    time_down: str
    weather_down: str
    weather_down_place: str
    fortune_down: str
    calculation_down: str
    bad_expression: str
    division_by_zero: str
    weekdays: dict[str, str]
    openers: dict[str, tuple[str, Kind]]


_JA: Final = Phrases(
    greeting="こんにちは",
    greeting_morning="おはよう",
    greeting_evening="こんばんは",
    help=(
        "今の時間、世界の天気、今日の運勢（おみくじ）、計算ができる",
        "「東京の天気は？」みたいに聞いて",
    ),
    small_talk=(
        "お話ししてくれてうれしい",
        "なるほど、もっと聞かせて",
        "ふむふむ、そうなんだ",
    ),
    offer="時間や天気、運勢、計算なら任せて",
    ask_place="どこの天気が知りたい",
    ask_expression="何を計算する",
    time_here="今は{time}{weekday}だ",
    time_place="{place}は今{time}{weekday}だ",
    weather="{place}は{details}だ",
    rain_hint="傘を忘れないで",
    fortune="今日の運勢は{label}だ",
    lucky_item="ラッキーアイテムは{item}だ",
    calculation="{expression}の答えは{result}だ",
    big_number="{head}…（{digits}桁）",
    no_place="「{place}」という場所が見つからない",
    time_down="時間は今わからない",
    weather_down="天気は今わからない",
    weather_down_place="{place}の天気は今わからない",
    fortune_down="おみくじは今ひけない",
    calculation_down="今は計算できない",
    bad_expression="{expression}は計算できない",
    division_by_zero="0で割ることはできない",
    weekdays=dict(
        zip(
            ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
            ("月曜日", "火曜日", "水曜日", "木曜日", "金曜日", "土曜日", "日曜日"),
            strict=True,
        )
    ),
    openers={
        "sadness": ("よしよし、元気出して", "statement"),
        "fear": ("大丈夫、そばにいる", "statement"),
        "anger": ("まあまあ、落ち着いて", "statement"),
        "shame": ("気にしなくて大丈夫", "statement"),
        "dislike": ("それはいやだったね", "statement"),
        "joy": ("うれしそうでぼくもうれしい", "statement"),
        "like": ("いいね", "exclaim"),
        "excitement": ("わくわくするね", "exclaim"),
        "surprise": ("おっ、びっくり", "exclaim"),
        "relief": ("ほっとしたね", "statement"),
    },
)

_EN: Final = Phrases(
    greeting="Hello",
    greeting_morning="Good morning",
    greeting_evening="Good evening",
    help=(
        "I can tell the time anywhere, check the weather, draw your omikuji and do math",
        'Try "weather in Paris"',
    ),
    small_talk=(
        "Thanks for chatting with me",
        "I see, tell me more",
        "Mm-hm, I'm all ears",
    ),
    offer="Ask me about the time, the weather, your fortune or a calculation",
    ask_place="Which city's weather would you like",
    ask_expression="What should I calculate",
    time_here="It's {time}{weekday} where you are",
    time_place="It's {time}{weekday} in {place}",
    weather="In {place} it's {details}",
    rain_hint="Don't forget an umbrella",
    fortune="Today's omikuji says {label}",
    lucky_item="Your lucky item is {item}",
    calculation="{expression} is {result}",
    big_number="{head}… ({digits} digits)",
    no_place='I couldn\'t find a place called "{place}"',
    time_down="I can't check the time right now",
    weather_down="I can't check the weather right now",
    weather_down_place="I can't check the weather in {place} right now",
    fortune_down="I can't draw your omikuji right now",
    calculation_down="I can't calculate right now",
    bad_expression="I can't calculate {expression}",
    division_by_zero="Dividing by zero is undefined",
    weekdays={},
    openers={
        "sadness": ("Aw, I'm here for you", "statement"),
        "fear": ("It's okay, I'm right here", "statement"),
        "anger": ("Easy now, take a deep breath", "statement"),
        "shame": ("No need to feel shy", "statement"),
        "dislike": ("That sounds unpleasant", "statement"),
        "joy": ("You sound happy, and that makes me happy too", "statement"),
        "like": ("Nice", "exclaim"),
        "excitement": ("How exciting", "exclaim"),
        "surprise": ("Oh, what a surprise", "exclaim"),
        "relief": ("What a relief", "exclaim"),
    },
)

_KO: Final = Phrases(
    greeting="안녕",
    greeting_morning="좋은 아침",
    greeting_evening="안녕",
    help=(
        "지금 시간, 세계 날씨, 오늘의 운세(오미쿠지), 계산을 할 수 있다",
        '"서울 날씨 어때?"처럼 물어봐',
    ),
    small_talk=(
        "이야기해 줘서 기쁘다",
        "그렇구나, 더 들려줘",
        "음음, 그랬구나",
    ),
    offer="시간, 날씨, 운세, 계산은 나한테 맡겨",
    ask_place="어느 도시의 날씨가 궁금해",
    ask_expression="무엇을 계산할까",
    time_here="지금은 {time}{weekday}이다",
    time_place="{place}의 현재 시각은 {time}{weekday}이다",
    weather="{place}의 날씨는 {details}",
    rain_hint="우산 챙겨",
    fortune="오늘의 운세는 {label}",
    lucky_item="행운의 아이템은 {item}",
    calculation="{expression}의 답은 {result}",
    big_number="{head}…({digits}자리)",
    no_place="'{place}' 장소를 찾지 못했다",
    time_down="지금은 시간을 알 수 없다",
    weather_down="지금은 날씨를 알 수 없다",
    weather_down_place="지금은 {place}의 날씨를 알 수 없다",
    fortune_down="지금은 운세를 볼 수 없다",
    calculation_down="지금은 계산할 수 없다",
    bad_expression="그 식({expression})은 계산할 수 없다",
    division_by_zero="0으로 나눌 수 없다",
    weekdays=dict(
        zip(
            ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
            ("월요일", "화요일", "수요일", "목요일", "금요일", "토요일", "일요일"),
            strict=True,
        )
    ),
    openers={
        "sadness": ("토닥토닥, 힘내", "statement"),
        "fear": ("괜찮아, 옆에 있을게", "statement"),
        "anger": ("진정해, 천천히 하자", "statement"),
        "shame": ("부끄러워하지 마", "statement"),
        "dislike": ("그건 싫었겠다", "statement"),
        "joy": ("기분 좋아 보여서 나도 좋다", "statement"),
        "like": ("좋다", "exclaim"),
        "excitement": ("신난다", "exclaim"),
        "surprise": ("어머, 깜짝이야", "exclaim"),
        "relief": ("다행이다", "statement"),
    },
)

PHRASES: Final[dict[Language, Phrases]] = {"ja": _JA, "en": _EN, "ko": _KO}
