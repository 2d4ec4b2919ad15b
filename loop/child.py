"""The training subprocess of a cycle, supervised: `run_child` starts and watches it from the cycle;
`main` is the process, `python -m loop.child <cycle folder>/job.json`.

The job itself (datasets, training, evaluation, the gate's verdict) is training's:
`training.nightly.run_job`. This module only supervises it: it spawns the process, lowers its CPU
priority, asks the kernel to kill it with its parent, keeps the bot token out of its environment,
watches it with heartbeats, writes `result.json` atomically and turns a death (killed, out of
memory, a crash) into a reason. The parent (the bot or the CLI) never loads a model: if the child
dies, the adapter folder was never renamed into place, and the active adapter is untouched.

The job file is plain JSON (settings as dicts, examples as dicts) so it can be read by a person
and re-run by hand: `python -m loop.child data/owners/<id>/cycles/<cycle>/job.json`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from loop.config import TOKEN_ENV
from loop.errors import ChildFailed
from training.artifacts import atomic_file
from training.nightly import EXAMPLES_FILE, peak_rss_mb, run_job, settings_to_json

__all__ = ["EXAMPLES_FILE", "ChildFailed", "child_environment", "die_with_parent", "lower_priority", "main",
           "peak_rss_mb", "run_child", "settings_to_json", "write_json_atomic"]

logger = logging.getLogger("loop.child")  # not __name__: run with -m, that is "__main__"

HEARTBEAT_EVERY_S = 30.0
POLL_S = 0.5
LOG_TAIL_LINES = 6
RESULT_FILE = "result.json"
PID_FILE = "child.pid"
EXIT_NOTHING_TO_TRAIN = 3


def write_json_atomic(path: Path, data: Any) -> None:
    with atomic_file(path) as staging:
        staging.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")


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
