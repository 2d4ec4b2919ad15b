"""The LambdaG judge: the second, independent "reads as the owner?" beside the n-gram classifier."""

from __future__ import annotations

import math
import random

import pytest

from training.attribution import NotEnoughData, attribution_report, holdout_split
from training.lambdag_judge import LambdaGJudge, group_documents, lambdag_method


def author(habits: dict[str, list[str]], n: int, seed: int) -> list[str]:
    """Lines of a synthetic author: one opener, filler, one closer, each drawn from the author's habits."""
    rng = random.Random(seed)
    return [" ".join([rng.choice(habits["open"]), *rng.sample(habits["words"], 3), rng.choice(habits["close"])])
            for _ in range(n)]


CASUAL = {"open": ["lol", "omg", "ya", "haha"], "words": ["gonna", "kinda", "u", "ur", "tbh", "rn", "idk", "wanna"],
          "close": ["~", "lol", ":)", "xx"]}
FORMAL = {"open": ["Indeed,", "Certainly,", "However,", "Regrettably,"],
          "words": ["the", "committee", "shall", "consider", "proposal", "therefore", "regarding", "matter"],
          "close": ["thereafter.", "accordingly.", "in due course.", "as agreed."]}


def test_it_separates_two_authors_with_different_habits() -> None:
    owner_train, owner_held = holdout_split(author(CASUAL, 120, seed=1), seed=0)
    other_train, other_held = holdout_split(author(FORMAL, 120, seed=2), seed=0)
    judge = LambdaGJudge().fit(owner_train, other_train, seed=0)
    report = attribution_report(judge, [], owner_held, other_held)
    assert report["ceiling"] >= 0.9 and report["floor"] <= 0.1
    assert judge.score(author(CASUAL, 12, seed=7)) > judge.score(author(FORMAL, 12, seed=8))
    assert all(0 <= p <= 1 for p in judge.predict_proba(judge.documents(owner_held + other_held)))


def test_its_lambda_is_the_librarys_for_one_problem() -> None:
    # The judge fits the owner's and the reference models once instead of once per document; with the
    # same seed its λ for a document is LambdaGMethod.lambdag's for that one problem.
    owner, other = author(CASUAL, 30, seed=3), author(FORMAL, 40, seed=4)
    document = "lol u gonna be there tbh ~\nCertainly, the matter shall wait."
    judge = LambdaGJudge().fit(owner, other, seed=5)
    library = lambdag_method(seed=5).lambdag([("\n".join(owner), "owner", document, "unknown")],
                                             {"owner": owner, "others": other})
    assert judge.lambdas([document]) == [pytest.approx(float(library[0]))]


def test_fitting_is_seeded_and_the_owners_model_is_capped_at_the_references() -> None:
    owner, other = author(CASUAL, 60, seed=1), author(FORMAL, 8, seed=2)
    first, second = LambdaGJudge().fit(owner, other, seed=3), LambdaGJudge().fit(owner, other, seed=3)
    documents = first.documents(author(CASUAL, 10, seed=9))
    assert first.lambdas(documents) == second.lambdas(documents)
    # Reference models are fitted on as many of the others' sentences as the owner's model has.
    assert first.counts["owner_sentences"] == first.counts["reference_sentences"] < 60
    capped = LambdaGJudge(max_sentences=10).fit(owner, author(FORMAL, 60, seed=2), seed=3)
    assert capped.counts["owner_sentences"] == 10


def test_short_lines_are_judged_in_documents_of_at_least_the_minimum_words() -> None:
    lines = ["a b c", "d e f g", "h", "i j k l m n", "o p"]  # 3, 4, 1, 6, 2 words
    assert group_documents(lines, min_words=7) == ["a b c\nd e f g", "h\ni j k l m n\no p"]  # the 2-word rest joins
    assert group_documents(lines, min_words=4) == ["a b c\nd e f g", "h\ni j k l m n", "o p"]  # half: its own
    assert group_documents(["one long reply " * 10, "", "  "]) == [("one long reply " * 10).strip()]
    assert group_documents(["hi"]) == ["hi"] and group_documents([]) == []


def test_too_few_lines_or_nothing_to_judge_is_said_and_a_pad_token_is_only_a_word() -> None:
    with pytest.raises(NotEnoughData, match="at least 5 messages of the owner"):
        LambdaGJudge().fit(["lol", "ya", " "], author(FORMAL, 10, seed=1))
    with pytest.raises(NotEnoughData, match="not been fitted"):
        LambdaGJudge().predict_proba(["lol"])
    judge = LambdaGJudge().fit(author(CASUAL, 20, seed=1) + ["lol <s> ~"], author(FORMAL, 20, seed=2))
    with pytest.raises(NotEnoughData, match="no texts"):
        judge.score(["", " "])
    # The language models' own start pad has probability 0: as a word in a draft it must not make λ NaN.
    assert all(math.isfinite(value) for value in judge.lambdas(["ya <s> gonna ~", "<s>"]))
