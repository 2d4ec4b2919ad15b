"""The nightly scheduler: persisted job, fires once, catches up after downtime within the grace, never twice at once.

The clock is controlled with APScheduler's own means: the stored job's next run time (as a
process that was down would have left it) and the `now` the scheduler starts with. Cycles run
for real; with no data they are recorded as skipped, which is enough to count runs.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED
from sqlalchemy import inspect

from loop.cycle import LOCK_NAME, list_cycles
from loop.scheduler import JOB_ID, JOBS_TABLE, next_run_time, start_scheduler
from storage import repo
from storage.db import session_scope
from tests.loop.test_cycle_support import OWNER

DONE = EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED


@pytest.fixture
def nightly(config):
    """Config whose nightly time is the current minute (UTC), so a run "due at the nightly time" is now."""
    minute = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    config.schedule.timezone = "UTC"
    config.schedule.time = minute.strftime("%H:%M")
    config.schedule.misfire_grace_hours = 12.0
    return config, minute


class Notes:
    def __init__(self) -> None:
        self.sent: list[tuple[int, str, object]] = []

    def __call__(self, telegram_id, text, chart) -> None:
        self.sent.append((telegram_id, text, chart))


def run_pending(scheduler, *, expected: int = 1) -> list:
    """Resume a paused scheduler and wait until `expected` job events (executed/error/missed) arrived."""
    events, done = [], threading.Event()

    def listener(event) -> None:
        events.append(event)
        if len(events) >= expected:
            done.set()

    scheduler.add_listener(listener, DONE)
    scheduler.resume()
    assert done.wait(60), "the job did not run"
    scheduler.shutdown(wait=True)
    return events


def scheduled_cycles(engine) -> list[dict]:
    return [row for row in list_cycles(engine, telegram_id=OWNER) if row["trigger"] == "schedule"]


def test_the_job_is_stored_in_the_database_with_the_documented_settings(nightly, engine):
    config, minute = nightly
    first = start_scheduler(config, engine, notify=Notes(), paused=True)
    job = first.get_job(JOB_ID)
    assert job.coalesce is True and job.max_instances == 1 and job.misfire_grace_time == 12 * 3600
    assert job.func.__module__ == "loop.scheduler" and job.func.__qualname__ == "run_scheduled_cycles"
    assert f"hour='{minute.hour}'" in str(job.trigger) and f"minute='{minute.minute}'" in str(job.trigger)
    first.shutdown()
    assert JOBS_TABLE in inspect(engine).get_table_names()
    # A restart replaces the job rather than adding a second one.
    second = start_scheduler(config, engine, notify=Notes(), paused=True)
    assert [j.id for j in second.get_jobs()] == [JOB_ID]
    second.shutdown()
    assert next_run_time(config) is not None


def test_the_nightly_job_fires_once_at_its_time(nightly, engine):
    config, minute = nightly
    notes = Notes()
    # The process started a minute before the nightly time; by now that time has come.
    scheduler = start_scheduler(config, engine, notify=notes, paused=True, now=lambda: minute - timedelta(minutes=1))
    assert next_run_time(scheduler) == minute
    events = run_pending(scheduler)
    assert [e.code for e in events] == [EVENT_JOB_EXECUTED]
    assert len(scheduled_cycles(engine)) == 1
    assert scheduled_cycles(engine)[0]["status"] == "skipped"
    assert notes.sent == []  # a skipped night is not worth a message
    assert next_run_time(config) == minute + timedelta(days=1)


def test_a_run_missed_while_the_process_was_down_fires_on_start(nightly, engine):
    config, minute = nightly
    # First process: scheduled for the nightly time, then down before it came.
    down = start_scheduler(config, engine, notify=Notes(), paused=True, now=lambda: minute - timedelta(hours=2))
    down.shutdown()
    assert next_run_time(config) == minute
    # Second process, started after the time: the stored due run is kept and fires now.
    restarted = start_scheduler(config, engine, notify=Notes(), paused=True)
    assert restarted.get_job(JOB_ID).next_run_time == minute
    assert [e.code for e in run_pending(restarted)] == [EVENT_JOB_EXECUTED]
    assert len(scheduled_cycles(engine)) == 1


def test_a_run_missed_beyond_the_grace_time_is_skipped(nightly, engine):
    config, minute = nightly
    config.schedule.misfire_grace_hours = 1.0
    due = minute - timedelta(hours=3)  # the nightly time was three hours ago, and the process was down
    config.schedule.time = due.strftime("%H:%M")
    down = start_scheduler(config, engine, notify=Notes(), paused=True, now=lambda: due - timedelta(minutes=1))
    assert down.get_job(JOB_ID).next_run_time == due
    down.shutdown()
    restarted = start_scheduler(config, engine, notify=Notes(), paused=True)
    assert [e.code for e in run_pending(restarted)] == [EVENT_JOB_MISSED]
    assert scheduled_cycles(engine) == []
    assert next_run_time(config) > datetime.now(timezone.utc)


def test_several_missed_nights_coalesce_into_one_run(nightly, engine):
    config, minute = nightly
    down = start_scheduler(config, engine, notify=Notes(), paused=True)
    down.modify_job(JOB_ID, next_run_time=minute - timedelta(days=2))  # three nights due
    down.shutdown()
    restarted = start_scheduler(config, engine, notify=Notes(), paused=True)
    assert [e.code for e in run_pending(restarted)] == [EVENT_JOB_EXECUTED]
    assert len(scheduled_cycles(engine)) == 1


def test_a_failing_job_tells_the_owner(nightly, engine):
    config, minute = nightly
    notes = Notes()

    def broken_cycle(*args, **kwargs):
        raise RuntimeError("disk full")

    scheduler = start_scheduler(config, engine, notify=notes, runner=broken_cycle, paused=True,
                                now=lambda: minute - timedelta(minutes=1))
    assert [e.code for e in run_pending(scheduler)] == [EVENT_JOB_ERROR]
    assert len(notes.sent) == 1
    telegram_id, text, chart = notes.sent[0]
    assert telegram_id == OWNER and "disk full" in text and chart is None


def test_no_cycle_while_another_live_process_holds_the_lock_then_takeover_when_it_died(nightly, engine):
    if engine.dialect.name == "postgresql":
        pytest.skip("on PostgreSQL the advisory lock decides, not the row (tests/storage/test_locks.py)")
    config, minute = nightly
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with session_scope(engine) as session:
            assert repo.acquire_lock(session=session, name=LOCK_NAME, holder=f"{socket.gethostname()}:{other.pid}:t")
        scheduler = start_scheduler(config, engine, notify=Notes(), paused=True,
                                    now=lambda: minute - timedelta(minutes=1))
        assert [e.code for e in run_pending(scheduler)] == [EVENT_JOB_EXECUTED]
        assert scheduled_cycles(engine) == []  # the other process's cycle was left alone
    finally:
        other.kill()
        other.wait()
    # The holder is dead now: the next run takes the lock over and runs.
    again = start_scheduler(config, engine, notify=Notes(), paused=True, now=lambda: minute - timedelta(minutes=1))
    again.modify_job(JOB_ID, next_run_time=minute)
    assert [e.code for e in run_pending(again)] == [EVENT_JOB_EXECUTED]
    assert len(scheduled_cycles(engine)) == 1
    with session_scope(engine) as session:
        assert repo.get_lock(session=session, name=LOCK_NAME) is None


def test_every_owner_gets_a_cycle_and_a_report_and_one_failure_does_not_stop_the_others(nightly, engine, tmp_path):
    from loop.cycle import CycleOutcome

    config, minute = nightly
    config.owners = [OWNER, 1002, 1003]
    notes, calls = Notes(), []
    chart = tmp_path / "chart.png"

    def runner(cfg, eng, *, telegram_id, trigger):
        calls.append((telegram_id, trigger))
        if telegram_id == 1002:
            raise RuntimeError("owner 1002's data is broken")
        status = "promoted" if telegram_id == OWNER else "skipped"
        return CycleOutcome(1, status, "why", f"report for {telegram_id}", chart, 1, 1)

    scheduler = start_scheduler(config, engine, notify=notes, runner=runner, paused=True,
                                now=lambda: minute - timedelta(minutes=1))
    assert [e.code for e in run_pending(scheduler)] == [EVENT_JOB_ERROR]
    assert calls == [(OWNER, "schedule"), (1002, "schedule"), (1003, "schedule")]
    # The promoted owner gets the report with the chart; the skipped one nothing; the failed one the error.
    assert (OWNER, f"report for {OWNER}", chart) in notes.sent
    assert not any(tid == 1003 for tid, _, _ in notes.sent)
    assert [(tid, "data is broken" in text) for tid, text, _ in notes.sent if tid == 1002] == [(1002, True)]


def test_a_disabled_schedule_removes_the_stored_job(nightly, engine):
    config, _ = nightly
    start_scheduler(config, engine, notify=Notes(), paused=True).shutdown()
    assert next_run_time(config) is not None
    config.schedule.enabled = False
    scheduler = start_scheduler(config, engine, notify=Notes(), paused=True)
    assert scheduler.get_jobs() == []
    scheduler.shutdown()
    assert next_run_time(config) is None


def test_the_scheduler_looks_at_the_store_every_minute_so_a_sleeping_machine_catches_up_on_waking(nightly, engine):
    config, minute = nightly
    config.schedule.time = (minute + timedelta(hours=6)).strftime("%H:%M")
    scheduler = start_scheduler(config, engine, notify=Notes())
    try:
        # Its wait runs on the monotonic clock, which stands still during sleep: it must be short.
        assert 0 < scheduler._process_jobs() <= 60
    finally:
        scheduler.shutdown()
