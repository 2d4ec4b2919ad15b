"""Milder versions of an adapter (training.strength) on the tiny model: exact update scaling, real peft loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny import build_random_adapter
from training.artifacts import verify_adapter
from training.strength import IncompatibleReference, reference_fits, strength_of, write_milder_adapter


def merged_weights(model_dir: Path, adapter: Path | None) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items() if "proj" in name}


def test_over_the_base_model_a_milder_version_scales_the_update_exactly(tiny_model_dir, tmp_path):
    import torch

    candidate = build_random_adapter(tiny_model_dir, tmp_path / "v1", seed=1)
    half = write_milder_adapter(candidate, None, 0.5, tmp_path / "v1-half")
    verify_adapter(half)  # a complete adapter: drafting and training accept it
    assert strength_of(half) == 0.5 and strength_of(candidate) == 1.0
    base, full, milder = (merged_weights(tiny_model_dir, a) for a in (None, candidate, half))
    for name in base:
        torch.testing.assert_close(milder[name] - base[name], 0.5 * (full[name] - base[name]), atol=1e-5, rtol=1e-4)
    assert any((full[name] - base[name]).abs().max() > 1e-3 for name in base)  # the update is not trivially 0


def test_towards_a_reference_adapter_strength_0_is_the_reference_and_1_the_candidate(tiny_model_dir, tmp_path):
    import torch

    reference = build_random_adapter(tiny_model_dir, tmp_path / "v1", seed=1)
    candidate = build_random_adapter(tiny_model_dir, tmp_path / "v2", seed=2)
    assert reference_fits(candidate, reference)
    nearly_reference = write_milder_adapter(candidate, reference, 1e-9, tmp_path / "v2-0")
    whole = write_milder_adapter(candidate, reference, 1.0, tmp_path / "v2-1")
    for got, want in ((nearly_reference, reference), (whole, candidate)):
        merged, expected = merged_weights(tiny_model_dir, got), merged_weights(tiny_model_dir, want)
        for name in expected:
            torch.testing.assert_close(merged[name], expected[name], atol=1e-5, rtol=1e-4)


def test_a_reference_of_another_shape_is_refused(tiny_model_dir, tmp_path):
    reference = build_random_adapter(tiny_model_dir, tmp_path / "r8", seed=1, r=8)
    candidate = build_random_adapter(tiny_model_dir, tmp_path / "r4", seed=2, r=4)
    assert not reference_fits(candidate, reference)
    with pytest.raises(IncompatibleReference):
        write_milder_adapter(candidate, reference, 0.5, tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()  # nothing half-written is left behind


def test_the_chosen_strength_takes_the_candidates_place_and_nothing_else_is_left(tiny_model_dir, tmp_path):
    from training.nightly import _milder_dir, _put_milder_in_place, _remove_milder_versions
    from training.artifacts import read_manifest

    root = tmp_path / "adapters"
    candidate = build_random_adapter(tiny_model_dir, root / "v3", seed=3)
    for strength in (0.75, 0.5):
        write_milder_adapter(candidate, None, strength, _milder_dir(candidate, strength))
    checksum = _put_milder_in_place(candidate, 0.5)
    _remove_milder_versions(candidate)
    verify_adapter(candidate)
    assert strength_of(candidate) == 0.5 and read_manifest(candidate)["checksum"] == checksum
    assert [p.name for p in root.iterdir()] == ["v3"]  # the full-strength copy and the 0.75 one are gone
