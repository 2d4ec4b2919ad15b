"""The plain recipe the project's own is judged against: trl's documented SFT/DPO with a peft LoRA.

`SFTTrainer` / `DPOTrainer` exactly as trl's documentation shows them, with default settings apart
from what a CPU needs (`use_cpu=True`, no bf16) and what a benchmark needs (no checkpoint saving,
no trackers, a loss logged every step). The LoRA is the usual documented one
(r 16, alpha 32, dropout 0.05, all linear layers). Nothing here is used by the twin itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)

PLAIN_LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear",
              "task_type": "CAUSAL_LM"}
DPO_BETA = 0.1  # trl's default, used to score both recipes' DPO results the same way


def cpu_arguments(output_dir: Path, seed: int = 42) -> dict[str, Any]:
    """Only what the CPU needs (trl defaults to bf16, which raises on CPU) and what a benchmark needs."""
    return {"output_dir": str(output_dir), "use_cpu": True, "bf16": False, "fp16": False, "report_to": "none",
            "save_strategy": "no", "logging_steps": 1, "seed": seed, "disable_tqdm": True}


def load_base(path: str) -> tuple[Any, Any]:
    """The base model and tokenizer as the documentation loads them (fp32 on CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def plain_sft(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], output_dir: Path,
              *, epochs: float = 1.0, seed: int = 42) -> tuple[Any, Any]:
    """One SFT run; returns (trained PeftModel, trainer output)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**cpu_arguments(output_dir, seed), num_train_epochs=epochs)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(list(rows)),
                         processing_class=tokenizer, peft_config=LoraConfig(**PLAIN_LORA))
    output = trainer.train()
    return trainer.model, output


def plain_dpo(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], output_dir: Path,
              *, epochs: float = 1.0, seed: int = 42) -> tuple[Any, Any]:
    """One DPO run. Given a base model a new LoRA is trained (reference: the base, adapters off);
    given a trainable PeftModel (after `plain_sft`) trl copies it as the frozen reference."""
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(**cpu_arguments(output_dir, seed), num_train_epochs=epochs)
    peft_config = None if isinstance(model, PeftModel) else LoraConfig(**PLAIN_LORA)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(list(rows)),
                         processing_class=tokenizer, peft_config=peft_config)
    output = trainer.train()
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" in getattr(trained, "peft_config", {}):
        trained.delete_adapter("ref")
        trained.set_adapter("default")
    return trained, output


def strip_end(text: str) -> str:
    from training.datasets import END_OF_TURN

    return text[:-len(END_OF_TURN)] if text.endswith(END_OF_TURN) else text


def sft_nll(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]]) -> float | None:
    """Mean per-token NLL of the completions given their prompts (the SFT objective, measured after training)."""
    from training.likelihood import mean_nll

    model.eval()
    return mean_nll(model, tokenizer, [(row["prompt"], strip_end(row["completion"])) for row in rows])


def dpo_scores(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], beta: float = DPO_BETA) -> dict[str, Any]:
    """Sigmoid DPO loss against the base model (adapters off) and preference accuracy, after training.

    The same formula for every recipe, so their results compare even when their training losses
    differ in kind (ours adds an SFT term).
    """
    import math

    from training.likelihood import pair_logprobs, raw_preference_accuracy, reward_preference_accuracy

    model.eval()
    triples = [(row["prompt"], strip_end(row["chosen"]), strip_end(row["rejected"])) for row in rows]
    policy = pair_logprobs(model, tokenizer, triples)
    with model.disable_adapter():
        reference = pair_logprobs(model, tokenizer, triples)
    losses = []
    for ((chosen, _), (rejected, _)), ((chosen_ref, _), (rejected_ref, _)) in zip(policy, reference):
        margin = (chosen - chosen_ref) - (rejected - rejected_ref)
        x = -beta * margin  # -log sigmoid(beta * margin) = softplus(x), computed without overflow
        losses.append(max(x, 0.0) + math.log1p(math.exp(-abs(x))))
    return {"dpo_loss": sum(losses) / len(losses) if losses else None,
            "preference_accuracy": reward_preference_accuracy(policy, reference),
            "preference_accuracy_raw": raw_preference_accuracy(policy)}
