"""The attribution classifier separates two synthetic writers with different habits."""

from __future__ import annotations

import random

import pytest

from training.attribution import AttributionClassifier, NotEnoughData, attribution_report, holdout_split

TOPICS = ["the movie", "dinner", "the train", "work", "the game", "your sister", "the party", "that book",
          "the weather", "my phone", "the concert", "lunch"]


def owner_line(rng: random.Random) -> str:
    """Lower case, no apostrophes, "u", laughter, no final punctuation."""
    topic = rng.choice(TOPICS)
    return rng.choice([
        f"lol yeah {topic} was ok i guess",
        f"haha i dont know about {topic}",
        f"im not sure u know, {topic} tho",
        f"ya {topic} is fine lol",
        f"thats so funny haha {topic}",
        f"idk {topic} maybe later",
        f"cant do {topic} today sry",
    ])


def other_line(rng: random.Random) -> str:
    """Capitalised, apostrophes, full stops and exclamation marks."""
    topic = rng.choice(TOPICS)
    return rng.choice([
        f"Did you see {topic}? I'm curious.",
        f"I don't think {topic} is a good idea!",
        f"Sure, let's talk about {topic} tomorrow.",
        f"What about {topic}? It's up to you!",
        f"Thanks! {topic.capitalize()} sounds great.",
        f"I can't wait for {topic}!",
        f"Honestly, {topic} was wonderful.",
    ])


@pytest.fixture(scope="module")
def writers():
    rng = random.Random(7)
    owner = [owner_line(rng) for _ in range(80)]
    other = [other_line(rng) for _ in range(80)]
    owner_train, owner_heldout = holdout_split(owner, fraction=0.25, seed=1)
    other_train, other_heldout = holdout_split(other, fraction=0.25, seed=1)
    classifier = AttributionClassifier().fit(owner_train, other_train, seed=0)
    return classifier, owner_heldout, other_heldout


def test_separates_two_writers_clearly_above_chance(writers):
    classifier, owner_heldout, other_heldout = writers
    assert classifier.score(owner_heldout) >= 0.9
    assert classifier.score(other_heldout) <= 0.1
    probabilities = classifier.predict_proba(owner_heldout + other_heldout)
    assert len(probabilities) == len(owner_heldout) + len(other_heldout)
    assert all(0.0 <= p <= 1.0 for p in probabilities)


def test_report_has_score_ceiling_and_floor(writers):
    classifier, owner_heldout, other_heldout = writers
    rng = random.Random(3)
    # Drafts that half imitate the owner land between floor and ceiling.
    drafts = [owner_line(rng) for _ in range(10)] + [other_line(rng) for _ in range(10)]
    report = attribution_report(classifier, drafts, owner_heldout, other_heldout)
    assert report["ceiling"] >= 0.9 and report["floor"] <= 0.1
    assert 0.3 <= report["score"] <= 0.7
    assert report["n_drafts"] == 20
    empty = attribution_report(classifier, ["", "  "], owner_heldout, [])
    assert empty["score"] is None and empty["floor"] is None and empty["n_drafts"] == 0


def test_case_is_a_feature():
    # The only difference is the capital "I"; lower-casing the input would erase it.
    owner = [f"i think {t} i guess" for t in TOPICS]
    other = [f"I think {t} I guess" for t in TOPICS]
    classifier = AttributionClassifier().fit(owner, other)
    assert classifier.score(["i think the bus i guess"]) == 1.0
    assert classifier.score(["I think the bus I guess"]) == 0.0


def test_draft_verdicts_keep_each_drafts_place_and_leave_empty_ones_unjudged():
    owner = [f"i think {t} i guess" for t in TOPICS]
    other = [f"I think {t} I guess" for t in TOPICS]
    classifier = AttributionClassifier().fit(owner, other)
    drafts = ["I think the bus I guess", "", "i think the bus i guess", "   "]
    assert classifier.draft_verdicts(drafts) == [0.0, None, 1.0, None]
    assert classifier.draft_verdicts(["", " "]) == [None, None]


def test_not_enough_data():
    with pytest.raises(NotEnoughData, match="owner"):
        AttributionClassifier().fit(["a", "b", "c", "d", "  "], ["x"] * 10)
    with pytest.raises(NotEnoughData, match="other people"):
        AttributionClassifier().fit(["a"] * 10, ["x", "y"])
    with pytest.raises(NotEnoughData):
        AttributionClassifier().score(["untrained"])
    classifier = AttributionClassifier().fit(["lol ok"] * 5, ["Fine."] * 5)
    with pytest.raises(NotEnoughData):
        classifier.score([])


def test_save_and_load_round_trip(writers, tmp_path):
    classifier, owner_heldout, other_heldout = writers
    path = classifier.save(tmp_path / "models" / "attribution.joblib")
    loaded = AttributionClassifier.load(path)
    texts = owner_heldout + other_heldout
    assert loaded.predict_proba(texts) == classifier.predict_proba(texts)
    assert loaded.counts == classifier.counts == {"owner": 60, "other": 60}
    assert [p.name for p in path.parent.iterdir()] == ["attribution.joblib"]  # no temporary left behind


def test_load_rejects_other_files(tmp_path):
    import joblib

    joblib.dump({"something": "else"}, tmp_path / "other.joblib")
    with pytest.raises(ValueError, match="not an attribution classifier"):
        AttributionClassifier.load(tmp_path / "other.joblib")


def test_holdout_split_is_seeded_and_disjoint():
    texts = [f"message {i}" for i in range(20)] + ["", "  "]
    train, heldout = holdout_split(texts, fraction=0.25, seed=5)
    assert len(heldout) == 5 and len(train) == 15
    assert sorted(train + heldout) == sorted(f"message {i}" for i in range(20))
    assert holdout_split(texts, fraction=0.25, seed=5) == (train, heldout)
    assert holdout_split(["only"], fraction=0.5) == (["only"], [])
    assert len(holdout_split(["a", "b"], fraction=0.01)[1]) == 1  # at least one held out
