"""The one chunker (training.chunking) under measures other than characters; the character case is
tested through the importers (tests/loop/test_import_text_jsonl.py, test_import_limits.py)."""

from __future__ import annotations

from training.chunking import chunk_text


def words(text: str) -> int:
    return len(text.split())


def utf8_bytes(text: str) -> int:
    return len(text.encode())


def test_the_sentences_of_a_long_paragraph_are_joined_by_a_space_not_a_blank_line() -> None:
    chunks = chunk_text("a b. c d. e f g h.\n\ni j.", limit=6, measure=words)
    assert chunks == ["a b. c d.", "e f g h.\n\ni j."]


def test_a_word_longer_than_the_limit_is_cut_within_it_by_the_measure() -> None:
    assert chunk_text("é" * 25, limit=10, measure=utf8_bytes) == ["é" * 5] * 5
    chunks = chunk_text("short " + "ü" * 40 + " end", limit=30, measure=utf8_bytes)
    assert all(utf8_bytes(c) <= 30 for c in chunks)
    assert "".join(chunks).replace(" ", "") == "short" + "ü" * 40 + "end"


def test_a_cut_between_words_never_splits_a_word_that_fits() -> None:
    text = " ".join(f"word{i:02d}" for i in range(40))  # one sentence, 40 words
    chunks = chunk_text(text, limit=64, measure=utf8_bytes)
    assert all(utf8_bytes(c) <= 64 for c in chunks)
    assert " ".join(chunks).split() == text.split()
