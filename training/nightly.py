"""The training child's job, `run_job(job.json)`: datasets, training, evaluation and the gate.

One night runs one way: the cycle (loop.cycle) writes `examples.json` (training.examples' JSON) and
`job.json` (settings as dicts) into the cycle's folder, loop.child starts a process that calls
`run_job`, and the result it returns holds the gate's verdict (`result["gate"]`, training.ladder):
the parent records it and does not judge again. This module builds the SFT/DPO/KTO rows with the
one prompt renderer (training.datasets), trains (training.train), evaluates the candidate against
the active adapter and the base model (training.evaluate) and climbs the strength ladder.

It never touches the database or Telegram; the process around it (spawn, priority, memory limits,
writing `result.json` atomically) is loop.child's. Heavy imports stay inside the functions, so
the parent can import the job's JSON helpers without loading torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from training.config import (
    EvaluationSettings,
    GenerationSettings,
    LoraSettings,
    ModelSettings,
    TrainingSettings,
    training_settings_from_json,
)
from training.examples import feedback_from_json, replay_sample, writing_from_json
from training.ladder import FULL_STRENGTH, Verdict, climb

logger = logging.getLogger(__name__)

EXAMPLES_FILE = "examples.json"
DATASETS_DIR = "datasets"


# Settings <-> JSON ------------------------------------------------------------------------------

def settings_to_json(value: Any) -> dict[str, Any]:
    return dataclasses.asdict(value)


def peak_rss_mb() -> float:
    """The peak resident memory of this process so far, in MB.

    On Linux this is VmHWM: `ru_maxrss` survives exec, so a child started by a parent holding a
    model would report the parent's memory as its own (measured: 1.5 GB parent, 13 MB child,
    ru_maxrss 1513 MB). Elsewhere ru_maxrss (macOS reports bytes).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


# The work ------------------------------------------------------------------------------------

def build_datasets(job: dict[str, Any], model: ModelSettings, training: TrainingSettings, folder: Path) -> dict[str, int]:
    """Render the collected examples into trl rows with the one prompt renderer and write them."""
    from training.datasets import build_dpo_rows, build_sft_rows, make_renderer, write_datasets
    from training.model import load_tokenizer, resolve_base_model

    examples = json.loads((folder / EXAMPLES_FILE).read_text(encoding="utf-8"))
    feedback = [feedback_from_json(item) for item in examples["train_feedback"]]
    writing = [writing_from_json(item) for item in examples["train_writing"]]
    tokenizer = load_tokenizer(resolve_base_model(model, Path(job["models_dir"])))
    render = make_renderer(tokenizer, model)
    rows = {
        "sft": build_sft_rows(feedback, writing, render=render, replay_fraction=training.replay_fraction,
                              seed=training.seed, tokenizer=tokenizer, chunk_tokens=training.monologue_chunk_tokens,
                              first_cycle_writing=training.first_cycle_writing),
        "dpo": build_dpo_rows(feedback, render=render),
        "kto": _kto_rows(feedback, writing, training, render) if feedback else [],
    }
    return write_datasets(rows, folder / DATASETS_DIR)


def _kto_rows(feedback: list[Any], writing: list[Any], training: TrainingSettings, render: Any) -> list[dict[str, Any]]:
    """KTO learns the verdicts DPO cannot use (accepts, rejects without a replacement), or all of
    them when DPO is off; plus imported replies as desirable texts (docs/architecture.md), but only a
    replay-sized sample: all of a large import in every cycle would drown the verdicts and cost hours.
    With `training.kto.desirable_ratio` > 0 the desirable rows are cut to that many per undesirable one."""
    from training.datasets import balance_kto_rows, build_kto_rows

    verdict_rows = build_kto_rows(feedback, [], render=render, paired=not training.dpo.enabled)
    replies = [item for item in writing if item.kind == "reply" and item.conversation is not None]
    replay = replay_sample(replies, fraction=training.replay_fraction, of=len(verdict_rows), seed=training.seed)
    return balance_kto_rows(build_kto_rows([], replay, render=render) + verdict_rows,
                            desirable_ratio=training.kto.desirable_ratio, seed=training.seed)


def run_job(job_path: Path) -> dict[str, Any]:
    """Everything the child does; returns the result that is written to result.json."""
    from training.launch import train as run_training  # in this process, or under `accelerate launch`
    from training.train import NothingToTrain, TrainJob

    job = json.loads(job_path.read_text(encoding="utf-8"))
    folder = job_path.parent
    model = ModelSettings(**job["model"])
    lora = LoraSettings(**job["lora"])
    training = training_settings_from_json(job["training"])
    evaluation = EvaluationSettings(**job["evaluation"])
    generation = GenerationSettings(**job["generation"])
    result: dict[str, Any] = {"stages": {}}

    started = time.perf_counter()
    result["datasets"] = build_datasets(job, model, training, folder)
    result["stages"]["datasets"] = {"seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": peak_rss_mb()}
    logger.info("datasets: %s", result["datasets"])

    train_job = TrainJob(model=model, lora=lora, training=training, models_dir=Path(job["models_dir"]),
                         datasets_dir=folder / DATASETS_DIR,
                         init_adapter=Path(job["init_adapter"]) if job["init_adapter"] else None,
                         output_dir=Path(job["output_dir"]), log_file=folder / "train.log",
                         metadata=job.get("metadata", {}))
    started = time.perf_counter()
    try:
        trained = run_training(train_job, progress=job.get("progress", False))
    except NothingToTrain as error:
        result["nothing_to_train"] = str(error)
        return result
    for stage, stats in trained.stages.items():
        result["stages"][stage] = {"seconds": round(float(stats.get("seconds", 0.0)), 2),
                                   "peak_rss_mb": stats.get("peak_rss_mb"), "steps": stats.get("steps"),
                                   "train_loss": stats.get("train_loss"), "examples": stats.get("examples")}
    result["train"] = {"adapter_dir": str(trained.adapter_dir), "checksum": trained.checksum,
                       "skipped": trained.skipped, "seconds": round(time.perf_counter() - started, 2)}

    examples = json.loads((folder / EXAMPLES_FILE).read_text(encoding="utf-8"))
    active_dir = Path(job["active_adapter"]) if job["active_adapter"] else None
    started = time.perf_counter()
    metrics, verdict = _evaluate_and_judge(job, model, generation, evaluation, examples,
                                           candidate_dir=trained.adapter_dir, active_dir=active_dir)
    result["stages"]["evaluate"] = {"seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": peak_rss_mb(),
                                    "strengths_tried": len(verdict.rungs)}
    if verdict.strength < FULL_STRENGTH:
        result["train"]["checksum"] = _put_milder_in_place(trained.adapter_dir, verdict.strength)
    _remove_milder_versions(trained.adapter_dir)
    result["metrics"] = metrics
    result["gate"] = verdict.to_json()
    if verdict.promote:
        serving = _ready_for_drafting(model, generation, Path(job["models_dir"]), trained.adapter_dir)
        if serving is not None:
            result["stages"]["serving"] = serving
        # What the promoted adapter learnt, for the report, if it fits insight.cycle_budget_s (issue 19).
        from training.insight import insight_for_cycle

        result["insight"] = insight_for_cycle(job, folder=folder, adapter_dir=trained.adapter_dir)
        if "seconds" in result["insight"]:
            result["stages"]["insight"] = {"seconds": result["insight"]["seconds"], "peak_rss_mb": peak_rss_mb()}
    return result


def _milder_dir(candidate_dir: Path, strength: float) -> Path:
    # Named like a staging folder, so a killed child's leftovers go with the others (cycle._clean_leftovers).
    return candidate_dir.parent / f".{candidate_dir.name}.tmp-strength-{round(strength * 100)}"


def _evaluate_and_judge(job: dict[str, Any], model: ModelSettings, generation: GenerationSettings,
                        evaluation: EvaluationSettings, examples: dict[str, Any], *, candidate_dir: Path,
                        active_dir: Path | None) -> tuple[dict[str, Any], Verdict]:
    """Evaluate candidate, active and base on the held-out data, then climb the strength ladder
    (training.ladder) on the same loaded model; returns (metrics by name, the verdict)."""
    from functools import partial

    from training.inference.engine import Engine
    from training.evaluate import evaluate
    from training.strength import reference_fits, write_milder_adapter

    models_dir = Path(job["models_dir"])
    adapters: dict[str, Path | None] = {"candidate": candidate_dir}
    if active_dir is not None:
        adapters["active"] = active_dir
    adapters["base"] = None
    engine = Engine.load(model, models_dir, max_adapters=len(adapters) + 1,
                         llamacpp_weights=generation.llamacpp_weights)
    kept_scores = _kept_scores(job, model, generation, models_dir)
    run = partial(evaluate, model_settings=model, generation=generation, models_dir=models_dir,
                  heldout_feedback=[feedback_from_json(item) for item in examples["heldout_feedback"]],
                  heldout_writing=[writing_from_json(item) for item in examples["heldout_writing"]],
                  owner_lines=examples["owner_lines"], other_lines=examples["other_lines"],
                  eval_settings=evaluation, seed=generation.seed, engine=engine, kept_scores=kept_scores)
    metrics = run(adapters=adapters)
    if "active" not in metrics:  # the base model is the active one (version 0)
        metrics["active"] = metrics.get("base", {})
    # Towards the active adapter when the candidate continued from one of the same shape, else towards the base.
    reference = active_dir if active_dir is not None and reference_fits(candidate_dir, active_dir) else None

    def evaluate_at(strength: float) -> dict[str, Any]:
        folder = write_milder_adapter(candidate_dir, reference, strength, _milder_dir(candidate_dir, strength))
        name = f"strength-{round(strength * 100)}"
        measured = run(adapters={name: folder})
        engine.unload_adapter(f"eval-{name}")
        return measured[name]

    verdict = climb(candidate=metrics["candidate"], active=metrics["active"], settings=evaluation,
                    strengths=evaluation.milder_strengths, evaluate_at=evaluate_at)
    if kept_scores is not None:  # a milder strength's scores too: it may be tomorrow's active adapter
        kept_scores.save()
    if verdict.strength < FULL_STRENGTH:
        metrics["full_strength"] = metrics["candidate"]
        metrics["candidate"] = verdict.metrics
    return metrics, verdict


def _kept_scores(job: dict[str, Any], model: ModelSettings, generation: GenerationSettings,
                 models_dir: Path) -> Any:
    """The held-out scores kept by earlier nights, when the job names their file (None: score afresh)."""
    if not job.get("kept_scores"):
        return None
    from training.kept_scores import KeptScores, identity
    from training.model import resolve_base_model

    base_path = resolve_base_model(model, models_dir)
    return KeptScores.load(Path(job["kept_scores"]), identity(model, base_path, generation, generation.seed))


def _put_milder_in_place(candidate_dir: Path, strength: float) -> str:
    """Replace the candidate's folder by its version at `strength`; returns that version's checksum.

    The full-strength folder steps aside under a staging name first, so a kill in between leaves
    only staging folders, which the next cycle removes, and no adapter row points here yet.
    """
    from training.artifacts import read_manifest

    milder = _milder_dir(candidate_dir, strength)
    aside = candidate_dir.parent / f".{candidate_dir.name}.tmp-full-{os.getpid()}"
    os.rename(candidate_dir, aside)
    os.rename(milder, candidate_dir)
    shutil.rmtree(aside, ignore_errors=True)
    return str(read_manifest(candidate_dir)["checksum"])


def _remove_milder_versions(candidate_dir: Path) -> None:
    for folder in candidate_dir.parent.glob(f".{candidate_dir.name}.tmp-strength-*"):
        shutil.rmtree(folder, ignore_errors=True)


def _ready_for_drafting(model: ModelSettings, generation: GenerationSettings, models_dir: Path,
                        adapter_dir: Path) -> dict[str, Any] | None:
    """Convert a candidate the gate promotes for fast drafting (llama.cpp or CTranslate2), here
    and now: otherwise the owner's first draft after the promotion waits for it (on SmolLM2, 2 cores,
    about 5 s for llama.cpp, 10-13 s for CTranslate2). A milder version evaluated on a converted
    backend already carries its copy.

    A failure is logged, not raised: the drafter then converts on its first draft. None when
    nothing was done.
    """
    from training.inference.serving import prepare_for_drafting

    started = time.perf_counter()
    try:
        folder = prepare_for_drafting(model, generation.backend, models_dir, adapter_folder=adapter_dir,
                                      llamacpp_weights=generation.llamacpp_weights)
    except Exception as error:  # noqa: BLE001 - drafting converts on demand instead
        logger.warning("converting the candidate for drafting failed (the first draft will do it): %s", error)
        return None
    if folder is None:  # drafting uses transformers: nothing to convert
        return None
    return {"seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": peak_rss_mb()}
