"""The training entry point a cycle runs in a child process: SFT → DPO → KTO → one adapter folder.

`run_training(job)` reads the datasets the cycle wrote (sft/dpo/kto.jsonl, any may be missing),
loads the base model, continues `job.init_adapter` or starts a new LoRA, runs each stage that has
rows, and writes the adapter folder atomically (training.artifacts). It knows nothing of the
database or Telegram: everything it needs is in the `TrainJob`.

Reference models: DPO continues the adapter SFT produced and, given that PeftModel and no
`ref_model`, trl 1.16 copies it into a frozen "ref" adapter: the reference is the SFT state (see
tests/training/test_train.py). KTO after DPO takes the post-DPO state as its reference the same way.

Rows whose prompt alone fills a stage's `max_length` are dropped here, before any trainer is built:
trl 1.16 drops them itself (nothing of the completion would be left to learn from), and a stage
left with no rows would crash its sampler with `num_samples=0` after trl had already changed the
model. A stage with no usable rows is skipped with the reason recorded; the others still train.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from training.artifacts import staged_folder, write_manifest
from training.config import LoraSettings, ModelSettings, StageSettings, TrainingSettings
from training.datasets import END_OF_TURN, read_datasets
from training.errors import NothingToTrain

if TYPE_CHECKING:  # pragma: no cover
    from training.stages import MemoryPlan

logger = logging.getLogger(__name__)

STAGES = ("sft", "dpo", "kto")
ROW_NOUNS = {"sft": "SFT rows", "dpo": "DPO pairs", "kto": "KTO rows"}


@dataclass
class TrainJob:
    """Everything one training run needs; picklable, so a cycle can hand it to a child process."""

    model: ModelSettings
    lora: LoraSettings
    training: TrainingSettings
    models_dir: Path
    datasets_dir: Path  # sft.jsonl / dpo.jsonl / kto.jsonl; any may be missing or empty
    init_adapter: Path | None  # continue this adapter; None starts a new one
    output_dir: Path  # the final adapter folder; must not exist yet
    log_file: Path
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. the cycle id, recorded in the manifest


@dataclass
class TrainResult:
    adapter_dir: Path
    stages: dict[str, dict[str, Any]]  # per stage run: examples, steps, train_loss, seconds, ...
    checksum: str
    skipped: dict[str, str] = field(default_factory=dict)  # stage -> why it did not run


def plan_stages(rows: dict[str, list[dict[str, Any]]], training: TrainingSettings) -> tuple[list[str], dict[str, str]]:
    """Which stages run, in order, and why the others do not."""
    planned: list[str] = []
    skipped: dict[str, str] = {}
    for stage in STAGES:
        stage_rows = rows.get(stage, [])
        if not getattr(training, stage).enabled:
            skipped[stage] = "disabled in config"
        elif not stage_rows:
            skipped[stage] = "no rows"
        elif stage == "kto" and len(stage_rows) < 2:
            skipped[stage] = "KTO needs at least two rows (its KL term pairs examples within a batch)"
        elif stage == "kto" and all(row["label"] for row in stage_rows):
            # With only desirable rows KTO is a weaker SFT pass over texts SFT already saw.
            skipped[stage] = "no undesirable rows"
        else:
            planned.append(stage)
    return planned, skipped


def fit_max_length(rows: dict[str, list[dict[str, Any]]], training: TrainingSettings, *,
                   prompt_tokens: Callable[[str], int]) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """(rows that fit, a note per stage that lost rows): keep the rows whose prompt is shorter than
    the stage's `max_length`, as trl 1.16 does (its `keep_start` truncation would cut the whole
    completion away). `prompt_tokens` counts a prompt's tokens as trl does (`tokenizer(text=...)`).

    Filtering here, rather than letting trl do it, keeps KTO's batch size and class weights and
    the stage statistics true to the rows that really train.
    """
    fitted: dict[str, list[dict[str, Any]]] = dict(rows)
    notes: dict[str, str] = {}
    for stage in STAGES:
        stage_rows = rows.get(stage, [])
        if not stage_rows:
            continue
        max_length = getattr(training, stage).max_length
        lengths = [prompt_tokens(row["prompt"]) for row in stage_rows]
        kept = [row for row, length in zip(stage_rows, lengths) if length < max_length]
        fitted[stage] = kept
        if len(kept) < len(stage_rows):
            notes[stage] = (f"{len(kept)} of {len(stage_rows)} {ROW_NOUNS[stage]} fit max_length {max_length} "
                            f"(longest prompt {max(lengths)} tokens)")
    return fitted, notes


def longest_row_tokens(rows: Sequence[dict[str, Any]], count_tokens: Callable[[str], int]) -> int:
    """Tokens of the stage's longest sequence: the prompt plus its longest completion (DPO: chosen or rejected)."""
    longest = 0
    for row in rows:
        completions = [row[key] for key in ("completion", "chosen", "rejected") if key in row]
        longest = max(longest, count_tokens(row["prompt"] + max(completions, key=len, default="")))
    return longest


# A stage's min_steps never makes it pass over its rows more often than this.
MAX_PASSES = 4


def steps_to_train(examples: int, settings: StageSettings, memory: MemoryPlan) -> int | None:
    """The optimizer steps a stage is held to (trainer `max_steps`), or None to run its `epochs`.

    `max_steps` > 0 caps the stage; otherwise `min_steps` lifts a stage with few rows to that many
    steps, repeating them at most MAX_PASSES times (the gate still refuses an overfit adapter).
    """
    if settings.max_steps > 0:
        return settings.max_steps
    per_epoch = max(1, -(-examples // memory.per_device_batch) // memory.accumulation)  # as transformers counts
    planned = math.ceil(settings.epochs * per_epoch)
    lifted = min(settings.min_steps, MAX_PASSES * per_epoch)
    return lifted if lifted > planned else None


def replan_after_fitting(planned: list[str], fitted: dict[str, list[dict[str, Any]]], notes: dict[str, str],
                         training: TrainingSettings) -> tuple[list[str], dict[str, str]]:
    """The planned stages that still have usable rows after `fit_max_length`, and why the others lost theirs."""
    replanned, reasons = plan_stages(fitted, training)
    still: list[str] = []
    skipped: dict[str, str] = {}
    for stage in planned:
        if stage in replanned:
            still.append(stage)
            if stage in notes:
                logger.warning("%s: %s; training on those", stage, notes[stage])
            continue
        # "no rows" only repeats the note; any other reason (e.g. KTO's) says what the rest lacks.
        reason = reasons[stage]
        skipped[stage] = notes[stage] if reason == "no rows" else f"{notes[stage]}; {reason}"
        logger.warning("%s skipped: %s", stage, skipped[stage])
    return still, skipped


def _check_rows(rows: dict[str, list[dict[str, Any]]], eos_token: str) -> None:
    """Completions must end with the tokenizer's eos exactly once (see training.datasets)."""
    if eos_token != END_OF_TURN:
        logger.warning("the tokenizer's eos %r differs from the end-of-turn token %r: trl appends its eos "
                       "after ours", eos_token, END_OF_TURN)
    for stage, keys in (("sft", ("completion",)), ("dpo", ("chosen", "rejected")), ("kto", ("completion",))):
        for row in rows.get(stage, []):
            for key in keys:
                if not row[key].endswith(END_OF_TURN):
                    raise ValueError(f"{stage} row has a {key} without the end-of-turn token: {row[key][-40:]!r}")


@contextlib.contextmanager
def _discarded(output_dir: Path) -> Iterator[Path]:
    """A folder beside `output_dir` for a rank that is not the main one: written, then removed."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-rank-", dir=output_dir.parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _run_log(path: Path) -> Iterator[None]:
    """Send this run's log records (ours, trl's, transformers') to `path` while it lasts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    # transformers' library logger does not propagate to the root, so it gets the handler itself.
    targets = [logging.getLogger(), logging.getLogger("transformers")]
    previous = [target.level for target in targets]
    for target in targets:
        target.addHandler(handler)
        if target.level == logging.NOTSET or target.level > logging.INFO:
            target.setLevel(logging.INFO)
    try:
        yield
    finally:
        for target, level in zip(targets, previous):
            target.removeHandler(handler)
            target.setLevel(level)
        handler.close()


def run_training(job: TrainJob, progress: bool = True, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train an adapter from `job`'s datasets and write it to `job.output_dir`.

    Raises NothingToTrain when no enabled stage has rows, or none has rows that fit its
    `max_length`; a stage left without usable rows is skipped and listed in `TrainResult.skipped`.
    On any error the output folder does not appear. `callbacks` are extra
    `transformers.TrainerCallback`s given to every stage.
    """
    rows = read_datasets(job.datasets_dir)
    planned, skipped = plan_stages(rows, job.training)
    if not planned:
        raise NothingToTrain("nothing to train: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    with _run_log(Path(job.log_file)):
        logger.info("training %s from %s: stages %s (skipped: %s)", job.output_dir, job.datasets_dir,
                    planned, skipped)
        started = time.perf_counter()
        result = _train(job, rows, planned, skipped, progress, callbacks)
        logger.info("training finished in %.1f s: %s", time.perf_counter() - started, result.adapter_dir)
        return result


def _train(job: TrainJob, rows: dict[str, list[dict[str, Any]]], planned: list[str], skipped: dict[str, str],
           progress: bool, callbacks: Sequence[Any]) -> TrainResult:
    from transformers import set_seed

    from training.model import load_model, load_tokenizer, resolve_base_model, select_device, select_dtype
    from training.stages import common_arguments, lora_config, memory_plan, run_stage

    from training.launch import is_main_process

    set_seed(job.training.seed)
    base = resolve_base_model(job.model, Path(job.models_dir))
    device = select_device(job.model)
    if device == "cuda" and os.environ.get("LOCAL_RANK"):  # one GPU per rank under `accelerate launch`
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    main_process = is_main_process()
    dtype = select_dtype(job.model, device)
    tokenizer = load_tokenizer(base)
    _check_rows(rows, tokenizer.eos_token)
    data_counts = {stage: len(rows.get(stage, [])) for stage in STAGES}  # as the cycle wrote them
    def count_tokens(text: str) -> int:  # as trl tokenizes a prompt
        return len(tokenizer(text=text)["input_ids"])

    rows, notes = fit_max_length(rows, job.training, prompt_tokens=count_tokens)
    planned, lost = replan_after_fitting(planned, rows, notes, job.training)
    skipped = {stage: lost.get(stage) or skipped[stage] for stage in STAGES if stage in lost or stage in skipped}
    if not planned:  # before the model loads and any folder is staged
        raise NothingToTrain("nothing to train: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    model: Any = load_model(base, job.model, device=device, dtype=dtype, for_training=True)
    peft_config: Any = None
    if job.init_adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(job.init_adapter), is_trainable=True)
    else:
        peft_config = lora_config(job.lora)

    stats: dict[str, dict[str, Any]] = {}
    output_dir = Path(job.output_dir)
    # Under `accelerate launch` every rank trains but only the main one writes the adapter folder.
    with (staged_folder(output_dir) if main_process else _discarded(output_dir)) as staging:
        scratch = Path(tempfile.mkdtemp(prefix=".trainer-", dir=staging.parent))
        try:
            for stage in planned:
                settings = getattr(job.training, stage)
                memory = memory_plan(stage, settings, job.training, device,
                                     longest_row_tokens=longest_row_tokens(rows[stage], count_tokens))
                common = common_arguments(settings, scratch_dir=scratch / stage, seed=job.training.seed,
                                          device=device, dtype=dtype, progress=progress, memory=memory)
                steps = steps_to_train(len(rows[stage]), settings, memory)
                if steps is not None:
                    common["max_steps"] = steps
                model, stage_stats = run_stage(stage, model=model, tokenizer=tokenizer, rows=rows[stage],
                                               settings=getattr(job.training, stage), common=common,
                                               peft_config=peft_config, callbacks=callbacks)
                peft_config = None  # from now on the model carries the adapter
                stats[stage] = stage_stats.to_dict()
                stats[stage]["extra"]["memory_plan"] = dataclasses.asdict(memory)
                if steps is not None and settings.max_steps <= 0:
                    stats[stage]["extra"]["min_steps"] = f"{steps} steps over {len(rows[stage])} rows (min_steps)"
                if stage in notes:
                    stats[stage]["extra"]["fit_max_length"] = notes[stage]
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        # Only the trained adapter ("default"): trl's "ref" copy was already dropped per stage.
        model.save_pretrained(str(staging), selected_adapters=["default"])
        # peft also writes a generic model card; the manifest is our record, so leave it out.
        (staging / "README.md").unlink(missing_ok=True)
        manifest = write_manifest(staging, {
            "base_model": job.model.base,
            "base_model_path": str(base),
            "init_adapter": str(job.init_adapter) if job.init_adapter else None,
            "data_counts": data_counts,
            "hyperparameters": {"lora": dataclasses.asdict(job.lora),
                                "training": dataclasses.asdict(job.training),
                                "precision": str(dtype).removeprefix("torch."), "device": device},
            "stages": stats,
            "skipped": skipped,
            "metadata": job.metadata,
        })
    return TrainResult(adapter_dir=output_dir, stages=stats, checksum=manifest["checksum"], skipped=skipped)
