"""A cycle that goes wrong: killed child, crashing child, worse candidate, stale and contested locks.

Whatever happens, the active adapter and the database stay intact, the cycle row says what went
wrong, and the next cycle starts cleanly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from loop.adapters import adapters_root
from loop.cycle import LOCK_NAME, CycleAlreadyRunning, list_cycles, run_cycle
from storage import repo
from storage.db import open_database, session_scope
from storage.models import CycleStatus, Lock, utcnow
from tests.loop.test_cycle_support import OWNER, cycle_config, import_writing  # noqa: F401 - fixtures
from training.artifacts import adapter_checksum, verify_adapter

WAIT_S = 120  # generous: the machine is shared; nothing asserts on time


def wait_until(condition, what: str):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def active(engine):
    with session_scope(engine) as session:
        owner = repo.find_owner(session=session, telegram_id=OWNER)
        return repo.active_adapter(session=session, owner_id=owner.id)


def lock_row(engine):
    with session_scope(engine) as session:
        return repo.get_lock(session=session, name=LOCK_NAME)


def other_process_tries_a_cycle(config) -> subprocess.CompletedProcess:
    """Another process (same database) asks for a cycle; prints what happened."""
    script = textwrap.dedent(f"""
        import sys
        from loop.config import Config
        from loop.cycle import CycleAlreadyRunning, run_cycle
        from storage.db import open_database
        config = Config(data_dir={str(config.data_dir)!r}, database_url={config.database_url!r}, owners=[{OWNER}])
        try:
            run_cycle(config, open_database(config.db_url), telegram_id={OWNER}, force=True)
        except CycleAlreadyRunning as error:
            print("ALREADY RUNNING:", error)
            sys.exit(3)
        print("RAN")
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT_S)


def test_kill_9_of_the_child_leaves_everything_intact_and_the_next_cycle_succeeds(cycle_config, engine, database_url):
    import_writing(engine)
    assert run_cycle(cycle_config, engine, telegram_id=OWNER).status == "promoted"
    before = active(engine)
    checksum = adapter_checksum(Path(before.path))

    import_writing(engine, n=30)  # new writing: the next cycle has something to learn
    cycle_config.training.sft.max_steps = 100_000  # a cycle that would train for a very long time
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run_cycle, cycle_config, open_database(database_url), telegram_id=OWNER)
        cycle = wait_until(lambda: next((c for c in list_cycles(engine, telegram_id=OWNER) if c["status"] == "running"),
                                        None), "the cycle to start")
        folder = cycle_config.owner_dir(OWNER) / "cycles" / str(cycle["id"])
        root = adapters_root(cycle_config, OWNER)
        wait_until(lambda: list(root.glob(".v2.tmp-*")) and "sft step" in _read(folder / "train.log"),
                   "training to be under way")
        # Meanwhile, nobody else gets a cycle: not another thread, not another process.
        with pytest.raises(CycleAlreadyRunning):
            run_cycle(cycle_config, open_database(database_url), telegram_id=OWNER, force=True)
        other = other_process_tries_a_cycle(cycle_config)
        assert other.returncode == 3 and "ALREADY RUNNING" in other.stdout, other.stdout + other.stderr

        os.kill(int((folder / "child.pid").read_text()), signal.SIGKILL)
        outcome = future.result(timeout=WAIT_S)

    assert outcome.status == "failed" and "killed" in outcome.reason and "SIGKILL" in outcome.reason
    assert "v1 stays active" in outcome.report_text
    row = list_cycles(engine, telegram_id=OWNER)[-1]
    assert row["status"] == "failed" and "SIGKILL" in row["reason"] and row["finished_at"]
    after = active(engine)
    assert after.version == 1 and adapter_checksum(Path(after.path)) == checksum
    verify_adapter(Path(after.path))
    assert not list(root.glob(".*")), "no staging or scratch folder is left"
    assert not (root / "v2").exists()
    assert lock_row(engine) is None

    # A folder renamed into place by a child that died before the parent recorded it is not trusted.
    (root / "v2").mkdir()
    (root / "v2" / "adapter_model.safetensors").write_bytes(b"left by a dead run")
    cycle_config.training.sft.max_steps = 3
    again = run_cycle(cycle_config, engine, telegram_id=OWNER)
    assert again.status in ("promoted", "kept") and again.candidate_version == 2
    verify_adapter(root / "v2")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def test_a_crashing_child_fails_the_cycle_with_its_reason(cycle_config, engine, tmp_path):
    import_writing(engine, n=12)
    cycle_config.model.base = str(tmp_path / "no-such-model")
    outcome = run_cycle(cycle_config, engine, telegram_id=OWNER)
    assert outcome.status == "failed" and "training failed" in outcome.reason
    assert "no-such-model" in outcome.reason
    assert "the base model stays active" in outcome.report_text
    assert active(engine) is None and lock_row(engine) is None
    log = Path(list_cycles(engine, telegram_id=OWNER)[-1]["log_path"])
    assert "Traceback" in log.read_text()


def test_nothing_to_learn_is_skipped_even_when_forced(cycle_config, engine):
    outcome = run_cycle(cycle_config, engine, telegram_id=OWNER, force=True)
    assert outcome.status == "skipped" and "Nothing to learn from" in outcome.reason
    assert list_cycles(engine, telegram_id=OWNER)[0]["status"] == "skipped"


def test_the_lock_of_a_dead_process_is_taken_over_and_its_cycle_marked_failed(cycle_config, engine):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with session_scope(engine) as session:
        owner = repo.get_or_create_owner(session=session, telegram_id=OWNER)
        orphan = repo.start_cycle(session=session, owner_id=owner.id, trigger="schedule", forced=False,
                                  active_version_before=0, feedback_upto_id=0).id
        assert repo.acquire_lock(session=session, name=LOCK_NAME, holder=f"{socket.gethostname()}:{dead.pid}:x")
    staging = adapters_root(cycle_config, OWNER) / ".v1.tmp-123-abc"
    staging.mkdir(parents=True)
    outcome = run_cycle(cycle_config, engine, telegram_id=OWNER)
    assert outcome.status == "skipped"
    with session_scope(engine) as session:
        old = repo.get_cycle(session=session, cycle_id=orphan)
        assert old.status == CycleStatus.failed and "interrupted" in old.reason
    assert not staging.exists() and lock_row(engine) is None


def test_a_live_holder_keeps_the_lock_and_a_silent_remote_one_loses_it(cycle_config, engine):
    if engine.dialect.name == "postgresql":
        pytest.skip("on PostgreSQL the advisory lock decides, not the row (tests/storage/test_locks.py)")
    with session_scope(engine) as session:
        assert repo.acquire_lock(session=session, name=LOCK_NAME, holder="elsewhere:123:x")
    with pytest.raises(CycleAlreadyRunning, match="already running"):
        run_cycle(cycle_config, engine, telegram_id=OWNER)
    with session_scope(engine) as session:
        session.get(Lock, LOCK_NAME).heartbeat_at = utcnow() - timedelta(hours=5)
    assert run_cycle(cycle_config, engine, telegram_id=OWNER).status == "skipped"
    # A pid reused by a younger process is not the holder either.
    with session_scope(engine) as session:
        lock = Lock(name=LOCK_NAME, holder=f"{socket.gethostname()}:{os.getppid()}:x",
                    acquired_at=utcnow() - timedelta(days=3650))
        session.add(lock)
    assert run_cycle(cycle_config, engine, telegram_id=OWNER).status == "skipped"
