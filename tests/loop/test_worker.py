"""The training queue and `twin worker` (issue 21): real worker processes, real cycles on the tiny
model, on SQLite and (with TWIN_TEST_DATABASE_URL) PostgreSQL."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from loop.config import Config
from loop.cycle import CycleAlreadyRunning, list_cycles, owner_lock_name, run_cycle
from loop.worker import Worker, enqueue, queue_rows, requeue_abandoned, take_reports
from storage import locks, repo
from storage.db import session_scope
from storage.models import CycleRequest, CycleRequestStatus, Lock, utcnow
from training.artifacts import read_manifest
from tests.loop.test_cycle_support import OWNER, cycle_config, writing  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[2]
SECOND = 2002


def import_for(engine, telegram_id: int, n: int = 16) -> None:
    with session_scope(engine) as session:
        owner = repo.get_or_create_owner(session=session, telegram_id=telegram_id)
        repo.add_writing_samples(session=session, owner_id=owner.id, samples=writing(n))


def config_file(config: Config, path: Path) -> Path:
    """The config as a TOML file, for `twin` processes."""
    import tomli_w

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if v is not None and k != "path"}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return str(value) if isinstance(value, Path) else value

    path.write_text(tomli_w.dumps(plain(dataclasses.asdict(config))), encoding="utf-8")
    return path


def start_worker(config_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TWIN_CHILD_PRIORITY": "normal"}
    return subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(config_path), "worker", "--once", *args],
                            cwd=config_path.parent, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_two_worker_processes_train_two_owners_once_each(cycle_config, engine, tmp_path):
    cycle_config.owners = [OWNER, SECOND]
    for telegram_id in (OWNER, SECOND):
        import_for(engine, telegram_id)
        assert enqueue(engine, telegram_id=telegram_id, trigger="schedule").new
    assert not enqueue(engine, telegram_id=OWNER, trigger="cli").new  # merged into the waiting one
    path = config_file(cycle_config, tmp_path / "config.toml")
    workers = [start_worker(path), start_worker(path)]
    outputs = [worker.communicate(timeout=540)[0] for worker in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output
    rows = queue_rows(engine)
    assert len(rows) == 2 and all(row["status"] == "done" and row["attempts"] == 1 for row in rows), rows
    for telegram_id in (OWNER, SECOND):
        cycles = list_cycles(engine, telegram_id=telegram_id)
        assert len(cycles) == 1 and cycles[0]["status"] in ("promoted", "kept"), cycles
        with session_scope(engine) as session:
            owner = repo.find_owner(session=session, telegram_id=telegram_id)
            (adapter,) = repo.list_adapters(session=session, owner_id=owner.id)
        folder = Path(adapter.path)
        assert folder == cycle_config.owner_dir(telegram_id) / "adapters" / "v1", folder
        assert read_manifest(folder)["metadata"]["owner"] == telegram_id
    with session_scope(engine) as session:
        assert session.exec(select(Lock)).all() == []  # every lock given back
    # The bot sends each finished report once.
    reports = take_reports(engine)
    assert sorted(tid for _, tid, _ in reports) == [OWNER, SECOND]


def test_a_worker_runs_n_cycles_at_once_and_leaves_a_busy_owner_for_later(config, engine):
    import threading

    config.owners = [OWNER, SECOND, 3003]
    seen: list[int] = []
    running, peak, gate = [0], [0], threading.Lock()

    def fake_cycle(config, engine, *, telegram_id, force, trigger, exclusive):
        assert exclusive is False and trigger == "schedule"
        with gate:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.5)
        with gate:
            running[0] -= 1
        seen.append(telegram_id)
        return run_cycle(config, engine, telegram_id=telegram_id, force=force, trigger=trigger, exclusive=False)

    for telegram_id in config.owners:
        enqueue(engine, telegram_id=telegram_id, trigger="schedule")
    held = locks.try_lock(engine, owner_lock_name(3003), "elsewhere:1:x")  # a /train of that owner
    try:
        summary = Worker(config, engine, concurrency=2, poll_s=0.2, runner=fake_cycle).run(once=True)
    finally:
        locks.release(engine, held)
    assert peak[0] == 2 and sorted(seen) == [OWNER, SECOND, 3003]
    assert sorted(item["owner"] for item in summary.ran) == [OWNER, SECOND]  # nothing to learn: skipped
    busy = [row for row in queue_rows(engine) if row["status"] == "queued"]
    assert len(busy) == 1 and "already running" in busy[0]["outcome"]  # back in the queue, due later
    with session_scope(engine) as session:
        request = session.get(CycleRequest, busy[0]["id"])
        assert request.due_at > utcnow() + timedelta(minutes=1)


def test_the_owner_lock_keeps_a_second_cycle_of_the_same_owner_out(config, engine):
    held = locks.try_lock(engine, owner_lock_name(OWNER), "elsewhere:1:x")
    try:
        with pytest.raises(CycleAlreadyRunning):
            run_cycle(config, engine, telegram_id=OWNER, exclusive=False)
        # Another owner is not held up by it, in a worker (no machine-wide lock).
        assert run_cycle(config, engine, telegram_id=SECOND, exclusive=False).status == "skipped"
    finally:
        locks.release(engine, held)


def test_a_request_of_a_dead_worker_is_queued_again(config, engine):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    request_id = enqueue(engine, telegram_id=OWNER, trigger="schedule").request_id
    import socket

    with session_scope(engine) as session:
        assert repo.claim_cycle_request(session=session, request_id=request_id, worker=f"{socket.gethostname()}:{dead.pid}")
        # A second claim of the same request loses: one worker per request.
        assert not repo.claim_cycle_request(session=session, request_id=request_id, worker="other:2")
    assert requeue_abandoned(engine) == [request_id]
    (row,) = queue_rows(engine)
    assert row["status"] == "queued" and "stopped" in row["outcome"]
    # A silent worker on another host loses it after STALE_AFTER.
    with session_scope(engine) as session:
        assert repo.claim_cycle_request(session=session, request_id=request_id, worker="elsewhere:7")
    assert requeue_abandoned(engine) == []
    assert requeue_abandoned(engine, now=utcnow() + timedelta(hours=4)) == [request_id]


def test_the_nightly_job_only_queues_when_the_bot_does_not_train(config, engine):
    from loop.scheduler import _CONTEXTS, _JobContext, run_scheduled_cycles

    config.owners = [OWNER, SECOND]
    config.schedule.train_in_bot = False

    def must_not_run(*args, **kwargs):
        raise AssertionError("the bot trained although schedule.train_in_bot = false")

    _CONTEXTS["t"] = _JobContext(config=config, engine=engine, notify=lambda *a: None, runner=must_not_run)
    try:
        run_scheduled_cycles("t")
        run_scheduled_cycles("t")  # a second night before any worker ran: still one request each
    finally:
        _CONTEXTS.pop("t")
    rows = queue_rows(engine)
    assert len(rows) == 2 and {row["trigger"] for row in rows} == {"schedule"}


def test_twin_train_queues_when_workers_train(config, tmp_path):
    from typer.testing import CliRunner

    from loop.cli import app

    config.schedule.train_in_bot = False
    path = config_file(config, tmp_path / "config.toml")
    result = CliRunner().invoke(app, ["--config", str(path), "train", "--force"])
    assert result.exit_code == 0 and "queued as request #1" in result.output, result.output
    result = CliRunner().invoke(app, ["--config", str(path), "train"])
    assert "already queued (request #1)" in result.output
    help_text = CliRunner().invoke(app, ["worker", "--help"]).output
    assert "--concurrency" in help_text and "--once" in help_text


def test_queue_times_are_aware_utc(engine):
    request_id = enqueue(engine, telegram_id=OWNER, trigger="cli").request_id
    with session_scope(engine) as session:
        request = session.get(CycleRequest, request_id)
        moment = request.requested_at  # AwareDateTime hands it back aware, on SQLite too
        assert moment.utcoffset() == timedelta(0) and abs(moment - utcnow()) < timedelta(minutes=1)
        assert request.status == CycleRequestStatus.queued
