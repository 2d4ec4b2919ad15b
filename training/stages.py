"""One training stage (SFT, DPO or KTO) on trl 1.16: configs, trainers and their statistics.

The three stages share everything but the trainer class and a few loss settings, so the shared
arguments are built in one place (`common_arguments`) rather than in near-duplicate scripts.
A stage takes a model that is either the base model (then `peft_config` creates a new LoRA) or a
`PeftModel` carrying the adapter to continue (then no `peft_config`: trl refuses both).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from training.config import LoraSettings, StageSettings, TrainingSettings
from training.prompt_sharing import prompts_computed_once

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from peft import LoraConfig

logger = logging.getLogger(__name__)

# Without a memory plan (`memory_plan`) no checkpointing: trl's default trades ~25% more compute
# for activation memory, and CPU time is the scarce resource.
GRADIENT_CHECKPOINTING = False


@dataclass(frozen=True)
class MemoryPlan:
    """How a stage reaches its batch size: examples per forward pass, accumulation, checkpointing."""

    per_device_batch: int
    accumulation: int
    checkpointing: bool


# On a CPU a stage's rows are "long" above this many tokens (prompt plus the longest completion).
# Long rows train one example per pass, and DPO/KTO checkpoint activations; short (chat-length)
# SFT and KTO rows train the whole batch per pass, DPO one pair per pass (its SFT term is a token
# mean over the pass, so a bigger pass would change what it learns: the tiny-model cycle test's
# second cycle stopped improving), all without checkpointing. Measured on SmolLM2-135M, 2 threads:
# - checkpointing: chat rows of ~90 tokens DPO 46 s without vs 52 s with (1.9 vs 1.6 GB), KTO 53 s
#   vs 92 s; rows of 354 tokens DPO peaked at 3.9 GB without and 3.1 GB with it, so longer rows
#   would pass a 4 GB laptop budget;
# - the whole batch per pass, on a night's chat rows of ~110 tokens with only the labelled positions
#   scored: 48 SFT rows 28.7 s as 1 x 4 accumulated vs 22.4 s as 4 (1.5 vs 2.4 GB), 24 DPO pairs
#   30.7 vs 21.9 s, 24 KTO rows 28.2 s as 2 x 2 vs 24.0 s as 4. Passes this short are bound by
#   per-operation overhead and small matrix products, not by the arithmetic of the padding.
LONG_ROW_TOKENS = 256


def memory_plan(stage: str, settings: StageSettings, training: TrainingSettings, device: str,
                longest_row_tokens: int | None = None) -> MemoryPlan:
    """The stage's batch as micro-batches that fit memory, without changing what is learnt.

    On a CPU, long rows (the stage's `longest_row_tokens` above LONG_ROW_TOKENS, or unknown) train
    one example per forward pass: no compute on padding and a quarter of the activations of a batch
    of four (mail-length rows, SFT batch 4: 69 s and 7.8 GB for 12 examples, 1 x 4 accumulated 37 s
    and 2.8 GB, same loss; DPO batch 2 6.4 GB, 1 x 2 4.1 GB and 1.6x faster), and DPO and KTO (two
    sequences and reference passes per example) checkpoint activations as well. Short SFT and KTO
    rows train the whole batch per pass (KTO then estimates its KL term over the batch it was
    configured with), short DPO rows one pair per pass. On a GPU the whole batch, without
    checkpointing.
    """
    long_rows = longest_row_tokens is None or longest_row_tokens > LONG_ROW_TOKENS
    one_per_pass = device == "cpu" and (long_rows or stage == "dpo")
    micro = training.micro_batch_size or (1 if one_per_pass else settings.batch_size)
    micro = min(micro, settings.batch_size)
    if stage == "kto":  # KTO estimates its KL term from mismatched pairs within a batch
        micro = max(2, micro)
    accumulation = settings.gradient_accumulation_steps * max(1, -(-settings.batch_size // micro))
    if training.gradient_checkpointing == "auto":
        checkpointing = device == "cpu" and stage in ("dpo", "kto") and long_rows
    else:
        checkpointing = training.gradient_checkpointing == "on"
    return MemoryPlan(per_device_batch=micro, accumulation=accumulation, checkpointing=checkpointing)


def lora_config(settings: LoraSettings) -> "LoraConfig":
    """Our LoRA settings as peft's `LoraConfig` (all-linear by default; lm_head is never adapted)."""
    from peft import LoraConfig

    targets = settings.target_modules
    if isinstance(targets, list):
        # peft refuses LoRA on the (tied) output embedding; drop it rather than fail a nightly run.
        targets = [name for name in targets if name != "lm_head"]
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")


def precision_arguments(device: str, dtype: "torch.dtype") -> dict[str, Any]:
    """Trainer precision flags from the hardware: trl defaults to bf16, which raises on CPU."""
    import torch

    if device == "cpu":
        return {"use_cpu": True, "bf16": False, "fp16": False}
    return {"use_cpu": False, "bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}


def common_arguments(settings: StageSettings, *, scratch_dir: Path, seed: int, device: str,
                     dtype: "torch.dtype", progress: bool, memory: MemoryPlan | None = None) -> dict[str, Any]:
    """Arguments every stage shares: batch, schedule, precision, seeds, no checkpoints, no trackers.

    Without `memory` the batch is one forward pass and activations are kept.
    """
    memory = memory or MemoryPlan(per_device_batch=settings.batch_size,
                                  accumulation=settings.gradient_accumulation_steps,
                                  checkpointing=GRADIENT_CHECKPOINTING)
    return {
        "output_dir": str(scratch_dir),
        "per_device_train_batch_size": memory.per_device_batch,
        "gradient_accumulation_steps": memory.accumulation,
        "learning_rate": settings.learning_rate,
        "num_train_epochs": settings.epochs,
        "max_steps": settings.max_steps,
        "max_length": settings.max_length,
        "logging_steps": 1,
        "save_strategy": "no",  # the adapter is saved once, atomically, by the caller
        "report_to": "none",
        "seed": seed,
        "data_seed": seed,
        "disable_tqdm": not progress,
        # transformers 5 renamed gradient_checkpointing (trl defaults it to True) to this:
        "activation_checkpointing": memory.checkpointing,
        "dataloader_num_workers": 0,
        **precision_arguments(device, dtype),
    }


def kto_class_weights(rows: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) balancing the two classes as trl's KTO docs advise.

    The docs ask for desirable_weight × n_desirable / (undesirable_weight × n_undesirable) in
    [1, 4/3]; we weight the rarer class up so the ratio is exactly 1.
    """
    desirable = sum(1 for row in rows if row["label"])
    undesirable = len(rows) - desirable
    if desirable == 0 or undesirable == 0:
        return 1.0, 1.0
    if desirable < undesirable:
        return undesirable / desirable, 1.0
    return 1.0, desirable / undesirable


@dataclass
class StageStats:
    """What one stage did, recorded in the adapter manifest and the cycle row."""

    examples: int
    steps: int
    train_loss: float | None
    seconds: float
    tokens_per_second: float
    peak_rss_mb: float
    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _monitor_callback(stage: str) -> Any:
    """A trainer callback that logs every logged metric and samples the process's memory."""
    import psutil
    from transformers import TrainerCallback

    class StageMonitor(TrainerCallback):
        def __init__(self) -> None:
            self.process = psutil.Process()
            self.peak_rss = self.process.memory_info().rss
            self.last_logs: dict[str, Any] = {}

        def _sample(self) -> None:
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - trainer callback API
            self._sample()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self._sample()

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            self.last_logs = dict(logs or {})
            logger.info("%s step %d/%d: %s", stage, state.global_step, state.max_steps,
                        {k: round(v, 5) if isinstance(v, float) else v for k, v in self.last_logs.items()})

    return StageMonitor()


def _dataset_tokens(dataset: Any) -> int:
    """Tokens one epoch of the tokenised dataset feeds the model (DPO: prompt twice)."""
    columns = set(dataset.column_names)
    total = 0
    if "input_ids" in columns:  # SFT
        total += sum(len(ids) for ids in dataset["input_ids"])
    if "chosen_ids" in columns:  # DPO: prompt+chosen and prompt+rejected
        total += sum(2 * len(p) for p in dataset["prompt_ids"])
        total += sum(len(ids) for ids in dataset["chosen_ids"]) + sum(len(ids) for ids in dataset["rejected_ids"])
    elif "completion_ids" in columns:  # KTO: prompt+completion (its KL pass doubles the work)
        total += 2 * sum(len(p) + len(c) for p, c in zip(dataset["prompt_ids"], dataset["completion_ids"]))
    return total


def build_trainer(stage: str, *, model: Any, tokenizer: Any, rows: list[dict[str, Any]],
                  settings: StageSettings, common: dict[str, Any], peft_config: Any | None,
                  callbacks: Sequence[Any] = ()) -> Any:
    """The trl trainer of `stage` over `rows`, ready to `train()`."""
    from datasets import Dataset

    dataset = Dataset.from_list(rows)
    if stage == "sft":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**common, completion_only_loss=True, packing=False)
        trainer_cls: Any = SFTTrainer
    elif stage == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, beta=settings.beta, loss_type=list(settings.loss_type))
        trainer_cls = DPOTrainer
    elif stage == "kto":
        from trl import KTOConfig, KTOTrainer

        desirable, undesirable = kto_class_weights(rows)
        # KTO estimates its KL term from mismatched pairs within a batch: it needs two or more.
        batch = max(2, min(common["per_device_train_batch_size"], len(rows)))
        args = KTOConfig(**{**common, "per_device_train_batch_size": batch}, beta=settings.beta,
                         desirable_weight=desirable, undesirable_weight=undesirable,
                         dataloader_drop_last=True)
        trainer_cls = KTOTrainer
    else:
        raise ValueError(f"unknown stage {stage!r}")
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=peft_config, callbacks=list(callbacks))
    return trainer


@contextlib.contextmanager
def labelled_positions_only() -> Iterator[bool]:
    """While it lasts, trl's fused LM head scores only the positions that carry a label on a CPU too.

    trl 1.16 projects hidden states through the LM head (576 × 49152 for SmolLM2) only where the
    next-token label is not -100 on Triton devices, and at every position elsewhere: XLA devices
    would recompile for each new count of labelled positions. A CPU does not compile, so scoring
    the prompt there is pure waste, and chat rows are mostly prompt (82% of the tokens of the
    benchmark's DPO rows). Measured on SmolLM2 with 2 threads: 24 SFT rows 54.5 → 42.8 s, 16 DPO
    pairs 84.1 → 63.5 s, the same loss to the last digit. The choice is the module-level
    `_use_triton` that `trl.trainer.utils` imported; the kernels keep their own reference, so
    they still take the plain-torch path. Yields whether the switch was made: a trl without
    that name trains as before, only slower.
    """
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:  # pragma: no cover - trl is a dependency
        yield False
        return
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        logger.warning("trl.trainer.utils has no _use_triton: the LM head scores every position on a CPU")
        yield False
        return

    def compact_on_cpu(device: Any) -> bool:
        return device.type == "cpu" or original(device)

    trl_utils._use_triton = compact_on_cpu
    try:
        yield True
    finally:
        trl_utils._use_triton = original


def run_stage(stage: str, *, model: Any, tokenizer: Any, rows: list[dict[str, Any]],
              settings: StageSettings, common: dict[str, Any], peft_config: Any | None,
              callbacks: Sequence[Any] = ()) -> tuple[Any, StageStats]:
    """Train one stage; returns the trained `PeftModel` and the stage's statistics."""
    monitor = _monitor_callback(stage)
    started = time.perf_counter()
    trainer = build_trainer(stage, model=model, tokenizer=tokenizer, rows=rows, settings=settings,
                            common=common, peft_config=peft_config, callbacks=[monitor, *callbacks])
    logger.info("%s: %d rows, %d tokenised examples", stage, len(rows), len(trainer.train_dataset))
    # A DPO pair's chosen and rejected replies share their prompt: compute it once (training.prompt_sharing).
    shared_prompts = prompts_computed_once(trainer.model) if stage == "dpo" else contextlib.nullcontext()
    with labelled_positions_only(), shared_prompts:
        output = trainer.train()
    seconds = time.perf_counter() - started
    epochs_done = float(trainer.state.epoch or 0.0)
    tokens = _dataset_tokens(trainer.train_dataset) * epochs_done
    extra: dict[str, Any] = {k: v for k, v in monitor.last_logs.items()
                             if isinstance(v, (int, float)) and k not in ("epoch",)}
    if stage == "kto":
        extra["desirable_weight"] = trainer.args.desirable_weight
        extra["undesirable_weight"] = trainer.args.undesirable_weight
    stats = StageStats(
        examples=len(trainer.train_dataset), steps=int(trainer.state.global_step),
        train_loss=float(output.training_loss) if output.training_loss is not None else None,
        seconds=round(seconds, 2), tokens_per_second=round(tokens / seconds, 1) if seconds > 0 else 0.0,
        peak_rss_mb=round(monitor.peak_rss / 2**20, 1), extra=extra)
    logger.info("%s done: %s", stage, stats.to_dict())
    trained = trainer.accelerator.unwrap_model(trainer.model)
    # trl's DPO/KTO add a frozen "ref" adapter (a copy of the starting state) as their reference.
    # It is scaffolding: drop it so the next stage copies the *current* state as its reference
    # and only the trained adapter is ever saved.
    if "ref" in getattr(trained, "peft_config", {}):
        trained.delete_adapter("ref")
        trained.set_adapter("default")
    return trained, stats
