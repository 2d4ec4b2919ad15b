"""SFT → DPO → KTO on the tiny model: adapters change, the base does not, references, artifacts."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from training.artifacts import MANIFEST, CorruptAdapter, verify_adapter
from training.config import LoraSettings
from training.datasets import (
    FeedbackExample,
    WritingExample,
    build_dpo_rows,
    build_kto_rows,
    build_sft_rows,
    make_renderer,
    write_datasets,
)
from training.prompt import Conversation, Turn
from training.train import NothingToTrain, TrainJob, run_training
from tests.tiny import tiny_model_settings, tiny_training_settings

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def feedback_examples() -> list[FeedbackExample]:
    items = []
    for i in range(6):
        conversation = Conversation.of(f"are we still on for friday {i}?", [Turn("other", "hey"), Turn("owner", "yo")])
        kind = ["accept", "edit", "reject", "regenerate", "edit", "reject"][i]
        items.append(FeedbackExample(kind=kind, conversation=conversation, draft=f"Yes, I will be there at {i}.",
                                     text=f"yep see u there {i} ~" if kind in ("edit", "reject") else None,
                                     later_kept="sure thing ~" if kind == "regenerate" else None,
                                     created_at=T0 + timedelta(hours=i)))
    return items


def writing_examples() -> list[WritingExample]:
    return [WritingExample(kind="reply", text=f"lol ok {i} ~", conversation=Conversation.of(f"did you see it {i}?"),
                            written_at=T0 - timedelta(days=i)) for i in range(4)]


def build_rows(tiny_model_dir: Path) -> dict[str, list[dict[str, Any]]]:
    from training.model import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    render = make_renderer(tokenizer, tiny_model_settings(tiny_model_dir))
    feedback, writing = feedback_examples(), writing_examples()
    return {
        "sft": build_sft_rows(feedback, writing, render=render, replay_fraction=0.5, seed=1, tokenizer=tokenizer,
                              chunk_tokens=48),
        "dpo": build_dpo_rows(feedback, render=render),
        "kto": build_kto_rows(feedback, [], render=render),
    }


def make_job(tiny_model_dir: Path, root: Path, rows: dict[str, list[dict[str, Any]]], **overrides: Any) -> TrainJob:
    write_datasets(rows, root / "datasets")
    values: dict[str, Any] = dict(
        model=tiny_model_settings(tiny_model_dir), lora=LoraSettings(r=8, alpha=16, dropout=0.0),
        training=tiny_training_settings(), models_dir=root / "models", datasets_dir=root / "datasets",
        init_adapter=None, output_dir=root / "adapters" / "v1", log_file=root / "train.log",
        metadata={"cycle": 7})
    values.update(overrides)
    return TrainJob(**values)


class ModelGrabber:
    """Keeps the model each stage trained, to compare its weights afterwards."""

    def __new__(cls) -> Any:
        from transformers import TrainerCallback

        class Grabber(TrainerCallback):
            models: list[Any] = []

            def on_train_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
                self.models.append(model)

        grabber = Grabber()
        grabber.models = []
        return grabber


class ScoringWatcher:
    """Records, at every training step, whether trl's fused LM head would skip unlabelled positions on a CPU."""

    def __new__(cls) -> Any:
        import torch
        import trl.trainer.utils as trl_utils
        from transformers import TrainerCallback

        class Watcher(TrainerCallback):
            compact: list[bool] = []
            shared_prompts: list[bool] = []

            def on_step_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
                self.compact.append(trl_utils._use_triton(torch.device("cpu")))
                forward = model.get_base_model().forward
                self.shared_prompts.append("prompts_computed_once" in getattr(forward, "__qualname__", ""))

        watcher = Watcher()
        watcher.compact, watcher.shared_prompts = [], []
        return watcher


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("train")
    rows = build_rows(tiny_model_dir)
    job = make_job(tiny_model_dir, root, rows)
    grabber, watcher = ModelGrabber(), ScoringWatcher()
    result = run_training(job, progress=False, callbacks=[grabber, watcher])
    return {"job": job, "result": result, "rows": rows, "model": grabber.models[-1], "root": root,
            "compact_scoring": watcher.compact, "shared_prompts": watcher.shared_prompts}


def test_stages_score_only_labelled_positions_and_dpo_computes_prompts_once(trained: dict[str, Any]) -> None:
    import torch
    import trl.trainer.utils as trl_utils

    assert trained["compact_scoring"] == [True] * 9  # 3 steps in each of SFT, DPO and KTO
    assert trained["shared_prompts"] == [False] * 3 + [True] * 3 + [False] * 3  # DPO pairs share their prompt
    assert trl_utils._use_triton(torch.device("cpu")) is False  # trl's own choice is back after training


def test_scoring_only_labelled_positions_gives_the_same_log_probs(trained: dict[str, Any], tiny_model_dir: Path,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import trl.trainer.utils as trl_utils

    from training.stages import labelled_positions_only

    trainer = _trainer("sft", tiny_model_dir, trained["rows"]["sft"], tmp_path)
    dataset = trainer.train_dataset
    batch = trainer.data_collator([dataset[0], dataset[1]])
    scored_rows: list[int] = []
    chunked = trl_utils._ChunkedLogProbFunction

    class CountingChunkedLogProb:
        @staticmethod
        def apply(hidden: Any, *args: Any) -> Any:
            scored_rows.append(hidden.shape[0])
            return chunked.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", CountingChunkedLogProb)
    model = trainer.model.eval()
    with torch.no_grad():
        everywhere = model(**batch, fused_lm_head=True)
        with labelled_positions_only() as switched:
            labelled_only = model(**batch, fused_lm_head=True)
    assert switched
    labels = batch["labels"][:, 1:]
    assert scored_rows == [labels.numel(), int((labels != -100).sum())]
    assert scored_rows[1] < scored_rows[0] / 2  # the prompt is most of a chat row
    torch.testing.assert_close(labelled_only.log_probs, everywhere.log_probs)
    torch.testing.assert_close(labelled_only.loss, everywhere.loss)


def test_a_trl_without_the_switch_trains_as_before(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    import trl.trainer.utils as trl_utils

    from training.stages import labelled_positions_only

    monkeypatch.delattr(trl_utils, "_use_triton")
    with labelled_positions_only() as switched:
        assert not hasattr(trl_utils, "_use_triton")
    assert switched is False and "scores every position" in caplog.text


def test_all_three_stages_run_for_their_steps(trained: dict[str, Any]) -> None:
    result = trained["result"]
    assert list(result.stages) == ["sft", "dpo", "kto"]
    for stage, stats in result.stages.items():
        assert stats["steps"] == 3, stage  # max_steps honoured
        assert stats["examples"] == len(trained["rows"][stage]) and stats["train_loss"] is not None
        assert stats["peak_rss_mb"] > 0 and stats["tokens_per_second"] > 0
    # Short rows on this CPU: each stage's whole batch per pass (the plan is what the trainer was given).
    assert result.stages["sft"]["extra"]["memory_plan"]["per_device_batch"] == 2
    assert result.stages["dpo"]["extra"]["memory_plan"]["checkpointing"] is False
    kto = result.stages["kto"]["extra"]
    labels = [row["label"] for row in trained["rows"]["kto"]]
    # Balanced as trl's KTO docs advise: desirable_weight × n_desirable == undesirable_weight × n_undesirable.
    assert kto["desirable_weight"] * labels.count(True) == pytest.approx(kto["undesirable_weight"] * labels.count(False))


def test_adapter_folder_is_complete_and_verifies(trained: dict[str, Any]) -> None:
    folder: Path = trained["result"].adapter_dir
    assert folder == trained["job"].output_dir
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["adapter_config.json", "adapter_model.safetensors", MANIFEST]  # no trl "ref/" copy
    verify_adapter(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["checksum"] == trained["result"].checksum
    assert manifest["data_counts"] == {k: len(v) for k, v in trained["rows"].items()}
    assert manifest["metadata"] == {"cycle": 7} and manifest["libraries"]["trl"].startswith("1.16")
    assert manifest["hyperparameters"]["lora"]["r"] == 8 and manifest["hyperparameters"]["precision"] == "float32"
    assert set(manifest["stages"]) == {"sft", "dpo", "kto"}
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging or scratch left
    log = trained["job"].log_file.read_text()
    assert "sft step 3/3" in log and "kto done" in log


def test_adapter_weights_changed_and_base_weights_did_not(trained: dict[str, Any], tiny_model_dir: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    weights = load_file(str(trained["result"].adapter_dir / "adapter_model.safetensors"))
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # LoRA B starts at zero: it moved
    assert not any("lm_head" in name for name in weights)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict()
    trained_model = trained["model"]
    checked = 0
    for name, param in trained_model.named_parameters():
        if "lora_" in name:
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(param.detach().cpu(), base[key]), name
        checked += 1
    assert checked >= 10


def test_dpo_reference_is_the_sft_adapter_not_the_base(trained: dict[str, Any], tiny_model_dir: Path) -> None:
    from training.likelihood import completion_logprobs
    from training.model import load_model, load_tokenizer
    from training.stages import build_trainer, common_arguments, lora_config, run_stage

    import torch

    job, rows = trained["job"], trained["rows"]
    tokenizer = load_tokenizer(tiny_model_dir)
    base = load_model(tiny_model_dir, job.model, for_training=True)
    settings = job.training
    scratch = trained["root"] / "scratch"

    def common(stage: str) -> dict[str, Any]:
        return common_arguments(getattr(settings, stage), scratch_dir=scratch / stage, seed=settings.seed,
                                device="cpu", dtype=torch.float32, progress=False)

    sft_model, _ = run_stage("sft", model=base, tokenizer=tokenizer, rows=rows["sft"], settings=settings.sft,
                             common=common("sft"), peft_config=lora_config(job.lora))
    pairs = [(rows["dpo"][0]["prompt"], rows["dpo"][0]["chosen"].removesuffix("<|im_end|>"))]
    sft_model.eval()
    sft_logp = completion_logprobs(sft_model, tokenizer, pairs)[0][0]
    with sft_model.disable_adapter():
        base_logp = completion_logprobs(sft_model, tokenizer, pairs)[0][0]
    assert abs(sft_logp - base_logp) > 1e-3  # SFT moved the model, so the two references differ

    trainer = build_trainer("dpo", model=sft_model, tokenizer=tokenizer, rows=rows["dpo"][:1], settings=settings.dpo,
                            common=common("dpo"), peft_config=None)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ref_chosen, _ = trainer.compute_ref_log_probs(trainer.model, batch)
    assert float(ref_chosen[0]) == pytest.approx(sft_logp, abs=1e-3)
    trainer.train()
    ref_after, _ = trainer.compute_ref_log_probs(trainer.model, batch)
    assert float(ref_after[0]) == pytest.approx(sft_logp, abs=1e-3)  # frozen: training moved only the policy
    trainer.model.eval()
    assert abs(completion_logprobs(trainer.model, tokenizer, pairs)[0][0] - sft_logp) > 1e-4


def test_continuing_an_adapter_keeps_its_shape(trained: dict[str, Any], tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = {"sft": trained["rows"]["sft"][:4], "dpo": [], "kto": []}
    job = make_job(tiny_model_dir, tmp_path, rows, lora=LoraSettings(r=2, alpha=4),
                   init_adapter=trained["result"].adapter_dir)
    result = run_training(job, progress=False)
    assert list(result.stages) == ["sft"] and set(result.skipped) == {"dpo", "kto"}
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 8  # the continued adapter's rank, not the new settings'
    manifest = json.loads((result.adapter_dir / MANIFEST).read_text())
    assert manifest["init_adapter"] == str(trained["result"].adapter_dir)
    assert result.checksum != trained["result"].checksum


def test_a_failing_stage_leaves_no_adapter_folder(trained: dict[str, Any], tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import TrainerCallback

    class FailInDpo(TrainerCallback):
        stages = 0

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self.stages += 1

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if self.stages == 2:
                raise RuntimeError("killed mid-way")

    job = make_job(tiny_model_dir, tmp_path, trained["rows"])
    with pytest.raises(RuntimeError, match="killed mid-way"):
        run_training(job, progress=False, callbacks=[FailInDpo()])
    assert not job.output_dir.exists()
    assert list(job.output_dir.parent.iterdir()) == []  # no staging folder left behind


def test_nothing_to_train_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    job = make_job(tiny_model_dir, tmp_path, {"sft": [], "dpo": []})
    with pytest.raises(NothingToTrain, match="sft: no rows"):
        run_training(job, progress=False)
    assert not job.output_dir.exists()


def test_corruption_is_detected(trained: dict[str, Any], tmp_path: Path) -> None:
    copy = Path(shutil.copytree(trained["result"].adapter_dir, tmp_path / "copy"))
    verify_adapter(copy)
    weights = copy / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptAdapter, match="checksum"):
        verify_adapter(copy)
    weights.unlink()
    with pytest.raises(CorruptAdapter, match="missing"):
        verify_adapter(copy)
    (copy / MANIFEST).unlink()
    with pytest.raises(CorruptAdapter, match="twin_adapter.json"):
        verify_adapter(copy)
    with pytest.raises(CorruptAdapter, match="does not exist"):
        verify_adapter(tmp_path / "nowhere")


def _trainer(stage: str, tiny_model_dir: Path, rows: list[dict[str, Any]], tmp_path: Path) -> Any:
    import torch

    from training.model import load_model, load_tokenizer
    from training.stages import build_trainer, common_arguments, lora_config

    settings = tiny_training_settings()
    model_settings = tiny_model_settings(tiny_model_dir)
    common = common_arguments(getattr(settings, stage), scratch_dir=tmp_path / stage, seed=1, device="cpu",
                              dtype=torch.float32, progress=False)
    return build_trainer(stage, model=load_model(tiny_model_dir, model_settings, for_training=True),
                         tokenizer=load_tokenizer(tiny_model_dir), rows=rows, settings=getattr(settings, stage),
                         common=common, peft_config=lora_config(LoraSettings(r=2)))


def test_sft_labels_end_with_one_unmasked_end_of_turn(trained: dict[str, Any], tiny_model_dir: Path,
                                                      tmp_path: Path) -> None:
    """pad == eos == <|im_end|> in SmolLM2: the eos must stay a label, or the twin never learns to stop."""
    rows = trained["rows"]["sft"]
    trainer = _trainer("sft", tiny_model_dir, rows, tmp_path)
    im_end = trainer.processing_class.convert_tokens_to_ids("<|im_end|>")
    assert trainer.processing_class.pad_token_id == im_end  # the pitfall this test is about
    dataset = trainer.train_dataset
    lengths = [len(ids) for ids in dataset["input_ids"]]
    short, long = lengths.index(min(lengths)), lengths.index(max(lengths))
    assert min(lengths) < max(lengths)
    batch = trainer.data_collator([dataset[short], dataset[long]])
    for row, length in ((0, lengths[short]), (1, lengths[long])):
        labels = batch["labels"][row].tolist()
        assert labels[length - 1] == im_end  # the completion's last label is the end of turn ...
        assert labels[length - 2] != im_end  # ... once, not doubled by trl
        assert labels[0] == -100  # the prompt is not trained on
        assert all(label == -100 for label in labels[length:])  # only the padding after it is masked
    assert batch["input_ids"][0, lengths[short]:].eq(im_end).all()  # padding uses the same id


def test_dpo_and_kto_completions_end_with_one_end_of_turn(trained: dict[str, Any], tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    dpo = _trainer("dpo", tiny_model_dir, trained["rows"]["dpo"], tmp_path)
    im_end = dpo.processing_class.convert_tokens_to_ids("<|im_end|>")
    for key in ("chosen_ids", "rejected_ids"):
        for ids in dpo.train_dataset[key]:
            assert ids[-1] == im_end and ids[-2] != im_end
    batch = dpo.data_collator([dpo.train_dataset[0]])
    last = int(batch["attention_mask"][0].sum()) - 1
    assert batch["input_ids"][0, last] == im_end and batch["completion_mask"][0, last] == 1
    kto = _trainer("kto", tiny_model_dir, trained["rows"]["kto"], tmp_path)
    for ids in kto.train_dataset["completion_ids"]:
        assert ids[-1] == im_end and ids[-2] != im_end


def test_on_a_cpu_long_rows_train_one_at_a_time_and_dpo_kto_checkpoint_them() -> None:
    from training.config import TrainingSettings
    from training.stages import LONG_ROW_TOKENS, memory_plan

    training = TrainingSettings()
    sft = memory_plan("sft", training.sft, training, "cpu", longest_row_tokens=4000)
    assert (sft.per_device_batch, sft.accumulation, sft.checkpointing) == (1, training.sft.batch_size, False)
    dpo = memory_plan("dpo", training.dpo, training, "cpu", longest_row_tokens=LONG_ROW_TOKENS + 1)
    assert dpo.per_device_batch == 1 and dpo.checkpointing
    assert memory_plan("kto", training.kto, training, "cpu").checkpointing  # length unknown: the safe side
    assert memory_plan("sft", training.sft, training, "cpu").per_device_batch == 1
    # Chat-length rows: SFT and KTO the whole batch per pass, no checkpointing: both faster at these lengths.
    for stage in ("sft", "kto"):
        settings = getattr(training, stage)
        short = memory_plan(stage, settings, training, "cpu", longest_row_tokens=LONG_ROW_TOKENS)
        assert (short.per_device_batch, short.accumulation, short.checkpointing) == (
            settings.batch_size, settings.gradient_accumulation_steps, False), stage
    short_dpo = memory_plan("dpo", training.dpo, training, "cpu", longest_row_tokens=LONG_ROW_TOKENS)
    assert (short_dpo.per_device_batch, short_dpo.accumulation, short_dpo.checkpointing) == (
        1, training.dpo.batch_size, False)  # DPO's SFT term averages over a pass: one pair each
    gpu = memory_plan("sft", training.sft, training, "cuda")
    assert (gpu.per_device_batch, gpu.accumulation, gpu.checkpointing) == (training.sft.batch_size, 1, False)
    assert not memory_plan("dpo", training.dpo, training, "cuda", longest_row_tokens=4000).checkpointing
    explicit = TrainingSettings(micro_batch_size=2, gradient_checkpointing="off")
    assert memory_plan("dpo", explicit.dpo, explicit, "cpu", longest_row_tokens=4000) == type(dpo)(2, 1, False)
    assert memory_plan("sft", explicit.sft, explicit, "cpu", longest_row_tokens=10) == type(dpo)(2, 2, False)
    kto = memory_plan("kto", explicit.kto, TrainingSettings(micro_batch_size=1), "cpu", longest_row_tokens=4000)
    assert kto.per_device_batch == 2 and kto.accumulation == 2  # KTO's KL term needs two per batch
    forced = TrainingSettings(gradient_checkpointing="on")
    assert memory_plan("sft", forced.sft, forced, "cpu", longest_row_tokens=10).checkpointing


def test_the_longest_row_counts_the_prompt_and_the_longest_completion() -> None:
    from training.train import longest_row_tokens

    words = lambda text: len(text.split())  # noqa: E731 - a stand-in tokenizer
    rows = [{"prompt": "a b ", "chosen": "c", "rejected": "d e f g"}, {"prompt": "a b c d e f ", "chosen": "x", "rejected": "y"}]
    assert longest_row_tokens(rows, words) == 7
    assert longest_row_tokens([{"prompt": "p q ", "completion": "r s t"}], words) == 5
    assert longest_row_tokens([], words) == 0


def test_a_stage_with_few_rows_is_lifted_to_min_steps_but_passes_over_them_at_most_four_times() -> None:
    from training.config import StageSettings
    from training.stages import MemoryPlan
    from training.train import MAX_PASSES, steps_to_train

    one_by_four = MemoryPlan(per_device_batch=1, accumulation=4, checkpointing=False)
    sft = StageSettings(min_steps=16)  # batch 4
    assert steps_to_train(19, sft, one_by_four) == 16  # 5 steps an epoch: lifted to 16 (3.2 passes)
    assert steps_to_train(11, sft, one_by_four) == 2 * MAX_PASSES  # 2 steps an epoch: 4 passes, not 16 steps
    assert steps_to_train(345, sft, one_by_four) is None  # 86 steps in its one epoch: the epochs decide
    assert steps_to_train(19, StageSettings(min_steps=0), one_by_four) is None
    assert steps_to_train(19, StageSettings(min_steps=16, max_steps=3), one_by_four) == 3  # the smoke-test cap wins
    assert steps_to_train(19, StageSettings(min_steps=16, epochs=4.0), one_by_four) is None  # 20 steps already


def test_min_steps_really_trains_that_many_steps(tmp_path: Path, tiny_model_dir: Path) -> None:
    from training.config import StageSettings, TrainingSettings
    from training.model import load_tokenizer

    render = make_renderer(load_tokenizer(tiny_model_dir), tiny_model_settings(tiny_model_dir))
    feedback = [FeedbackExample(kind="accept", conversation=Conversation.of(f"hi {i}?"), draft=f"hey {i}", text=None,
                                later_kept=None, created_at=T0) for i in range(6)]
    write_datasets({"sft": build_sft_rows(feedback, [], render=render, replay_fraction=0, seed=0, tokenizer=None,
                                          chunk_tokens=64)}, tmp_path / "data")
    training = TrainingSettings(sft=StageSettings(batch_size=2, min_steps=7, max_length=192), dpo=StageSettings(enabled=False),
                                kto=StageSettings(enabled=False))
    job = TrainJob(model=tiny_model_settings(tiny_model_dir), lora=LoraSettings(r=4, alpha=8), training=training,
                   models_dir=tmp_path / "models", datasets_dir=tmp_path / "data", init_adapter=None,
                   output_dir=tmp_path / "adapter", log_file=tmp_path / "train.log")
    stats = run_training(job, progress=False).stages["sft"]
    assert stats["steps"] == 7  # 3 steps an epoch, lifted to 7
    assert "7 steps over 6 rows" in stats["extra"]["min_steps"]
