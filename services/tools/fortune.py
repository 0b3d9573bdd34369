"""Omikuji: one fortune per user per local day, the same however often they ask."""

from __future__ import annotations

import datetime
import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple

from services.common.language import Language, base_language


class FortuneLevel(enum.IntEnum):
    # The numbers are those of the proto enum chatagent.v1.FortuneLevel; keep them in step.
    DAIKICHI = 1
    CHUKICHI = 2
    SHOKICHI = 3
    KICHI = 4
    SUEKICHI = 5
    KYO = 6


@dataclass(frozen=True, slots=True)
class Fortune:
    level: FortuneLevel
    label: str
    message: str
    lucky_item: str
    date: str


class _Text(NamedTuple):
    ja: str
    en: str
    ko: str

    def in_language(self, language: Language) -> str:
        text: str = getattr(self, language)
        return text


# Out of 100. The best and the worst draws are the rarest, as at a shrine.
_WEIGHTS: Final[tuple[tuple[FortuneLevel, int], ...]] = (
    (FortuneLevel.DAIKICHI, 12),
    (FortuneLevel.CHUKICHI, 18),
    (FortuneLevel.SHOKICHI, 20),
    (FortuneLevel.KICHI, 22),
    (FortuneLevel.SUEKICHI, 18),
    (FortuneLevel.KYO, 10),
)
_TOTAL_WEIGHT: Final = sum(weight for _, weight in _WEIGHTS)

_LABELS: Final[Mapping[FortuneLevel, _Text]] = {
    FortuneLevel.DAIKICHI: _Text("大吉", "Great blessing", "대길"),
    FortuneLevel.CHUKICHI: _Text("中吉", "Middle blessing", "중길"),
    FortuneLevel.SHOKICHI: _Text("小吉", "Small blessing", "소길"),
    FortuneLevel.KICHI: _Text("吉", "Blessing", "길"),
    FortuneLevel.SUEKICHI: _Text("末吉", "Future blessing", "말길"),
    FortuneLevel.KYO: _Text("凶", "Curse", "흉"),
}

# The Japanese lines stop short of 「にゃん」: the persona adds it to the whole reply, and a
# message that already ended in it would make the reply say it twice.
_MESSAGES: Final[Mapping[FortuneLevel, tuple[_Text, ...]]] = {
    FortuneLevel.DAIKICHI: (
        _Text(
            "何をやってもうまくいく日。思い切って新しいことに挑戦してみて。",
            "Everything you touch goes well today. Be bold and try something new.",
            "무엇을 해도 잘 풀리는 날이에요. 과감하게 새로운 일에 도전해 보세요.",
        ),
        _Text(
            "陽だまりのような幸運が一日じゅう続きそう。笑顔を分けると、もっと増えるよ。",
            "Luck like a sunny windowsill stays with you all day. Share your smile and it grows.",
            "햇살 같은 행운이 하루 종일 함께해요. 미소를 나누면 행운이 더 커져요.",
        ),
        _Text(
            "願いごとが叶いやすい日。ずっと言えなかったことを伝えてみよう。",
            "A day when wishes come true. Say the thing you have been holding back.",
            "소원이 이루어지기 쉬운 날이에요. 그동안 못 했던 말을 전해 보세요.",
        ),
    ),
    FortuneLevel.CHUKICHI: (
        _Text(
            "努力が実を結ぶ日。今日の頑張りは、ちゃんと誰かが見てくれているよ。",
            "Your effort pays off today. Someone notices how hard you work.",
            "노력이 결실을 맺는 날이에요. 오늘의 노력을 누군가 알아봐 줄 거예요.",
        ),
        _Text(
            "人との縁に恵まれる日。久しぶりの友だちに連絡してみて。",
            "A good day for friendships. Get in touch with someone you have not seen in a while.",
            "인연 복이 있는 날이에요. 오랜만에 친구에게 연락해 보세요.",
        ),
        _Text(
            "ひらめきが冴える日。思いついたことは、すぐにメモしておこう。",
            "Your ideas are sharp today. Write them down as soon as they come.",
            "영감이 번뜩이는 날이에요. 떠오른 생각은 바로 적어 두세요.",
        ),
    ),
    FortuneLevel.SHOKICHI: (
        _Text(
            "小さな幸せがたくさん見つかる日。おやつが少しだけおいしく感じるかも。",
            "A day full of small joys. Even your snack may taste a little better.",
            "작은 행복을 많이 발견하는 날이에요. 간식이 조금 더 맛있게 느껴질지도 몰라요.",
        ),
        _Text(
            "焦らず一歩ずつ進めば大丈夫。午後から運気が上がりそう。",
            "Take it one step at a time and all will be well. Luck picks up in the afternoon.",
            "서두르지 말고 한 걸음씩 나아가면 괜찮아요. 오후부터 운이 좋아질 거예요.",
        ),
        _Text(
            "丁寧なあいさつが良い流れを呼ぶ日。まずは元気に「おはよう」から。",
            "A warm greeting starts a good run today. Begin with a cheerful good morning.",
            "정중한 인사가 좋은 흐름을 부르는 날이에요. 밝은 아침 인사부터 시작해 보세요.",
        ),
    ),
    FortuneLevel.KICHI: (
        _Text(
            "穏やかで安定した一日。いつものペースを大切にね。",
            "A calm, steady day. Keep to your usual pace.",
            "평온하고 안정된 하루예요. 평소의 페이스를 지켜 보세요.",
        ),
        _Text(
            "片付けをすると運気が上がる日。まずは机の上から始めてみよう。",
            "Tidying up brings luck today. Start with your desk.",
            "정리정돈을 하면 운이 트이는 날이에요. 책상 위부터 시작해 보세요.",
        ),
        _Text(
            "誰かを手助けすると、自分にも幸せが返ってくる日。小さな親切を忘れずに。",
            "Help you give today comes back to you. Remember the small kindnesses.",
            "누군가를 도우면 그 마음이 돌아오는 날이에요. 작은 친절을 잊지 마세요.",
        ),
    ),
    FortuneLevel.SUEKICHI: (
        _Text(
            "今はつぼみの時期。あとで大きな花が咲くから、気長に待とう。",
            "You are a bud for now. The big bloom comes later, so be patient.",
            "지금은 꽃봉오리의 시기예요. 나중에 큰 꽃이 피니 느긋하게 기다려 보세요.",
        ),
        _Text(
            "午前中はのんびり過ごして。夕方からツキが回ってくるよ。",
            "Take the morning slowly; your luck comes round by the evening.",
            "오전은 느긋하게 보내세요. 저녁부터 운이 돌아올 거예요.",
        ),
        _Text(
            "迷ったら、ひと眠りしてから決めるといい日。よく休んでね。",
            "If you are unsure, sleep on it before you decide. Rest well.",
            "망설여지면 한숨 자고 나서 결정하세요. 푹 쉬는 것이 좋아요.",
        ),
    ),
    FortuneLevel.KYO: (
        _Text(
            "足元に気をつけて、ゆっくり動こう。慎重さが身を守ってくれる日。",
            "Watch your step and move slowly. Care keeps you safe today.",
            "발밑을 조심하고 천천히 움직이세요. 신중함이 당신을 지켜 줄 거예요.",
        ),
        _Text(
            "無理は禁物。早めに寝れば、明日はきっと良くなるよ。",
            "Do not push yourself. Go to bed early and tomorrow will be better.",
            "무리는 금물이에요. 일찍 자면 내일은 분명 더 좋아질 거예요.",
        ),
        _Text(
            "言葉選びに気をつけたい日。ひと呼吸おいてから話すといいよ。",
            "Choose your words with care today. Take a breath before you speak.",
            "말을 조심해야 하는 날이에요. 한 번 숨을 고르고 나서 말해 보세요.",
        ),
    ),
}

_LUCKY_ITEMS: Final[tuple[_Text, ...]] = (
    _Text("小さな鈴", "a little bell", "작은 방울"),
    _Text("毛糸玉", "a ball of yarn", "털실 뭉치"),
    _Text("日なたの座布団", "a cushion in the sun", "햇볕 드는 방석"),
    _Text("焼き魚", "grilled fish", "생선구이"),
    _Text("段ボール箱", "a cardboard box", "종이 상자"),
    _Text("青いハンカチ", "a blue handkerchief", "파란 손수건"),
    _Text("温かいお茶", "a cup of hot tea", "따뜻한 차 한 잔"),
    _Text("猫じゃらし", "a foxtail grass stem", "강아지풀"),
    _Text("新しいノート", "a new notebook", "새 노트"),
    _Text("丸いクッキー", "a round cookie", "동그란 쿠키"),
    _Text("黄色い傘", "a yellow umbrella", "노란 우산"),
    _Text("小さな観葉植物", "a small potted plant", "작은 화분"),
    _Text("古い写真", "an old photograph", "옛날 사진"),
)


def draw_fortune(*, user_id: str, local_date: datetime.date, language: str) -> Fortune:
    """The user's fortune for `local_date`, in `language` (BCP-47; default Japanese).

    The draw depends only on the user and the date, so asking again, or in another language,
    gives the same fortune.
    """
    if isinstance(local_date, datetime.datetime):
        local_date = local_date.date()
    lang = base_language(language, default="ja")
    day = local_date.isoformat()
    # The date has a fixed width, so no user id can make two (date, user) pairs hash alike.
    digest = hashlib.sha256(f"omikuji/v1|{day}|{user_id}".encode("utf-8", "surrogatepass")).digest()
    level = _pick_level(int.from_bytes(digest[0:8], "big") % _TOTAL_WEIGHT)
    messages = _MESSAGES[level]
    message = messages[int.from_bytes(digest[8:16], "big") % len(messages)]
    item = _LUCKY_ITEMS[int.from_bytes(digest[16:24], "big") % len(_LUCKY_ITEMS)]
    return Fortune(
        level=level,
        label=_LABELS[level].in_language(lang),
        message=message.in_language(lang),
        lucky_item=item.in_language(lang),
        date=day,
    )


def _pick_level(roll: int) -> FortuneLevel:
    for level, weight in _WEIGHTS:
        if roll < weight:
            return level
        roll -= weight
    raise AssertionError("roll out of range")  # pragma: no cover - roll < _TOTAL_WEIGHT
