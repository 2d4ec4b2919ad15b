"""The training subprocess of a cycle, both sides: `run_child` starts and watches it from the
cycle; `main` is the child, `python -m loop.child <cycle folder>/job.json`.

The child builds the datasets from the collected examples, trains (training.train), evaluates the
candidate against the active adapter and the base model (training.evaluate), and writes
`result.json` atomically. The parent (the bot or the CLI) never loads a model: if this process
dies (killed, out of memory, a crash) the parent sees the exit status, the adapter folder was
never renamed into place, and the active adapter is untouched.

The job file is plain JSON (settings as dicts, examples as dicts) so it can be read by a person
and re-run by hand: `python -m loop.child data/owners/<id>/cycles/<cycle>/job.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from loop.config import TOKEN_ENV
from loop.ladder import FULL_STRENGTH, Verdict, climb
from training.config import (
    EvaluationSettings,
    GenerationSettings,
    LoraSettings,
    ModelSettings,
    StageSettings,
    TrainingSettings,
)

logger = logging.getLogger("loop.child")  # not __name__: run with -m, that is "__main__"

HEARTBEAT_EVERY_S = 30.0
POLL_S = 0.5
LOG_TAIL_LINES = 6
RESULT_FILE = "result.json"
EXAMPLES_FILE = "examples.json"
DATASETS_DIR = "datasets"
PID_FILE = "child.pid"
EXIT_NOTHING_TO_TRAIN = 3


class ChildFailed(Exception):
    """The child ended without a result; the message is the reason shown to the owner."""


# Settings <-> JSON ------------------------------------------------------------------------------

def settings_to_json(value: Any) -> dict[str, Any]:
    return dataclasses.asdict(value)


def training_from_json(data: dict[str, Any]) -> TrainingSettings:
    values = dict(data)
    for stage in ("sft", "dpo", "kto"):
        values[stage] = StageSettings(**values[stage])
    return TrainingSettings(**values)


def write_json_atomic(path: Path, data: Any) -> None:
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(staging, path)


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


def lower_priority() -> dict[str, Any]:
    """Train at the lowest CPU priority, so the bot's drafts keep their speed while a cycle runs.

    Measured before (2 cores): drafts took 8.4 s at the median during a cycle instead of 0.7 s, with
    the child at nice 0. SCHED_IDLE (Linux) runs the child only on otherwise idle cores; elsewhere
    nice 19. Returns what was set, for the cycle's record.

    TWIN_CHILD_PRIORITY=normal keeps the parent's priority: for a benchmark that shares the CPU with
    other work, where an idle-priority child would wait for cores that are never idle.
    """
    applied: dict[str, Any] = {}
    if os.environ.get("TWIN_CHILD_PRIORITY", "").strip().lower() == "normal":
        return {"policy": "normal (TWIN_CHILD_PRIORITY)"}
    try:
        applied["nice"] = os.nice(19 - os.nice(0))
    except OSError as error:  # pragma: no cover - a sandbox that forbids it
        logger.debug("could not lower the niceness: %s", error)
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            applied["policy"] = "idle"
        except OSError as error:  # pragma: no cover
            logger.debug("SCHED_IDLE refused: %s", error)
    return applied


def die_with_parent() -> None:
    """Ask the kernel to kill us if the parent dies, so no orphan keeps training (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # pragma: no cover - unusual libc
        logger.debug("prctl unavailable; the child may outlive a killed parent")


# The work ------------------------------------------------------------------------------------

def build_datasets(job: dict[str, Any], model: ModelSettings, training: TrainingSettings, folder: Path) -> dict[str, int]:
    """Render the collected examples into trl rows with the one prompt renderer and write them."""
    from loop.collect import feedback_from_json, writing_from_json
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
    replay-sized sample: all of a large import in every cycle would drown the verdicts and cost hours."""
    import random

    from training.datasets import build_kto_rows

    verdict_rows = build_kto_rows(feedback, [], render=render, paired=not training.dpo.enabled)
    replies = [item for item in writing if item.kind == "reply" and item.conversation is not None]
    size = min(len(replies), round(training.replay_fraction * len(verdict_rows)))
    replay = random.Random(training.seed).sample(replies, size)
    return build_kto_rows([], replay, render=render) + verdict_rows


def run_job(job_path: Path) -> dict[str, Any]:
    """Everything the child does; returns the result that is written to result.json."""
    from training.train import NothingToTrain, TrainJob, run_training

    job = json.loads(job_path.read_text(encoding="utf-8"))
    folder = job_path.parent
    model = ModelSettings(**job["model"])
    lora = LoraSettings(**job["lora"])
    training = training_from_json(job["training"])
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
        from loop.insight import insight_for_cycle

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
    (loop.ladder) on the same loaded model; returns (metrics by name, the verdict)."""
    from functools import partial

    from loop.collect import feedback_from_json, writing_from_json
    from training.inference.engine import Engine
    from training.evaluate import evaluate
    from training.strength import reference_fits, write_milder_adapter

    models_dir = Path(job["models_dir"])
    adapters: dict[str, Path | None] = {"candidate": candidate_dir}
    if active_dir is not None:
        adapters["active"] = active_dir
    adapters["base"] = None
    engine = Engine.load(model, models_dir, max_adapters=len(adapters) + 1)
    run = partial(evaluate, model_settings=model, generation=generation, models_dir=models_dir,
                  heldout_feedback=[feedback_from_json(item) for item in examples["heldout_feedback"]],
                  heldout_writing=[writing_from_json(item) for item in examples["heldout_writing"]],
                  owner_lines=examples["owner_lines"], other_lines=examples["other_lines"],
                  eval_settings=evaluation, seed=generation.seed, engine=engine)
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
    if verdict.strength < FULL_STRENGTH:
        metrics["full_strength"] = metrics["candidate"]
        metrics["candidate"] = verdict.metrics
    return metrics, verdict


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
        folder = prepare_for_drafting(model, generation.backend, models_dir, adapter_folder=adapter_dir)
    except Exception as error:  # noqa: BLE001 - drafting converts on demand instead
        logger.warning("converting the candidate for drafting failed (the first draft will do it): %s", error)
        return None
    if folder is None:  # drafting uses transformers: nothing to convert
        return None
    return {"seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": peak_rss_mb()}


# The parent's side -------------------------------------------------------------------------

def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(kept)


def _exit_reason(returncode: int, result: dict[str, Any] | None, log_path: Path) -> str:
    if returncode < 0:
        if -returncode == signal.SIGKILL:
            return "the training process was killed (SIGKILL: out of memory, or stopped by hand)"
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"the training process was stopped by signal {name}"
    if result and result.get("error"):
        return f"training failed: {result['error']}"
    tail = _log_tail(log_path)
    if returncode == 0:
        return "the training process ended without a result" + (f"; last lines of the log:\n{tail}" if tail else "")
    return f"the training process exited with code {returncode}" + (f"; last lines of the log:\n{tail}" if tail else "")


def child_environment() -> dict[str, str]:
    """The environment of a child process of the twin: this project importable, and no bot token
    (neither training nor an import needs Telegram access, so it stays out of their logs)."""
    env = {name: value for name, value in os.environ.items() if name != TOKEN_ENV}
    project_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, env.get("PYTHONPATH", "")) if p)
    return env


def run_child(job_path: Path, *, log_path: Path, heartbeat: Callable[[], None], progress: bool = False,
              threads: int = 0) -> dict[str, Any]:
    """Run `python -m loop.child job.json` and wait, calling `heartbeat` now and then; returns the
    child's result, or raises ChildFailed with the reason (signal, exit code, error, log tail)."""
    env = child_environment()
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "loop.child", str(job_path)], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    (job_path.parent / PID_FILE).write_text(f"{process.pid}\n", encoding="utf-8")
    logger.info("training child %d started for %s (log %s)", process.pid, job_path.parent, log_path)
    last_beat, shown = time.monotonic(), 0
    try:
        while True:
            try:
                returncode = process.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if progress:
                shown = _echo_log(log_path, shown)
            if time.monotonic() - last_beat >= HEARTBEAT_EVERY_S:
                heartbeat()
                last_beat = time.monotonic()
    except BaseException:
        process.kill()  # the parent is going down (Ctrl-C): the child must not train on unobserved
        process.wait()
        raise
    if progress:
        _echo_log(log_path, shown)
    result_path = job_path.parent / RESULT_FILE
    result = json.loads(result_path.read_text(encoding="utf-8")) if result_path.exists() else None
    if returncode not in (0, EXIT_NOTHING_TO_TRAIN) or not result or "error" in result:
        raise ChildFailed(_exit_reason(returncode, result, log_path))
    result["wall_seconds"] = round(time.perf_counter() - started, 2)
    return result


def _echo_log(path: Path, shown: int) -> int:
    """Print the log's new bytes to stderr (progress mode); returns how much has been shown."""
    try:
        with path.open("rb") as handle:
            handle.seek(shown)
            chunk = handle.read()
    except OSError:
        return shown
    if chunk:
        sys.stderr.write(chunk.decode("utf-8", errors="replace"))
        sys.stderr.flush()
    return shown + len(chunk)


# The child's entry point ------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loop.child <job.json>", file=sys.stderr)
        return 2
    job_path = Path(args[0])
    die_with_parent()
    priority = lower_priority()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        result = run_job(job_path)
    except Exception as error:
        logger.error("training child failed: %s\n%s", error, traceback.format_exc())
        write_json_atomic(job_path.parent / RESULT_FILE, {"error": f"{type(error).__name__}: {error}"})
        return 1
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["peak_rss_mb"] = peak_rss_mb()
    result["priority"] = priority
    write_json_atomic(job_path.parent / RESULT_FILE, result)
    logger.info("child finished in %.1f s, peak memory %.0f MB", result["seconds"], result["peak_rss_mb"])
    return EXIT_NOTHING_TO_TRAIN if "nothing_to_train" in result else 0


if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses
    sys.exit(main())
