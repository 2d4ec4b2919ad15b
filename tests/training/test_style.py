"""Style features, profiles, distance, caricature guard, pet phrases, Burrows' Delta and the charts."""

from __future__ import annotations

import json
import math
import random

import pytest

from training.charts import plot_cycle_history, plot_style, style_table_rows
from training.style import (
    FEATURES,
    FeatureStat,
    StyleProfile,
    burrows_delta,
    caricature_flags,
    habit_rates,
    lexical_diversity_windows,
    message_features,
    pet_phrases,
    style_distance,
    style_profile,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lol i dont know haha", {"words": 5, "chars": 20, "laughter": 2, "lower_i": 1.0,
                                  "dropped_apostrophes": 1.0, "lower_start": 1.0, "sentence_words": 5}),
        ("I'm SO happy!!! 😊😊", {"exclamations": 3, "emoji": 2, "caps_words": 1, "lower_i": 0.0,
                                  "dropped_apostrophes": 0.0, "sentiment": 1.0}),
        ("Im fine, i guess. You?", {"lower_i": 0.5, "dropped_apostrophes": 1.0, "commas": 1, "questions": 1,
                                    "lower_start": 0.0, "sentence_words": 2.5}),
        # "..." trails on inside a sentence; "not good" is negated praise.
        ("Well... that's not good. i think", {"ellipses": 1, "lower_start": 0.5, "sentence_words": 3.0,
                                              "sentiment": -1.0, "dropped_apostrophes": 0.0}),
        ("That's great :)", {"emoji": 1, "sentiment": 1.0, "exclamations": 0}),
        ("xD LMAO ahahah", {"laughter": 3, "caps_words": 1}),
        ("the cat and a dog", {"function_words": 0.6, "sentiment": 0.0, "lower_i": None,
                               "dropped_apostrophes": None}),
        ("  hi  ", {"chars": 2, "words": 1}),
        ("😂", {"words": 0, "emoji": 1, "sentence_words": None, "function_words": None}),
        ("sorry, its late and im so tired", {"sentiment": -1.0, "dropped_apostrophes": 1.0, "lower_i": 1.0}),
        ("ha, aha, ahh, eh", {"laughter": 0}),
        ("lolol hehe lmfao kkkk", {"laughter": 4}),
        ("see you at 5", {"sentiment": 0.0, "emoji": 0, "caps_words": 0}),
        ("http://example.com :/ and ok:)", {"emoji": 1}),  # ":/" of a URL is not a face
    ],
)
def test_message_features(text, expected):
    features = message_features(text)
    assert set(features) == set(FEATURES) - {"lexical_diversity"}
    for name, value in expected.items():
        assert features[name] == (None if value is None else pytest.approx(value)), name


def test_lexical_diversity_uses_a_fixed_window():
    distinct = " ".join(f"w{i}" for i in range(120))
    assert set(lexical_diversity_windows([distinct])) == {1.0}
    assert lexical_diversity_windows(["a b " * 60]) == [2 / 50] * 8  # 120 words: windows at 0, 10, ..., 70
    # Length does not change the value: 400 words of a 2-word vocabulary score as 100 do.
    assert lexical_diversity_windows(["a b " * 200])[0] == lexical_diversity_windows(["a b " * 50])[0]
    assert lexical_diversity_windows(["too short to measure"]) == []


def test_profile_stats_and_json_round_trip():
    profile = style_profile(["hi!", "hey!!", "ok", "   "])
    stat = profile.features["exclamations"]
    assert (stat.mean, stat.n) == (1.0, 3)
    assert stat.std == pytest.approx(math.sqrt(2 / 3))
    assert profile.n_texts == 3 and profile.n_words == 3
    assert profile.features["lower_i"].n == 0  # no I-pronoun anywhere: undefined, not zero
    assert profile.features["lexical_diversity"].n == 0
    restored = StyleProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert restored == profile


def test_style_distance_in_units_of_owner_spread():
    owner = StyleProfile(features={"exclamations": FeatureStat(0.5, 0.5, 10), "words": FeatureStat(10, 2, 10),
                                   "emoji": FeatureStat(0, 0, 10), "commas": FeatureStat(1, 0, 10),
                                   "questions": FeatureStat(1, 1, 10), "laughter": FeatureStat(0, 0, 10)})
    drafts = StyleProfile(features={"exclamations": FeatureStat(1.0, 0, 5), "words": FeatureStat(6, 1, 5),
                                    "emoji": FeatureStat(0.5, 0.5, 5), "commas": FeatureStat(1, 0, 5),
                                    "questions": FeatureStat(0, 0, 0), "laughter": FeatureStat(1, 0, 5)})
    distance = style_distance(owner, drafts)
    assert distance["exclamations"] == pytest.approx(1.0)  # the owner's spread, larger than the pooled one
    assert distance["words"] == pytest.approx(-2.0)
    # The owner never varies: the drafts' own spread counts too (pooled), so a habit the drafts
    # show now and then is a finite distance, while one they always show and the owner never is capped.
    assert distance["emoji"] == pytest.approx(0.5 / math.sqrt(0.125))
    assert distance["laughter"] == 10.0
    assert distance["commas"] == 0.0
    assert "questions" not in distance and "sentiment" not in distance  # no drafts data / not measured
    assert distance["overall"] == pytest.approx((1 + 2 + 0.5 / math.sqrt(0.125) + 10 + 0) / 5)
    assert style_distance(owner, StyleProfile(features={})) == {}


OWNER_EXCLAIMS = ["sounds good!", "sure thing"] * 10  # "!" per message: mean 0.5, std 0.5


def test_caricature_flags_exaggerated_exclamations():
    owner = style_profile(OWNER_EXCLAIMS)
    drafts = style_profile(["sounds good!!", "sure thing!!"] * 10, phrases=owner.phrases)
    flags = caricature_flags(owner, drafts)
    assert flags == ["'!' per message: drafts 2.00 vs owner 0.50 (4.0x)"]


def test_habit_rates_carry_the_drafts_spread_so_two_versions_can_be_compared():
    owner = style_profile(OWNER_EXCLAIMS)
    rates = habit_rates(owner, style_profile(["sounds good!!", "sure thing!!"] * 10, phrases=owner.phrases))
    assert rates["'!' per message"] == (2.0, 0.5, 0.0, 20)


def test_no_caricature_when_drafts_match_the_owner():
    owner = style_profile(OWNER_EXCLAIMS)
    assert caricature_flags(owner, style_profile(["sure thing!", "sounds good"] * 10, phrases=owner.phrases)) == []
    assert caricature_flags(owner, style_profile(OWNER_EXCLAIMS, phrases=owner.phrases)) == []
    # Somewhat more, but under twice the owner's rate: not a caricature.
    assert caricature_flags(owner, style_profile(["sure!", "ok!", "fine!", "hm"] * 5)) == []
    # A higher ratio tolerates the doubling.
    drafts = style_profile(["sounds good!!", "sure thing!!"] * 10)
    assert caricature_flags(owner, drafts, ratio=5.0) == []


def test_one_stray_habit_is_noise_a_steady_one_is_flagged():
    owner = style_profile(["sure thing", "sounds good"] * 10)  # never uses "!"
    stray = style_profile(["sure thing!"] + ["sure thing"] * 9 + ["sounds good"] * 10, phrases=owner.phrases)
    assert caricature_flags(owner, stray) == []
    steady = style_profile(["sure thing!", "sounds good"] * 10, phrases=owner.phrases)
    assert caricature_flags(owner, steady) == ["'!' per message: drafts 0.50 vs owner 0.00 (owner never)"]


OWNER_CHAT = [
    "to be honest i dont mind", "sure see you later", "ok cool", "to be honest its fine by me",
    "what time works", "sounds good", "to be honest no idea", "lol ok then", "yeah maybe tomorrow",
    "to be honest i forgot", "nice one", "can you send it",
]
OTHER_CHAT = [
    "Sounds good to me.", "See you tomorrow!", "What time is it?", "I am not sure.", "Can you call me?",
    "That works for me.", "Great, thanks!", "I will be there soon.", "Did you get my email?", "Okay, talk later.",
]


def test_pet_phrases_finds_the_distinctive_phrase_not_its_pieces():
    with_others = pet_phrases(OWNER_CHAT, OTHER_CHAT, top=3)
    assert with_others[0] == "to be honest"
    assert "be honest" not in with_others and "honest" not in with_others
    assert pet_phrases(OWNER_CHAT, top=5) == ["to be honest"]  # nothing else occurs in 3 messages
    assert pet_phrases([], OTHER_CHAT) == []


def test_pet_phrase_overuse_is_a_caricature():
    owner = style_profile(OWNER_CHAT, other_texts=OTHER_CHAT)
    assert owner.phrases["to be honest"].mean == pytest.approx(4 / 12)
    overdone = style_profile(["to be honest " + text for text in OWNER_CHAT if "honest" not in text],
                             phrases=owner.phrases)
    flags = caricature_flags(owner, overdone)
    assert "pet phrase 'to be honest' per message: drafts 1.00 vs owner 0.33 (3.0x)" in flags
    same = style_profile(OWNER_CHAT, phrases=owner.phrases)
    assert caricature_flags(owner, same) == []


def _writer(rng: random.Random, function_words: list[str], n_words: int) -> list[str]:
    """Messages of ten words mixing shared content words with a writer's favourite function words."""
    content = "cat dog house car tree river city music train phone book light window garden".split()
    stream = [rng.choice(function_words if rng.random() < 0.5 else content) for _ in range(n_words)]
    return [" ".join(stream[i:i + 10]) for i in range(0, n_words, 10)]


def test_burrows_delta_separates_writers_and_needs_large_samples():
    rng = random.Random(0)
    a_words = "the of and in to a".split()
    b_words = "i you it that but so".split()
    a1, a2, b = (_writer(rng, a_words, 2500), _writer(rng, a_words, 2500), _writer(rng, b_words, 2500))
    same, different = burrows_delta(a1, a2), burrows_delta(a1, b)
    assert same is not None and different is not None
    assert different > 3 * same
    assert burrows_delta(a1[:50], b) is None  # 500 words is too few
    assert burrows_delta(a1, b[:50]) is None


def _is_png(path) -> bool:
    return path.exists() and path.stat().st_size > 0 and path.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_style_writes_png(tmp_path):
    owner = style_profile(OWNER_CHAT * 5, other_texts=OTHER_CHAT)
    assert _is_png(plot_style(owner, tmp_path / "owner.png"))
    drafts = style_profile(OTHER_CHAT * 5, phrases=owner.phrases)
    path = plot_style(owner, tmp_path / "charts" / "compare.png", compare={"v1": drafts, "v2": owner})
    assert _is_png(path)


def test_plot_cycle_history_with_gaps(tmp_path):
    rows = [
        {"cycle": 1, "edit_distance": 1.6, "likelihood": 3.4, "attribution": 0.4, "attribution_ceiling": 0.8,
         "attribution_floor": 0.3, "edit_distance_empty": 1.0},
        {"cycle": 2, "edit_distance": None, "accept_rate": 0.2, "likelihood": 3.3, "used_edit_distance": 1.1},
        {"cycle": 3, "edit_distance": 1.5, "accept_rate": 0.35, "likelihood": float("nan"), "attribution": 0.55,
         "version": "not a number"},
    ]
    assert _is_png(plot_cycle_history(rows, tmp_path / "history.png"))
    assert _is_png(plot_cycle_history([{"version": 0}], tmp_path / "one.png"))
    assert _is_png(plot_cycle_history([], tmp_path / "empty.png"))


def test_style_table_rows_are_labelled_and_formatted():
    profile = style_profile(["Im fine!", "ok", "to be honest i dont know", "to be honest no", "to be honest yes"])
    rows = dict(style_table_rows(profile))
    assert rows["messages"] == "5"
    assert rows["'!' per message"] == "0.20 ± 0.40"
    assert rows['lower-case "i" among I-pronouns'] == "50% (n=2)"
    assert rows["lexical diversity (type/token, 50-word window)"] == "n/a"
    assert rows["pet phrase 'to be honest'"] == "0.60 per message"
    assert all(label in rows for label in (feature.label for feature in FEATURES.values()))
