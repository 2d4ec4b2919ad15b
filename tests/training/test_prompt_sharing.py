"""A DPO pair computes its prompt once: same log-probs, gradients and training as trl's full pass."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from training.config import LoraSettings
from training.prompt_sharing import prompts_computed_once
from tests.training.test_train import build_rows
from tests.tiny import tiny_model_settings, tiny_training_settings


def dpo_trainer(tiny_model_dir: Path, tmp_path: Path, *, checkpointing: bool = False, seed: int = 3) -> Any:
    import torch

    from training.model import load_model, load_tokenizer
    from training.stages import MemoryPlan, build_trainer, common_arguments, lora_config

    settings = tiny_training_settings().dpo
    common = common_arguments(settings, scratch_dir=tmp_path / "dpo", seed=1, device="cpu", dtype=torch.float32,
                              progress=False, memory=MemoryPlan(per_device_batch=1, accumulation=2,
                                                                checkpointing=checkpointing))
    torch.manual_seed(seed)
    trainer = build_trainer("dpo", model=load_model(tiny_model_dir, tiny_model_settings(tiny_model_dir),
                                                    for_training=True),
                            tokenizer=load_tokenizer(tiny_model_dir), rows=build_rows(tiny_model_dir)["dpo"],
                            settings=settings, common=common, peft_config=lora_config(LoraSettings(r=4, dropout=0.0)))
    for name, parameter in trainer.model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: give the adapter an effect, so its gradients say something
            torch.nn.init.normal_(parameter, std=0.05)
    return trainer


def model_inputs(trainer: Any, examples: list[int]) -> tuple[dict[str, Any], Any]:
    batch = trainer.data_collator([trainer.train_dataset[index] for index in examples])
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}, labels


class EmbeddingCalls:
    """The (rows, tokens) of every pass through the token embeddings: how often the prompt ran."""

    def __init__(self, model: Any) -> None:
        self.shapes: list[tuple[int, int]] = []
        self.handle = model.get_input_embeddings().register_forward_hook(
            lambda module, inputs, output: self.shapes.append(tuple(inputs[0].shape)))


def lora_gradients(model: Any) -> dict[str, Any]:
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return gradients


def test_a_pair_computes_its_prompt_once_with_the_same_log_probs_and_gradients(tiny_model_dir: Path,
                                                                              tmp_path: Path) -> None:
    import torch

    trainer = dpo_trainer(tiny_model_dir, tmp_path)
    model = trainer.model.train()
    inputs, labels = model_inputs(trainer, [0])
    full = model(**inputs, labels=labels, fused_lm_head=True)
    full.log_probs.sum().backward()
    full_gradients = lora_gradients(model)

    calls = EmbeddingCalls(model)
    with prompts_computed_once(model) as wrapped:
        shared = model(**inputs, labels=labels, fused_lm_head=True)
        shared.log_probs.sum().backward()
    calls.handle.remove()
    shared_gradients = lora_gradients(model)

    assert wrapped
    rows, width = inputs["input_ids"].shape
    prompt = int((labels[0] != -100).int().argmax())
    assert rows == 2 and prompt > width / 2  # a chat row is mostly prompt
    assert calls.shapes == [(1, prompt - 1), (2, width - prompt + 1)]
    torch.testing.assert_close(shared.log_probs, full.log_probs, atol=1e-5, rtol=1e-4)
    assert torch.equal(shared.label_mask, full.label_mask)
    torch.testing.assert_close(shared.loss, full.loss, atol=1e-5, rtol=1e-4)
    assert full_gradients and set(shared_gradients) == set(full_gradients)
    assert any(g.abs().sum() > 0 for g in full_gradients.values())
    for name, gradient in full_gradients.items():
        torch.testing.assert_close(shared_gradients[name], gradient, atol=1e-6, rtol=1e-3, msg=name)

    # Afterwards the model is trl's again: the next forward runs the whole batch.
    calls = EmbeddingCalls(model)
    with torch.no_grad():
        model(**inputs, labels=labels, fused_lm_head=True)
    calls.handle.remove()
    assert calls.shapes == [(2, width)]


def test_batches_without_one_shared_prompt_and_checkpointed_passes_run_whole(tiny_model_dir: Path,
                                                                             tmp_path: Path) -> None:
    trainer = dpo_trainer(tiny_model_dir, tmp_path)
    model = trainer.model.train()
    two_pairs, labels = model_inputs(trainer, [0, 1])  # [chosen 0, chosen 1, rejected 0, rejected 1]
    calls = EmbeddingCalls(model)
    with prompts_computed_once(model):
        model(**two_pairs, labels=labels, fused_lm_head=True)
        one_pair, labels = model_inputs(trainer, [0])
        model(**one_pair)  # plain logits, as generation asks for
    calls.handle.remove()
    assert calls.shapes == [tuple(two_pairs["input_ids"].shape), tuple(one_pair["input_ids"].shape)]

    # Recomputed layers could not replay a cache: with checkpointing the policy's pass runs whole;
    # the reference's, without gradients, still computes the prompt once.
    checkpointed = dpo_trainer(tiny_model_dir, tmp_path / "ckpt", checkpointing=True)
    calls = EmbeddingCalls(checkpointed.model)
    with prompts_computed_once(checkpointed.model):
        checkpointed.train()
    calls.handle.remove()
    assert checkpointed.model.get_base_model().is_activation_checkpointing
    assert len(calls.shapes) % 3 == 0 and len(calls.shapes) >= 3 * 3  # three passes per pair, 3 steps or more
    for policy, ref_prompt, ref_completions in zip(*[iter(calls.shapes)] * 3):
        assert policy[0] == 2 and ref_prompt[0] == 1 and ref_completions[0] == 2
        assert ref_prompt[1] + ref_completions[1] == policy[1]


def test_a_dpo_stage_trains_the_same_with_the_prompt_computed_once(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    from training.stages import labelled_positions_only

    trained = {}
    for sharing in (False, True):
        trainer = dpo_trainer(tiny_model_dir, tmp_path / str(sharing))
        with labelled_positions_only(), (prompts_computed_once(trainer.model) if sharing else contextlib.nullcontext()):
            output = trainer.train()
        weights = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if "lora_" in name}
        trained[sharing] = (output.training_loss, weights)
    assert trained[True][0] == pytest.approx(trained[False][0], rel=1e-4)
    for name, weight in trained[False][1].items():
        torch.testing.assert_close(trained[True][1][name], weight, atol=1e-5, rtol=1e-3, msg=name)
