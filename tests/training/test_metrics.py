"""Edit distance: hand-computed examples, the two baselines, and properties checked by hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.metrics import (
    MAX_EDIT_DISTANCE,
    edit_distance,
    edit_distance_baselines,
    levenshtein,
    mean_edit_distance,
    tokens,
    words,
)


def test_tokens_are_words_and_punctuation_runs_with_case_kept():
    assert tokens("Hey, I don't know... 😂😂 ok!!") == ["Hey", ",", "I", "don't", "know", "...", "😂😂", "ok", "!!"]
    assert tokens("it’s fine :)") == ["it’s", "fine", ":)"]
    assert tokens("   \n ") == []
    assert words("Hey, I don't know... ok!!") == ["Hey", "I", "don't", "know", "ok"]


@pytest.mark.parametrize(
    ("draft", "kept", "expected"),
    [
        ("see you at 5", "see you at 5", 0.0),
        ("", "see you at 5", 1.0),  # every kept token inserted
        ("hello there", "hello there.", 1 / 3),  # one missing full stop, not a whole word
        ("I dont know", "i dont know", 1 / 3),  # case counts: the owner changed it
        ("yes", "no thanks", 1.0),  # one substitution and one insertion over two tokens
        ("sure, see you tomorrow", "sure see you", 2 / 3),  # "," and "tomorrow" deleted
        ("one two three four five six seven", "ok", 3.0),  # 7 edits over 1 token, capped
        ("", "", 0.0),
        ("ok", "", 1.0),  # an empty kept text divides by one
        ("a b c d", "", 3.0),
    ],
)
def test_edit_distance_examples(draft, kept, expected):
    assert edit_distance(draft, kept) == pytest.approx(expected)


def test_levenshtein_counts_insertions_deletions_substitutions():
    assert levenshtein(list("kitten"), list("sitting")) == 3
    assert levenshtein([], ["a", "b"]) == 2
    assert levenshtein(["a", "b"], []) == 2
    assert levenshtein(["a", "b", "c"], ["a", "c"]) == 1


def test_mean_edit_distance():
    assert mean_edit_distance([]) is None
    assert mean_edit_distance([("ok", "ok"), ("", "fine thanks")]) == pytest.approx(0.5)
    assert mean_edit_distance(iter([("a b", "a c")])) == pytest.approx(0.5)


def test_baselines_empty_and_echo():
    items = [
        ("how are you?", "good thanks"),  # echo: 4 tokens vs 2, no overlap -> 4 / 2 = 2.0
        ("are you coming tonight?", "yes are you?"),  # echo "are you coming tonight ?" -> "yes are you ?": 3 / 4
    ]
    baselines = edit_distance_baselines(items)
    assert baselines["empty"] == pytest.approx(1.0)
    assert baselines["echo"] == pytest.approx((2.0 + 0.75) / 2)
    assert edit_distance_baselines([]) == {}


texts = st.text(alphabet=st.sampled_from(list("abc AB.,!'😂")), max_size=40)


@settings(max_examples=200, deadline=None)
@given(texts)
def test_identical_texts_score_zero(text):
    assert edit_distance(text, text) == 0.0


@settings(max_examples=200, deadline=None)
@given(texts)
def test_empty_draft_scores_one(kept):
    expected = 1.0 if tokens(kept) else 0.0
    assert edit_distance("", kept) == expected


@settings(max_examples=300, deadline=None)
@given(texts, texts)
def test_bounds_and_cap(draft, kept):
    d, k = len(tokens(draft)), len(tokens(kept))
    score = edit_distance(draft, kept)
    assert 0.0 <= score <= MAX_EDIT_DISTANCE
    # Levenshtein lies between the length difference and the longer length.
    assert score >= min(abs(d - k) / max(k, 1), MAX_EDIT_DISTANCE) - 1e-12
    assert score <= min(max(d, k) / max(k, 1), MAX_EDIT_DISTANCE) + 1e-12
    assert (score == 0.0) == (tokens(draft) == tokens(kept))


@settings(max_examples=200, deadline=None)
@given(texts, texts, texts)
def test_levenshtein_is_a_metric(a, b, c):
    ta, tb, tc = tokens(a), tokens(b), tokens(c)
    assert levenshtein(ta, tb) == levenshtein(tb, ta)
    assert levenshtein(ta, tc) <= levenshtein(ta, tb) + levenshtein(tb, tc)
