"""The strength ladder: a refused candidate that learnt is tried milder; the report says what was traded."""

from __future__ import annotations

from training.ladder import climb, trade_off_text
from loop.report import cycle_report
from storage.models import Cycle, CycleStatus
from training.config import EvaluationSettings

SETTINGS = EvaluationSettings(likelihood_tolerance=0.01, noise_z=0.0)
PHRASE = "pet phrase 'i think' per message"
ACTIVE = {"likelihood": 3.70, "edit_distance": 1.30, "attribution": 0.43, "preference_accuracy": None,
          "caricature_flags": [], "habit_rates": {PHRASE: [0.05, 0.13]}}


def version(likelihood: float, attribution: float, phrase_rate: float) -> dict:
    flagged = phrase_rate >= 2 * 0.13
    return {"likelihood": likelihood, "edit_distance": 1.25, "attribution": attribution, "preference_accuracy": None,
            "caricature_flags": [f"{PHRASE}: drafts {phrase_rate:.2f} vs owner 0.13"] if flagged else [],
            "habit_rates": {PHRASE: [phrase_rate, 0.13]}}


FULL = version(3.10, 0.90, 0.32)  # the caricature of issue 16: "i think" at 2.5x the owner's rate


class Recorder:
    """evaluate_at that answers from a table and notes which strengths were asked for."""

    def __init__(self, table: dict[float, dict]):
        self.table, self.asked = table, []

    def __call__(self, strength: float) -> dict:
        self.asked.append(strength)
        return self.table[strength]


def test_a_candidate_that_passes_is_promoted_at_full_strength_without_trying_milder_ones():
    ask = Recorder({})
    verdict = climb(candidate=version(3.1, 0.6, 0.15), active=ACTIVE, settings=SETTINGS,
                    strengths=[0.75, 0.5], evaluate_at=ask)
    assert verdict.promote and verdict.strength == 1.0 and ask.asked == []


def test_the_strongest_milder_version_that_passes_is_promoted_and_weaker_ones_are_not_tried():
    ask = Recorder({0.75: version(3.15, 0.85, 0.27), 0.5: version(3.25, 0.71, 0.17), 0.25: version(3.5, 0.5, 0.1)})
    verdict = climb(candidate=FULL, active=ACTIVE, settings=SETTINGS, strengths=[0.25, 0.5, 0.75], evaluate_at=ask)
    assert ask.asked == [0.75, 0.5]  # strongest first, and it stops at the first that passes
    assert verdict.promote and verdict.strength == 0.5 and not verdict.resumable
    assert verdict.metrics["attribution"] == 0.71
    assert [rung.strength for rung in verdict.rungs] == [1.0, 0.75, 0.5]
    assert "caricature" in verdict.rungs[0].reasons[0]


def test_a_candidate_whose_likelihood_did_not_improve_gets_no_ladder():
    ask = Recorder({})
    verdict = climb(candidate=version(3.80, 0.9, 0.32), active=ACTIVE, settings=SETTINGS, strengths=[0.5],
                    evaluate_at=ask)
    assert not verdict.promote and not verdict.resumable and ask.asked == []


def test_when_no_strength_passes_the_closest_that_learnt_is_kept_to_continue_from():
    # 0.5 fails only on its flag (like full strength) but 0.25 no longer improves the likelihood.
    ask = Recorder({0.5: version(3.3, 0.8, 0.30), 0.25: version(3.695, 0.5, 0.1)})
    verdict = climb(candidate=FULL, active=ACTIVE, settings=SETTINGS, strengths=[0.5, 0.25], evaluate_at=ask)
    assert not verdict.promote and verdict.resumable
    assert verdict.strength == 1.0  # same number of failures as 0.5: the stronger one keeps more training
    assert verdict.to_json()["rungs"][2]["reason"].startswith("held-out likelihood did not improve")


def test_the_trade_off_names_the_habit_that_came_back_and_what_it_cost():
    text = trade_off_text(FULL, version(3.25, 0.71, 0.17), 0.5)
    assert text.startswith("at 50% strength")
    assert "'i think' per message 2.5× → 1.3× your rate" in text
    assert "reads as you 71% instead of 90%" in text


def test_the_report_of_a_milder_promotion_says_so_and_what_was_traded():
    milder = version(3.25, 0.71, 0.17)
    verdict = climb(candidate=FULL, active=ACTIVE, settings=SETTINGS, strengths=[0.5],
                    evaluate_at=Recorder({0.5: milder}))
    cycle = Cycle(id=7, owner_id=1, status=CycleStatus.promoted, trigger="manual", candidate_version=1,
                  active_version_before=0, reason=verdict.reasons[0],
                  metrics={"candidate": milder, "full_strength": FULL, "active": ACTIVE, "base": ACTIVE,
                           "gate": verdict.to_json()})
    text = cycle_report(cycle, SETTINGS)
    assert "Promoted at 50% strength: v1 is now your twin" in text
    assert "Traded at 50% strength" in text and "2.5× → 1.3× your rate" in text


def test_the_report_of_a_kept_but_resumable_candidate_says_the_work_is_kept():
    verdict = climb(candidate=FULL, active=ACTIVE, settings=SETTINGS, strengths=[0.5],
                    evaluate_at=Recorder({0.5: version(3.3, 0.8, 0.30)}))
    cycle = Cycle(id=8, owner_id=1, status=CycleStatus.kept, trigger="manual", candidate_version=2,
                  active_version_before=0, reason=verdict.reasons[0],
                  metrics={"candidate": verdict.metrics, "active": ACTIVE, "gate": verdict.to_json()})
    text = cycle_report(cycle, SETTINGS)
    assert "no strength of the new v2 passed the gate (tried 100%, 50%)" in text
    assert "the next cycle continues from v2" in text


def test_an_unchanged_figure_is_not_listed_as_traded():
    same_attribution = version(3.25, 0.90, 0.17)
    text = trade_off_text(FULL, same_attribution, 0.5)
    assert "reads as you" not in text and "held-out NLL 3.250 instead of 3.100" in text


def test_the_report_says_how_much_of_a_long_history_the_first_cycle_trained_on():
    from loop.report import learnt_from_text

    text = learnt_from_text({"train_writing": 3124, "heldout_writing": 552, "writing_used": 240})
    assert "3124 pieces; this first cycle trained on the newest 240 distinct ones" in text
    assert "Your writing: 24 pieces trained on" in learnt_from_text({"train_writing": 24, "writing_used": 24})
