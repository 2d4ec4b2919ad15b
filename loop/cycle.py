"""One learning cycle (docs/architecture.md, "One night"): lock, collect, train in a child, evaluate, gate, promote, report.

`run_cycle` is the only entry point (the scheduler, `twin train` and the bot's /train call it).
It keeps the calling process light: datasets, training and evaluation all run in a child
process (`python -m loop.child`), so the bot never loads a second model and a killed or crashed
child (SIGKILL, out of memory) only marks the cycle failed. The adapter folder is written under
a temporary name and renamed when complete; a failed cycle removes what its child left.

One cycle per owner at a time across processes, and (unless a `twin worker` runs it) one cycle at a
time on the machine: named locks in the database (storage.locks). On SQLite a lock row, taken over
only when its holder is dead (a pid on this host that is gone) or silent for hours (another host);
on PostgreSQL an advisory lock, which the server frees when its holder's connection ends.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.engine import Engine

from loop import adapter_storage
from loop import adapters as adapter_store
from loop.adapters import RollbackError, rollback  # noqa: F401 - part of this module's API
from loop.child import ChildFailed, run_child
from loop.collect import Collected, collect
from loop.config import Config
from loop.errors import CycleAlreadyRunning, CycleFailed
from loop.report import cycle_report
from loop.stats import history_chart, list_cycles, owner_stats  # noqa: F401 - part of this module's API
from storage import locks, repo
from storage.db import session_scope
from storage.models import AdapterState, CycleStatus
from training.artifacts import CorruptAdapter, remove_stale_staging
from training.datasets import newest_distinct_writing, split_holdout, split_writing_holdout
from training.examples import feedback_to_json, writing_to_json
from training.gate import gate_rule_text
from training.kept_scores import KEPT_SCORES_FILE
from training.nightly import EXAMPLES_FILE, settings_to_json
from training.retrieval import Budget, Split, attach_examples

logger = logging.getLogger(__name__)

LOCK_NAME = "cycle"
LOCK_STALE_AFTER = timedelta(hours=3)  # a holder on another host silent this long is presumed dead
CYCLE_LOG = "cycle.log"
RESUMABLE = "resumable"  # adapter data_counts key: a kept candidate the next cycle continues from


@dataclass
class CycleOutcome:
    cycle_id: int | None
    status: str  # skipped | promoted | kept | failed
    reason: str
    report_text: str
    chart_path: Path | None
    candidate_version: int | None
    active_version: int


# The lock -------------------------------------------------------------------------------------

def _holder_alive(holder: str, acquired_at: datetime) -> bool:
    """Whether a lock holder "<host>:<pid>[:<token>]" still runs; unknown hosts count as alive."""
    import psutil

    host, _, rest = holder.partition(":")
    pid_text = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        started = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True
    # A process started after the lock was taken only reuses the holder's pid.
    return started <= acquired_at.timestamp() + 1.0


def owner_lock_name(telegram_id: int) -> str:
    """The lock that keeps one owner's cycles one at a time, whichever process runs them."""
    return f"{LOCK_NAME}:{telegram_id}"


def _take_lock(engine: Engine, holder: str, name: str = LOCK_NAME) -> locks.HeldLock | None:
    for attempt in range(5):
        try:
            row = locks.describe(engine, name)
            if row is None:
                return locks.try_lock(engine, name, holder)
            acquired = row.acquired_at
            # Liveness decides for a holder on this host; silence decides for one elsewhere
            # (SQLite; on PostgreSQL the advisory lock decides, storage.locks).
            remote = row.holder.partition(":")[0] != socket.gethostname()
            return locks.try_lock(engine, name, holder, stale_after=LOCK_STALE_AFTER if remote else None,
                                  holder_alive=lambda h: _holder_alive(h, acquired))
        except OperationalError:  # SQLite: another writer won the race for the file; look again
            logger.debug("lock attempt %d met a busy database", attempt + 1, exc_info=True)
            time.sleep(0.2 * (attempt + 1))
    return None


def _lock_description(engine: Engine, name: str = LOCK_NAME) -> str:
    row = locks.describe(engine, name)
    if row is None:
        return "a learning cycle is already running"
    return f"a learning cycle is already running (process {row.holder.rsplit(':', 1)[0]} since {row.acquired_at:%H:%M})"


def _heartbeat(engine: Engine, held: list[locks.HeldLock]) -> None:
    try:
        for lock in held:
            locks.heartbeat(engine, lock)
    except OperationalError:  # a busy database must not kill a cycle; the next beat will do
        logger.warning("could not refresh the cycle lock", exc_info=True)


# The cycle ------------------------------------------------------------------------------------

def run_cycle(config: Config, engine: Engine, *, telegram_id: int, force: bool = False, trigger: str = "manual",
              progress: bool = False, exclusive: bool = True) -> CycleOutcome:
    """Run one cycle for the owner and return what happened; raises CycleAlreadyRunning when locked.

    The owner's lock is always taken. `exclusive` (the bot, the scheduler, `twin train`) also takes
    the machine-wide lock, one cycle at a time as on a laptop; `twin worker` runs without it, as many
    cycles at once as its `--concurrency`, one per owner.

    A failure of the training child is an outcome ("failed", with the reason); anything else
    unexpected marks the cycle failed and is raised.
    """
    holder = f"{repo.lock_holder_id()}:{uuid.uuid4().hex[:8]}"
    held: list[locks.HeldLock] = []
    try:
        for name in [LOCK_NAME, owner_lock_name(telegram_id)] if exclusive else [owner_lock_name(telegram_id)]:
            lock = _take_lock(engine, holder, name)
            if lock is None:
                raise CycleAlreadyRunning(_lock_description(engine, name))
            held.append(lock)
        return _locked_cycle(config, engine, telegram_id=telegram_id, force=force, trigger=trigger,
                             progress=progress, held=held)
    finally:
        for lock in reversed(held):
            locks.release(engine, lock)


def _clean_leftovers(config: Config, telegram_id: int) -> None:
    """Remove what killed children left: staging adapter folders and trainer scratch folders."""
    root = adapter_store.adapters_root(config, telegram_id)
    removed = remove_stale_staging(root)
    if root.is_dir():
        for scratch in root.glob(".trainer-*"):
            shutil.rmtree(scratch, ignore_errors=True)
            removed.append(scratch)
    if removed:
        logger.info("removed leftovers of interrupted training: %s", ", ".join(p.name for p in removed))


def _resumable(session: Any, owner_id: int, active_version: int, config: Config) -> Any:
    """The newest kept candidate that the next cycle continues from instead of the active adapter:
    one the strength ladder marked resumable (it learnt, but no strength of it passed the gate),
    judged against the adapter that is still active, and whose files are intact."""
    kept = [adapter for adapter in repo.list_adapters(session=session, owner_id=owner_id)
            if adapter.state == AdapterState.candidate and adapter.parent_version == active_version
            and (adapter.data_counts or {}).get(RESUMABLE)]
    for adapter in sorted(kept, key=lambda a: a.version, reverse=True):
        try:
            adapter_store.verify(adapter, config)
        except CorruptAdapter as error:
            logger.warning("kept candidate v%s cannot be continued from: %s", adapter.version, error)
            continue
        return adapter
    return None


def _skip_reason(config: Config, collected: Collected, force: bool) -> str | None:
    if not collected.feedback and not collected.writing:
        return "Nothing to learn from yet: import your writing (`twin import`) or answer a few drafts."
    if force or collected.new_writing or collected.new_feedback >= config.schedule.min_new_feedback:
        return None
    return (f"Only {collected.new_feedback} new verdict(s) since the last cycle; "
            f"{config.schedule.min_new_feedback} are needed (`twin train --force` trains anyway).")


def _locked_cycle(config: Config, engine: Engine, *, telegram_id: int, force: bool, trigger: str, progress: bool,
                  held: list[locks.HeldLock]) -> CycleOutcome:
    started = time.perf_counter()
    with session_scope(engine) as session:
        owner_id: int = repo.get_or_create_owner(session=session, telegram_id=telegram_id).id  # type: ignore[assignment]
        # Holding the owner's lock, a `running` cycle of this owner is an orphan; other owners'
        # cycles may be running in other workers.
        orphans = repo.fail_running_cycles(
            session=session, reason="interrupted: the process running this cycle stopped before it finished",
            owner_id=owner_id)
        active = repo.active_adapter(session=session, owner_id=owner_id)
        active_version, active_location = (active.version, active.path) if active else (0, None)
        after_id = int((active.data_counts or {}).get("trained_feedback_upto", 0)) if active else 0
        resumed = _resumable(session, owner_id, active_version, config)
        init_location = active_location
        if resumed is not None:
            init_location = resumed.path
            after_id = int((resumed.data_counts or {}).get("trained_feedback_upto", after_id))
            logger.info("continuing from v%s, kept by an earlier cycle, instead of v%s", resumed.version, active_version)
        finished = repo.last_finished_cycle(session=session, owner_id=owner_id)
        upto_id = repo.latest_feedback_id(session=session, owner_id=owner_id)
        collected = collect(session=session, owner_id=owner_id, after_id=after_id, upto_id=upto_id,
                            trained_upto_id=finished.feedback_upto_id if finished else 0,
                            since=finished.started_at if finished else None)
    if orphans:
        logger.warning("cycles %s were interrupted earlier and are now marked failed", orphans)
    _clean_leftovers(config, telegram_id)
    stages: dict[str, Any] = {"collect": {"seconds": round(time.perf_counter() - started, 2)}}

    skip = _skip_reason(config, collected, force)
    with session_scope(engine) as session:
        cycle = repo.start_cycle(session=session, owner_id=owner_id, trigger=trigger, forced=force,
                                 active_version_before=active_version, feedback_upto_id=upto_id)
        cycle_id: int = cycle.id  # type: ignore[assignment]
        if skip:
            cycle = repo.finish_cycle(session=session, cycle_id=cycle_id, status=CycleStatus.skipped, reason=skip,
                                      counts={"new_feedback": collected.new_feedback},
                                      durations={"stages": stages, "total_seconds": time.perf_counter() - started})
    if skip:
        logger.info("cycle %s skipped: %s", cycle_id, skip)
        return CycleOutcome(cycle_id, "skipped", skip, _report(cycle, config), None, None, active_version)

    folder = config.owner_dir(telegram_id) / "cycles" / str(cycle_id)
    log_path = folder / CYCLE_LOG
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with session_scope(engine) as session:
            repo.get_cycle(session=session, cycle_id=cycle_id).log_path = str(log_path)  # type: ignore[union-attr]
        # The child reads local folders: adapters in an S3 store are downloaded here (once per machine).
        active_path = str(adapter_storage.local_path(config, active_location)) if active_location else None
        init_path = str(adapter_storage.local_path(config, init_location)) if init_location else None
        if active is not None:
            try:
                adapter_store.verify(active, config)
            except CorruptAdapter as error:
                raise CycleFailed(f"the active adapter v{active_version} is damaged ({error}); "
                                  f"`twin rollback` to an earlier version first") from None
        job_path, counts, version = _prepare(config, engine, owner_id=owner_id, telegram_id=telegram_id,
                                             cycle_id=cycle_id, folder=folder, collected=collected,
                                             active_path=active_path, init_path=init_path, after_id=after_id,
                                             progress=progress)
        if resumed is not None:
            counts["continued_from"] = resumed.version
        result = run_child(job_path, log_path=log_path, heartbeat=lambda: _heartbeat(engine, held),
                           progress=progress, threads=config.model.threads)
    except (CycleFailed, ChildFailed, adapter_storage.AdapterStoreError) as failure:
        return _finish_failed(config, engine, telegram_id=telegram_id, cycle_id=cycle_id, reason=str(failure),
                              stages=stages, started=started, active_version=active_version)
    except BaseException as error:
        _finish_failed(config, engine, telegram_id=telegram_id, cycle_id=cycle_id,
                       reason=_describe(error), stages=stages, started=started,
                       active_version=active_version)
        raise
    stages.update(result.get("stages", {}))
    stages["child"] = {"seconds": result.get("wall_seconds"), "peak_rss_mb": result.get("peak_rss_mb"),
                       "priority": result.get("priority")}
    counts["datasets"] = result.get("datasets", {})
    durations = {"stages": stages, "total_seconds": round(time.perf_counter() - started, 2)}
    if "nothing_to_train" in result:
        with session_scope(engine) as session:
            cycle = repo.finish_cycle(session=session, cycle_id=cycle_id, status=CycleStatus.skipped,
                                      reason=f"Nothing to train: {result['nothing_to_train']}", counts=counts,
                                      durations=durations)
        return CycleOutcome(cycle_id, "skipped", cycle.reason, _report(cycle, config), None, None, active_version)
    try:
        return _judge(config, engine, owner_id=owner_id, telegram_id=telegram_id, cycle_id=cycle_id, result=result,
                      counts=counts, durations=durations, version=version, active_version=active_version,
                      folder=folder)
    except BaseException as error:
        _finish_failed(config, engine, telegram_id=telegram_id, cycle_id=cycle_id,
                       reason=_describe(error), stages=stages, started=started,
                       active_version=active_version)
        raise


def _prepare(config: Config, engine: Engine, *, owner_id: int, telegram_id: int, cycle_id: int, folder: Path,
             collected: Collected, active_path: str | None, init_path: str | None, after_id: int,
             progress: bool) -> tuple[Path, dict[str, Any], int]:
    """Split off the held-out data, write examples.json and job.json; returns (job, counts, version)."""
    settings = config.evaluation
    ids = {id(example): fid for example, fid in zip(collected.feedback, collected.feedback_ids)}
    train_feedback, heldout_feedback = split_holdout(collected.feedback, fraction=settings.holdout_fraction,
                                                     minimum=settings.min_holdout)
    train_writing, heldout_writing = split_writing_holdout(collected.writing, settings.holdout_fraction,
                                                           settings.min_holdout)
    trained_upto = max((ids[id(example)] for example in train_feedback), default=after_id)
    # The owner's past replies in every prompt (off by default), from the training side of the split only.
    budget = Budget.of(config.generation)
    split = attach_examples(Split(train_feedback, train_writing, heldout_feedback, heldout_writing), budget)
    train_feedback, train_writing = split.train_feedback, split.train_writing
    heldout_feedback, heldout_writing = split.heldout_feedback, split.heldout_writing
    examples = {
        "train_feedback": [feedback_to_json(item) for item in train_feedback],
        "train_writing": [writing_to_json(item) for item in train_writing],
        "heldout_feedback": [feedback_to_json(item) for item in heldout_feedback],
        "heldout_writing": [writing_to_json(item) for item in heldout_writing],
        "owner_lines": collected.owner_lines,
        "other_lines": collected.other_lines,
    }
    (folder / EXAMPLES_FILE).write_text(json.dumps(examples, ensure_ascii=False), encoding="utf-8")
    with session_scope(engine) as session:
        version = repo.next_adapter_version(session=session, owner_id=owner_id)
    output_dir = adapter_store.adapter_dir(config, telegram_id, version)
    if output_dir.exists():  # renamed into place by a run that died before recording it: no row uses it
        logger.warning("removing unrecorded adapter folder %s", output_dir)
        shutil.rmtree(output_dir)
    job = {
        "model": settings_to_json(config.model), "lora": settings_to_json(config.lora),
        "training": settings_to_json(config.training), "evaluation": settings_to_json(config.evaluation),
        "generation": settings_to_json(config.generation), "insight": settings_to_json(config.insight),
        "models_dir": str(config.models_dir.resolve()),
        "init_adapter": init_path, "active_adapter": active_path, "output_dir": str(output_dir.resolve()),
        # Each model's held-out scores, kept for the next night (training.kept_scores).
        "kept_scores": str((config.owner_dir(telegram_id) / KEPT_SCORES_FILE).resolve())
        if config.evaluation.keep_scores else None,
        "metadata": {"cycle_id": cycle_id, "owner": telegram_id, "version": version}, "progress": progress,
    }
    job_path = folder / "job.json"
    job_path.write_text(json.dumps(job, indent=2, default=str), encoding="utf-8")
    counts = {
        "feedback_by_kind": collected.counts_by_kind, "new_feedback": collected.new_feedback,
        "new_writing": collected.new_writing, "train_feedback": len(train_feedback),
        "heldout_feedback": len(heldout_feedback), "train_writing": len(train_writing),
        "heldout_writing": len(heldout_writing), "trained_feedback_upto": trained_upto,
    }
    if budget.enabled:  # how many prompts the lever reached (the renderer may drop some to fit the budget)
        conversations = [item.conversation for item in [*train_feedback, *heldout_feedback]]
        conversations += [item.conversation for item in [*train_writing, *heldout_writing] if item.conversation]
        counts["retrieved_examples"] = {"prompts": len(conversations),
                                        "with_examples": sum(1 for c in conversations if c.examples),
                                        "examples": sum(len(c.examples) for c in conversations)}
    if not train_feedback:  # the first cycle after an import trains on part of a long history
        counts["writing_used"] = len(newest_distinct_writing(train_writing, config.training.first_cycle_writing))
    return job_path, counts, version


def _judge(config: Config, engine: Engine, *, owner_id: int, telegram_id: int, cycle_id: int, result: dict[str, Any],
           counts: dict[str, Any], durations: dict[str, Any], version: int, active_version: int,
           folder: Path) -> CycleOutcome:
    """Gate the candidate, record it (and activate it when it passed), finish the cycle, report."""
    metrics = result["metrics"]
    verdict = result["gate"]  # the child gated every strength it tried (training.ladder)
    promote, reasons = bool(verdict["promote"]), list(verdict["reasons"])
    metrics["gate"] = {**verdict, "rule": gate_rule_text(config.evaluation),
                       "tolerances": settings_to_json(config.evaluation)}
    if result.get("insight"):  # measured by the child for a promoted candidate (loop.insight)
        metrics["insight"] = result["insight"]
    status = CycleStatus.promoted if promote else CycleStatus.kept
    reason = reasons[0] if reasons else ""
    output_dir = Path(result["train"]["adapter_dir"])
    # The one place an adapter enters the store (local: stays where it is; S3: uploaded now).
    location = adapter_storage.store_for(config).publish(output_dir, telegram_id=telegram_id, version=version)
    with session_scope(engine) as session:
        repo.add_adapter(session=session, owner_id=owner_id, version=version, path=location,
                         parent_version=active_version, cycle_id=cycle_id, checksum=result["train"]["checksum"],
                         data_counts={**counts["datasets"], "trained_feedback_upto": counts["trained_feedback_upto"],
                                      "train_feedback": counts["train_feedback"],
                                      "train_writing": counts["train_writing"],
                                      "strength": verdict["strength"], RESUMABLE: bool(verdict["resumable"])},
                         metrics=metrics.get("candidate", {}))
        if promote:
            adapter_store.activate(session=session, owner_id=owner_id, version=version, config=config)
        cycle = repo.finish_cycle(session=session, cycle_id=cycle_id, status=status, reason=reason,
                                  candidate_version=version, counts=counts, metrics=metrics, durations=durations)
    logger.info("cycle %s: %s v%s (%s)", cycle_id, status.value, version, reason)
    if promote:  # a shared drafting server serves the new version and drops the retired one
        from loop.server_drafting import sync_served_adapters

        sync_served_adapters(config, engine)
    chart: Path | None = None
    try:
        chart = history_chart(config, engine, telegram_id=telegram_id, path=folder / "history.png")
    except Exception:  # the report goes out without its chart rather than not at all
        logger.exception("could not draw the history chart")
    return CycleOutcome(cycle_id, status.value, reason, _report(cycle, config), chart, version,
                        version if promote else active_version)


def _describe(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "interrupted by the user (Ctrl-C)"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _report(cycle: Any, config: Config) -> str:
    """The report; a bug in its formatting must not undo a cycle that is already recorded."""
    try:
        return cycle_report(cycle, config.evaluation)
    except Exception:
        logger.exception("could not format the report of cycle %s", cycle.id)
        return f"Learning cycle #{cycle.id}: {cycle.status.value}. {cycle.reason}"


def _finish_failed(config: Config, engine: Engine, *, telegram_id: int, cycle_id: int, reason: str,
                   stages: dict[str, Any], started: float, active_version: int) -> CycleOutcome:
    """Record a failed cycle and remove whatever its child left on disk; the active adapter is untouched."""
    _clean_leftovers(config, telegram_id)
    job_path = config.owner_dir(telegram_id) / "cycles" / str(cycle_id) / "job.json"
    with session_scope(engine) as session:
        if job_path.exists():
            # The child may have renamed the adapter into place and died during evaluation:
            # a folder that no adapter row records is removed.
            output = Path(json.loads(job_path.read_text(encoding="utf-8"))["output_dir"])
            recorded = any(adapter_storage.cache_path(config, a.path) == output for a in repo.list_adapters(
                session=session, owner_id=repo.get_cycle(session=session, cycle_id=cycle_id).owner_id))  # type: ignore[union-attr]
            if output.exists() and not recorded:
                shutil.rmtree(output, ignore_errors=True)
        cycle = repo.finish_cycle(session=session, cycle_id=cycle_id, status=CycleStatus.failed, reason=reason,
                                  durations={"stages": stages, "total_seconds": round(time.perf_counter() - started, 2)})
    logger.error("cycle %s failed: %s", cycle_id, reason)
    return CycleOutcome(cycle_id, "failed", reason, _report(cycle, config), None, None, active_version)
