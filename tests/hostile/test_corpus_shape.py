"""The corpus itself: big enough, every category the issue names, ids unique, entries grouped by
category (the health check after a category runs after its last entry)."""

from __future__ import annotations

from tests.hostile import corpus


def test_the_corpus_is_whole() -> None:
    assert corpus.problems(corpus.load()) == []


def test_each_category_is_one_block() -> None:
    order = [entry["category"] for entry in corpus.load()]
    blocks = [c for i, c in enumerate(order) if i == 0 or order[i - 1] != c]
    assert len(blocks) == len(set(blocks)), blocks


def test_the_shape_check_finds_what_is_wrong() -> None:
    entry = {"id": "x", "category": "bidi", "target": "turn", "expect": {"status": "NOPE"}}
    found = corpus.problems([entry, dict(entry)])
    assert any("at least 150" in p for p in found)
    assert any("repeated ids" in p for p in found)
    assert any("categories without entries" in p for p in found)
    assert any("not a gRPC status name" in p for p in found)
