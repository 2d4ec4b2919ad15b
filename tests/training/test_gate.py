"""The promotion gate: each criterion can refuse, and the reasons name the tolerances."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from training.gate import gate, gate_rule_text
from training.config import EvaluationSettings

SETTINGS = EvaluationSettings(likelihood_tolerance=0.01, edit_distance_tolerance=0.05,
                              attribution_tolerance=0.05, preference_tolerance=0.05)


def metrics(**overrides):
    base = {"likelihood": 3.0, "edit_distance": 1.2, "attribution": {"score": 0.5, "ceiling": 0.8, "floor": 0.3},
            "preference_accuracy": 0.6, "caricature_flags": []}
    base.update(overrides)
    return base


def test_a_better_candidate_is_promoted():
    promote, reasons = gate(metrics(likelihood=2.9), metrics(), SETTINGS)
    assert promote
    assert "likelihood improved" in reasons[0] and "0.01" in reasons[0]


def test_likelihood_must_improve_beyond_the_tolerance():
    promote, reasons = gate(metrics(likelihood=2.995), metrics(), SETTINGS)
    assert not promote
    assert "did not improve enough" in reasons[0]
    assert "3.000 → 2.995" in reasons[0] and "0.01" in reasons[0]


def test_worse_edit_distance_beyond_tolerance_refuses():
    promote, reasons = gate(metrics(likelihood=2.5, edit_distance=1.3), metrics(), SETTINGS)
    assert not promote
    assert reasons[0].startswith("edit distance got worse") and "tolerance 0.05" in reasons[0]
    # Within the tolerance it holds.
    assert gate(metrics(likelihood=2.5, edit_distance=1.24), metrics(), SETTINGS)[0]


def test_worse_attribution_refuses():
    promote, reasons = gate(metrics(likelihood=2.5, attribution={"score": 0.4}), metrics(), SETTINGS)
    assert not promote and reasons[0].startswith("attribution got worse")


def test_worse_preference_accuracy_refuses():
    promote, reasons = gate(metrics(likelihood=2.5, preference_accuracy=0.5), metrics(), SETTINGS)
    assert not promote and reasons[0].startswith("preference accuracy got worse")


def test_a_new_caricature_flag_refuses_but_an_inherited_one_does_not():
    promote, reasons = gate(metrics(likelihood=2.5, caricature_flags=["exclamations"]), metrics(), SETTINGS)
    assert not promote and "exclamations" in reasons[0]
    promote, _ = gate(metrics(likelihood=2.5, caricature_flags=["exclamations"]),
                      metrics(caricature_flags=["exclamations"]), SETTINGS)
    assert promote


def test_unmeasured_metrics_are_not_judged_but_likelihood_is_required():
    promote, reasons = gate(metrics(likelihood=2.5, preference_accuracy=None), metrics(preference_accuracy=None),
                            SETTINGS)
    assert promote and any("preference accuracy not judged" in r for r in reasons)
    promote, reasons = gate(metrics(likelihood=None), metrics(), SETTINGS)
    assert not promote and "likelihood was measured for one model only" in reasons[0]
    # Nothing held out to score (only monologues imported): judged on the rest.
    promote, reasons = gate(metrics(likelihood=None), metrics(likelihood=None), SETTINGS)
    assert promote and any("likelihood not judged" in r for r in reasons)


def test_a_metric_measured_for_one_side_only_refuses():
    promote, reasons = gate(metrics(likelihood=2.5, attribution=None), metrics(), SETTINGS)
    assert not promote and reasons[0] == "attribution was measured for one model only: 0.500 → n/a"


def test_the_rule_text_shows_every_tolerance():
    text = gate_rule_text(SETTINGS)
    for value in ("0.01", "0.05"):
        assert value in text


@given(st.floats(0.5, 5), st.floats(0.5, 5), st.floats(0, 3), st.floats(0, 3))
def test_promotion_implies_a_likelihood_gain_and_no_edit_loss(nll_new, nll_old, ed_new, ed_old):
    promote, reasons = gate(metrics(likelihood=nll_new, edit_distance=ed_new),
                            metrics(likelihood=nll_old, edit_distance=ed_old), SETTINGS)
    if promote:
        assert nll_old - nll_new > SETTINGS.likelihood_tolerance
        assert ed_new - ed_old <= SETTINGS.edit_distance_tolerance
    assert len(reasons) == 5


def test_caricature_flags_compare_by_feature_not_by_numbers():
    active = metrics(caricature_flags=["exclamation marks: drafts 0.40 vs owner 0.10 (4.0x)"])
    same = metrics(likelihood=2.5, caricature_flags=["exclamation marks: drafts 0.50 vs owner 0.10 (5.0x)"])
    assert gate(same, active, SETTINGS)[0]
    other = metrics(likelihood=2.5, caricature_flags=["pet phrase 'lol' per message: drafts 0.9 vs owner 0.2 (4.5x)"])
    promote, reasons = gate(other, active, SETTINGS)
    assert not promote and "pet phrase 'lol'" in reasons[0]


def test_a_drop_within_sampling_noise_is_not_called_worse():
    # The learning-curve run: attribution 0.8 -> 0.4 on five drafts is two drafts, i.e. noise.
    small = {"standard_errors": {"attribution": 0.18}}
    candidate = metrics(likelihood=2.5, attribution=0.4, standard_errors={"attribution": 0.22})
    promote, reasons = gate(candidate, metrics(attribution=0.8, **small), SETTINGS)
    assert promote, reasons
    assert any("attribution held" in r and "sampling noise" in r for r in reasons)
    # The same drop measured on many drafts is real.
    many = {"standard_errors": {"attribution": 0.04}}
    promote, reasons = gate(metrics(likelihood=2.5, attribution=0.4, **many), metrics(attribution=0.8, **many), SETTINGS)
    assert not promote and reasons[0].startswith("attribution got worse")
    # noise_z = 0 judges the raw numbers.
    raw = EvaluationSettings(attribution_tolerance=0.05, noise_z=0)
    assert not gate(candidate, metrics(attribution=0.8, **small), raw)[0]


def test_a_drop_on_the_same_items_is_judged_by_its_paired_error():
    # 60 drafts a side, attribution 0.70 -> 0.57. Taken as two independent samples (0.06 each) the
    # drop is within 0.05 + 1.64 x 0.085; drafted for the same prompts with the same seeds, the
    # candidate lost eight drafts and won none back.
    old = [1.0] * 42 + [0.0] * 18
    new = [1.0] * 34 + [0.0] * 26
    errors = {"standard_errors": {"attribution": 0.06}}
    candidate = metrics(likelihood=2.5, attribution=34 / 60, **errors)
    active = metrics(attribution=0.7, **errors)
    assert gate(candidate, active, SETTINGS)[0]  # without per-item values: noise to the gate
    promote, reasons = gate({**candidate, "per_item": {"attribution": new}},
                            {**active, "per_item": {"attribution": old}}, SETTINGS)
    assert not promote and reasons[0].startswith("attribution got worse")
    # The same shares with the items shuffled between the models: a paired difference that is noise.
    shuffled = [0.0] * 18 + [1.0] * 34 + [0.0] * 8
    assert gate({**candidate, "per_item": {"attribution": shuffled}},
                {**active, "per_item": {"attribution": old}}, SETTINGS)[0]


def test_the_paired_error_skips_items_one_side_could_not_measure_and_needs_the_same_items():
    from training.gate import paired_difference_error

    assert paired_difference_error([1.0, None, 0.0, 1.0], [1.0, 1.0, None, 0.0]) == paired_difference_error(
        [1.0, 1.0], [1.0, 0.0])
    assert paired_difference_error([1.0, 0.0], [1.0, 0.0, 1.0]) is None  # not the same items
    assert paired_difference_error([1.0, None], [None, 1.0]) is None  # nothing measured by both
    assert paired_difference_error([1.0] * 30, [1.0] * 30, shares=True) > 0  # agreeing is not certainty
    assert paired_difference_error([1.5] * 30, [1.5] * 30) == 0  # identical distances: no difference at all
    assert abs(paired_difference_error([1.2, 1.0, 0.8], [1.0, 1.0, 1.0]) - (0.04 / 3) ** 0.5) < 1e-9


def test_the_evaluation_records_the_noise_of_each_sampled_metric():
    from training.evaluate import proportion_standard_error, standard_error

    assert abs(proportion_standard_error(0.8, 5) - (0.8 * 0.2 / 5) ** 0.5) < 1e-9
    assert proportion_standard_error(1.0, 4) > 0  # all-or-nothing on few items is still uncertain
    assert proportion_standard_error(None, 5) is None and standard_error([1.0]) is None
    assert abs(standard_error([1.0, 2.0, 3.0]) - (1.0 / 3) ** 0.5) < 1e-9


def test_a_flag_the_active_adapter_was_just_under_is_not_new_unless_the_candidate_rose_beyond_noise():
    # The owner never writes '...': the active adapter's drafts used it at 0.30 per message, just under
    # the flag's noise line; a candidate at 0.32 crosses it without changing anything real.
    name = "'...' per message"
    flag = [f"{name}: drafts 0.32 vs owner 0.00 (owner never)"]
    active = metrics(habit_rates={name: [0.30, 0.0, 0.46, 40]})
    same = metrics(likelihood=2.5, caricature_flags=flag, habit_rates={name: [0.32, 0.0, 0.47, 40]})
    promote, reasons = gate(same, active, SETTINGS)
    assert promote and any("already did that as often" in reason for reason in reasons)
    rose = metrics(likelihood=2.5, caricature_flags=flag, habit_rates={name: [0.80, 0.0, 0.40, 40]})
    promote, reasons = gate(rose, active, SETTINGS)
    assert not promote and reasons[0].startswith("new caricature flag")
    # Without the spread recorded (older metrics), any flag the active adapter lacked counts as new.
    promote, _ = gate(metrics(likelihood=2.5, caricature_flags=flag), active, SETTINGS)
    assert not promote
