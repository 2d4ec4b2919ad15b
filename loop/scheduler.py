"""The nightly schedule: APScheduler 3.x in a background thread of `twin run`, its jobs in our database.

One job with a fixed id runs the cycle for every configured owner in turn at the configured time
of day. The job store is a `SQLAlchemyJobStore` on the twin's own database, so a run missed while
the process was down (or the machine asleep) fires when it comes back, within
`schedule.misfire_grace_hours`; several missed nights coalesce into one run. The cycle runs in
the scheduler's worker thread (and its training in a child process), never on the bot's event
loop. Only one cycle runs at a time across processes: `run_cycle` takes the database lock.
With `schedule.train_in_bot = false` the job only queues the cycles for `twin worker` (loop.worker).

APScheduler stores a reference to a module-level function plus picklable arguments; an engine or
a callback cannot be pickled, so the job carries a token that names this process's context.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.engine import Engine

from loop.config import Config
from loop.cycle import CycleAlreadyRunning, CycleOutcome, run_cycle
from loop.errors import ScheduledCycleError

logger = logging.getLogger(__name__)

JOB_ID = "twin-nightly-cycle"
JOBS_TABLE = "apscheduler_jobs"
MAX_WAIT_S = 60.0

Notify = Callable[[int, str, "Path | None"], None]
CycleRunner = Callable[..., CycleOutcome]


@dataclass
class _JobContext:
    config: Config
    engine: Engine
    notify: Notify
    runner: CycleRunner

    def owners(self) -> list[int]:
        return list(self.config.owners) or [self.config.default_owner()]


# Contexts of the schedulers started in this process, by token. A job stored by another process
# carries that process's token; it then runs with the only context here, if there is one.
_CONTEXTS: dict[str, _JobContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def _context_for(token: str) -> _JobContext:
    with _CONTEXTS_LOCK:
        if token in _CONTEXTS:
            return _CONTEXTS[token]
        if len(_CONTEXTS) == 1:
            return next(iter(_CONTEXTS.values()))
    raise LookupError(f"no scheduler context {token!r} in this process")


def _safe_notify(context: _JobContext, telegram_id: int, text: str, chart: Path | None) -> None:
    # A failing notification must not turn a finished cycle into a job error (nor hide other owners).
    try:
        context.notify(telegram_id, text, chart)
    except Exception:
        logger.exception("could not notify owner %s", telegram_id)


def run_scheduled_cycles(token: str) -> None:
    """The job: one cycle per configured owner; reports go to the owner unless the cycle was skipped."""
    context = _context_for(token)
    if not context.config.schedule.train_in_bot:
        # Workers train (`twin worker`, loop.worker); the bot sends their reports when they are done.
        from loop.worker import enqueue

        for telegram_id in context.owners():
            enqueue(context.engine, telegram_id=telegram_id, trigger="schedule")
        logger.info("nightly cycles queued for %d owner(s)", len(context.owners()))
        return
    failures: dict[int, BaseException] = {}
    for telegram_id in context.owners():
        try:
            outcome = context.runner(context.config, context.engine, telegram_id=telegram_id, trigger="schedule")
        except CycleAlreadyRunning as error:
            logger.info("nightly cycle for owner %s not started: %s", telegram_id, error)
            continue
        except Exception as error:  # one owner's failure must not stop the others
            logger.exception("nightly cycle for owner %s failed", telegram_id)
            failures[telegram_id] = error
            continue
        if outcome.status != "skipped":
            _safe_notify(context, telegram_id, outcome.report_text, outcome.chart_path)
    if failures:
        raise ScheduledCycleError(failures)


def _on_job_error(token: str) -> Callable[[JobExecutionEvent], None]:
    def listener(event: JobExecutionEvent) -> None:
        try:
            context = _context_for(token)
        except LookupError:
            return
        if event.code == EVENT_JOB_MISSED:
            logger.warning("the nightly cycle due at %s was missed (more than %s h late)",
                           event.scheduled_run_time, context.config.schedule.misfire_grace_hours)
            return
        error = event.exception
        failures = error.failures if isinstance(error, ScheduledCycleError) else {t: error for t in context.owners()}
        for telegram_id, failure in failures.items():
            _safe_notify(context, telegram_id, f"The nightly training failed: {type(failure).__name__}: {failure}", None)
    return listener


class TwinScheduler(BackgroundScheduler):
    """APScheduler's BackgroundScheduler with three changes:

    - it does not process jobs once stopped: APScheduler 3's main loop runs one last round after
      `shutdown()` wakes it, which would move a due job's run time past a run that never happens;
    - it looks at the job store at least every `MAX_WAIT_S`: its wait runs on the monotonic clock,
      which stands still while the machine sleeps, so a laptop that slept through the night would
      otherwise start the missed cycle hours after it wakes;
    - it forgets its job context on shutdown.
    """

    token: str = ""

    def _process_jobs(self) -> float | None:
        if self.state == STATE_STOPPED:
            return None
        wait = super()._process_jobs()
        return None if wait is None else min(wait, MAX_WAIT_S)

    def shutdown(self, wait: bool = True) -> None:
        try:
            super().shutdown(wait=wait)
        finally:
            with _CONTEXTS_LOCK:
                _CONTEXTS.pop(self.token, None)


def schedule_timezone(config: Config) -> Any:
    """The tzinfo of `schedule.timezone` ("local" = the machine's zone)."""
    if config.schedule.timezone == "local":
        from tzlocal import get_localzone

        return get_localzone()
    from zoneinfo import ZoneInfo

    return ZoneInfo(config.schedule.timezone)


def nightly_trigger(config: Config) -> CronTrigger:
    return CronTrigger(hour=config.schedule.hour, minute=config.schedule.minute, timezone=schedule_timezone(config))


def upcoming_run(config: Config, now: datetime | None = None) -> datetime | None:
    """The next time the nightly trigger of `config` fires after `now` (None when the schedule is
    off): the one computation of "next run" from the config, for the scheduler, `twin status` and
    the bot's /status without a running scheduler."""
    if not config.schedule.enabled:
        return None
    return nightly_trigger(config).get_next_fire_time(None, now or datetime.now(schedule_timezone(config)))


def _first_run_time(stored: Any, trigger: CronTrigger, now: datetime) -> datetime | None:
    """Keep a stored run time that is already due (missed while the process was down); otherwise
    the trigger's next time. `add_job(replace_existing=True)` alone would recompute it from now
    and silently drop the missed run."""
    upcoming = trigger.get_next_fire_time(None, now)
    if stored is not None and stored.next_run_time is not None and stored.next_run_time <= now:
        return stored.next_run_time
    return upcoming


def start_scheduler(
    config: Config,
    engine: Engine,
    *,
    notify: Notify,
    runner: CycleRunner = run_cycle,
    now: Callable[[], datetime] | None = None,
    paused: bool = False,
) -> TwinScheduler:
    """Start the nightly job in a background thread; `notify(telegram_id, text, chart_path)` is called
    from that thread (a bot must hop onto its event loop itself).

    `now` replaces the clock used to decide the first run (tests); `paused=True` starts the
    scheduler without processing jobs (call `resume()`), e.g. to inspect or move the stored job.
    """
    tz = schedule_timezone(config)
    grace_s = int(config.schedule.misfire_grace_hours * 3600)
    scheduler = TwinScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=engine, tablename=JOBS_TABLE)},
        executors={"default": ThreadPoolExecutor(max_workers=1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": grace_s},
        timezone=tz,
    )
    token = scheduler.token = uuid.uuid4().hex
    with _CONTEXTS_LOCK:
        _CONTEXTS[token] = _JobContext(config=config, engine=engine, notify=notify, runner=runner)
    scheduler.add_listener(_on_job_error(token), EVENT_JOB_ERROR | EVENT_JOB_MISSED)
    # Start paused so that the stored job can be read (job stores open on start) and replaced
    # before anything is processed.
    scheduler.start(paused=True)
    if not config.schedule.enabled:
        if scheduler.get_job(JOB_ID) is not None:
            scheduler.remove_job(JOB_ID)
        logger.info("nightly cycle disabled in config (schedule.enabled = false)")
    else:
        trigger = nightly_trigger(config)
        current = (now() if now else datetime.now(tz)).astimezone(tz)
        try:
            stored = scheduler.get_job(JOB_ID)
        except Exception:  # a job pickled by an incompatible version: replace it
            logger.warning("could not read the stored nightly job; replacing it", exc_info=True)
            stored = None
        first = _first_run_time(stored, trigger, current)
        scheduler.add_job(run_scheduled_cycles, trigger=trigger, args=[token], id=JOB_ID, name="nightly cycle",
                          replace_existing=True, coalesce=True, max_instances=1, misfire_grace_time=grace_s,
                          next_run_time=first)
        logger.info("nightly cycle scheduled at %s %s; next run %s", config.schedule.time, tz, first)
    if not paused:
        scheduler.resume()
    return scheduler


def next_run_time(source: Config | BackgroundScheduler) -> datetime | None:
    """When the nightly job runs next, in the schedule's time zone; None when it is paused or disabled.

    Given a running scheduler, its live job is asked (the bot's /status); given the config, the
    job store is read from the database, which works without a running scheduler (`twin status`).
    """
    if isinstance(source, BackgroundScheduler):
        job = source.get_job(JOB_ID)
        return job.next_run_time if job is not None else None
    from sqlalchemy.exc import SQLAlchemyError

    from storage.db import create_db_engine

    engine = create_db_engine(source.db_url, busy_timeout_s=source.database_busy_timeout_s)
    try:
        stored = SQLAlchemyJobStore(engine=engine, tablename=JOBS_TABLE).lookup_job(JOB_ID)
    except (SQLAlchemyError, LookupError, ImportError, AttributeError):
        stored = None  # no job table yet: the scheduler never ran on this database
    finally:
        engine.dispose()
    if stored is not None and stored.next_run_time is not None:
        return stored.next_run_time.astimezone(schedule_timezone(source))
    if stored is None:
        # Never started yet (`twin run` stores the job): the time the job would get.
        return upcoming_run(source)
    return None
