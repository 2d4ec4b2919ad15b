"""A stage whose rows do not fit its `max_length` is skipped with its reason; the others still train.

Before this, a stage whose every prompt filled `max_length` (trl 1.16 drops such rows) crashed its
sampler with `num_samples=0` and took the whole cycle down. The tiny model's feedback prompts are
66 tokens and its imported-reply prompts 50, so `max_length=64` keeps only the latter.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from training.artifacts import MANIFEST, verify_adapter
from training.config import LoraSettings
from training.datasets import WritingExample, build_kto_rows, build_sft_rows, make_renderer
from training.prompt import Conversation
from training.train import NothingToTrain, fit_max_length, plan_stages, replan_after_fitting, run_training
from tests.training.test_train import T0, build_rows, feedback_examples, make_job
from tests.tiny import tiny_model_settings, tiny_training_settings

SHORT = 64  # the smallest max_length the config allows: under the feedback prompts, over the reply prompts


def short(settings: Any, *stages: str) -> Any:
    for stage in stages:
        getattr(settings, stage).max_length = SHORT
    return settings


def prompt_tokens(tiny_model_dir: Path) -> Any:
    from training.model import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    return lambda text: len(tokenizer(text=text)["input_ids"])


# The pure part: which rows fit, which stages are left ----------------------------------------------

def test_a_prompt_must_leave_room_for_the_completion() -> None:
    rows = {"dpo": [{"prompt": "x" * n, "chosen": "a", "rejected": "b"} for n in (63, 64, 65)]}
    fitted, notes = fit_max_length(rows, short(tiny_training_settings(), "dpo"), prompt_tokens=len)
    assert [len(row["prompt"]) for row in fitted["dpo"]] == [63]  # as trl: a prompt of max_length leaves nothing
    assert notes == {"dpo": "1 of 3 DPO pairs fit max_length 64 (longest prompt 65 tokens)"}


def test_rows_that_all_fit_leave_no_note() -> None:
    rows = {"sft": [{"prompt": "x" * 10, "completion": "y"}], "dpo": []}
    fitted, notes = fit_max_length(rows, short(tiny_training_settings(), "sft"), prompt_tokens=len)
    assert fitted == rows and notes == {}


@pytest.mark.parametrize(("lengths", "reason"), [
    ([70, 70, 70], "0 of 3 KTO rows fit max_length 64 (longest prompt 70 tokens)"),
    ([10, 70, 70], "1 of 3 KTO rows fit max_length 64 (longest prompt 70 tokens); KTO needs at least two rows"),
    ([10, 10, 70], "2 of 3 KTO rows fit max_length 64 (longest prompt 70 tokens); no undesirable rows"),
])
def test_kto_is_skipped_when_what_fits_cannot_train(lengths: list[int], reason: str) -> None:
    # Only the long row is undesirable, so it is KTO's rule that decides once the short ones are kept.
    rows = {"kto": [{"prompt": "x" * n, "completion": "c", "label": n < 64} for n in lengths]}
    training = short(tiny_training_settings(), "kto")
    planned, _ = plan_stages(rows, training)
    fitted, notes = fit_max_length(rows, training, prompt_tokens=len)
    still, skipped = replan_after_fitting(planned, fitted, notes, training)
    assert still == [] and list(skipped) == ["kto"] and skipped["kto"].startswith(reason)


def test_trl_keeps_exactly_the_rows_we_count_as_fitting(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Our filter must agree with trl's own, or a stage could still end up empty inside the trainer."""
    import torch

    from training.model import load_model, load_tokenizer
    from training.stages import build_trainer, common_arguments, lora_config

    rows = rows_with_short_prompts(tiny_model_dir)
    training = short(tiny_training_settings(), "sft", "dpo", "kto")
    fitted, notes = fit_max_length(rows, training, prompt_tokens=prompt_tokens(tiny_model_dir))
    tokenizer = load_tokenizer(tiny_model_dir)
    for stage in ("sft", "dpo", "kto"):
        assert 0 < len(fitted[stage]) < len(rows[stage]), notes  # the check below must see both kinds
        settings = getattr(training, stage)
        common = common_arguments(settings, scratch_dir=tmp_path / stage, seed=1, device="cpu",
                                  dtype=torch.float32, progress=False)
        trainer = build_trainer(stage, model=load_model(tiny_model_dir, tiny_model_settings(tiny_model_dir),
                                                        for_training=True),
                                tokenizer=tokenizer, rows=rows[stage], settings=settings, common=common,
                                peft_config=lora_config(LoraSettings(r=2)))
        assert len(trainer.train_dataset) == len(fitted[stage]), stage


def rows_with_short_prompts(tiny_model_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The usual rows, with SFT and KTO also holding imported replies (short prompts: no context turns)."""
    from training.model import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    render = make_renderer(tokenizer, tiny_model_settings(tiny_model_dir))
    feedback = feedback_examples()
    writing = [WritingExample(kind="reply", text=f"lol ok {i} ~", conversation=Conversation.of(f"seen it {i}?"),
                              written_at=T0 - timedelta(days=i)) for i in range(3)]
    rows = build_rows(tiny_model_dir)
    rows["sft"] = build_sft_rows(feedback, writing, render=render, replay_fraction=1.0, seed=1, tokenizer=tokenizer,
                                 chunk_tokens=48)
    rows["kto"] = build_kto_rows(feedback, writing, render=render)
    rows["dpo"].append({"prompt": render(Conversation.of("seen it?")), "chosen": "yep<|im_end|>",
                        "rejected": "Yes, I have seen it.<|im_end|>"})
    return rows


# The whole run on the tiny model -----------------------------------------------------------------

@pytest.fixture(scope="module")
def dpo_too_long(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """SFT keeps only its short-prompt rows, no DPO pair fits, KTO fits entirely."""
    root = tmp_path_factory.mktemp("skips")
    rows = build_rows(tiny_model_dir)
    job = make_job(tiny_model_dir, root, rows, training=short(tiny_training_settings(), "sft", "dpo"))
    return {"job": job, "rows": rows, "result": run_training(job, progress=False)}


def test_a_stage_with_no_fitting_rows_is_skipped_and_the_others_train(dpo_too_long: dict[str, Any]) -> None:
    result, rows = dpo_too_long["result"], dpo_too_long["rows"]
    assert list(result.stages) == ["sft", "kto"]
    assert result.skipped == {"dpo": f"0 of {len(rows['dpo'])} DPO pairs fit max_length 64 (longest prompt 66 tokens)"}
    assert result.stages["kto"]["examples"] == len(rows["kto"]) and result.stages["kto"]["steps"] == 3
    log = dpo_too_long["job"].log_file.read_text()
    assert "dpo skipped: 0 of 5 DPO pairs fit max_length 64" in log


def test_a_stage_trains_on_the_rows_that_fit_and_says_so(dpo_too_long: dict[str, Any]) -> None:
    sft = dpo_too_long["result"].stages["sft"]
    total = len(dpo_too_long["rows"]["sft"])
    assert sft["examples"] == 2 and sft["steps"] == 3 and sft["train_loss"] is not None  # the two reply rows
    assert sft["extra"]["fit_max_length"] == f"2 of {total} SFT rows fit max_length 64 (longest prompt 66 tokens)"


def test_the_adapter_is_written_from_the_stages_that_trained(dpo_too_long: dict[str, Any]) -> None:
    result = dpo_too_long["result"]
    verify_adapter(result.adapter_dir)
    manifest = json.loads((result.adapter_dir / MANIFEST).read_text())
    assert set(manifest["stages"]) == {"sft", "kto"} and manifest["skipped"] == result.skipped
    assert manifest["data_counts"] == {k: len(v) for k, v in dpo_too_long["rows"].items()}  # as written, not fitted


def test_no_stage_with_fitting_rows_is_nothing_to_train(tiny_model_dir: Path, tmp_path: Path) -> None:
    from training.model import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    rows = build_rows(tiny_model_dir)
    # Feedback only: every prompt carries context turns and is longer than 64 tokens.
    rows["sft"] = build_sft_rows(feedback_examples(), [], render=make_renderer(tokenizer, tiny_model_settings(
        tiny_model_dir)), replay_fraction=0.0, seed=1, tokenizer=tokenizer, chunk_tokens=48)
    counts = {stage: len(rows[stage]) for stage in ("sft", "dpo", "kto")}
    job = make_job(tiny_model_dir, tmp_path, rows, training=short(tiny_training_settings(), "sft", "dpo", "kto"))
    with pytest.raises(NothingToTrain, match=(rf"sft: 0 of {counts['sft']} SFT rows fit max_length 64 .*; "
                                              rf"dpo: 0 of {counts['dpo']} DPO pairs fit .*; "
                                              rf"kto: 0 of {counts['kto']} KTO rows fit")):
        run_training(job, progress=False)
    assert not job.output_dir.exists()
    assert not list(job.output_dir.parent.glob(".*"))  # no staging folder was ever made
    assert f"0 of {counts['sft']} SFT rows fit max_length 64" in job.log_file.read_text()
