"""The training queue: cycles requested by the bot, the scheduler or `twin train --queue`, run by
`twin worker` processes on this or other machines (README, "Scale").

The queue is a table (storage.models.CycleRequest) in the twin's database, so every process that
reaches the database shares it: PostgreSQL for workers on several machines, or one SQLite file for
several workers on one. A worker claims a due request with a conditional UPDATE (one worker wins
a request), runs the ordinary cycle (`loop.cycle.run_cycle`, its training in a child process)
under the owner's lock without the machine-wide one, and records the outcome and the report on
the request; the bot sends reports it finds there (`take_reports`).

A request whose worker died is put back: at once when that worker ran on this host and its pid is
gone, after `STALE_AFTER` without a heartbeat otherwise. A request whose owner's lock is held
(a /train in the bot) waits `BUSY_RETRY` and is tried again.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from sqlalchemy.engine import Engine

from loop.config import Config
from loop.cycle import LOCK_STALE_AFTER, CycleAlreadyRunning, CycleOutcome, _holder_alive, run_cycle
from storage import repo
from storage.db import session_scope
from storage.models import CycleRequestStatus

logger = logging.getLogger(__name__)

STALE_AFTER = LOCK_STALE_AFTER  # a running request silent this long lost its worker
BUSY_RETRY = timedelta(minutes=2)  # the owner's cycle lock was held: look again this much later
HEARTBEAT_EVERY_S = 30.0

CycleRunner = Callable[..., CycleOutcome]


@dataclass
class Queued:
    request_id: int
    new: bool  # False: merged into a request that was already waiting


def enqueue(engine: Engine, *, telegram_id: int, trigger: str, force: bool = False,
            due_at: datetime | None = None) -> Queued:
    """Put the owner's cycle in the queue (merged with one already waiting)."""
    with session_scope(engine) as session:
        owner = repo.get_or_create_owner(session=session, telegram_id=telegram_id)
        request, new = repo.enqueue_cycle(session=session, owner_id=owner.id, trigger=trigger, force=force,  # type: ignore[arg-type]
                                          due_at=due_at)
        return Queued(request.id, new)  # type: ignore[arg-type]


def take_reports(engine: Engine) -> list[tuple[int, int, str]]:
    """(request id, Telegram id, report text) of finished queued cycles not yet sent to the owner.
    Skipped cycles have no report worth a message and are left out, as the scheduler leaves them."""
    with session_scope(engine) as session:
        return [(request.id, telegram_id, request.report)  # type: ignore[misc]
                for request, telegram_id in repo.unreported_cycle_requests(session=session)]


def mark_reported(engine: Engine, request_id: int) -> None:
    with session_scope(engine) as session:
        repo.mark_cycle_request_reported(session=session, request_id=request_id)


def queue_rows(engine: Engine, *, telegram_id: int | None = None) -> list[dict[str, Any]]:
    """The queue as plain dicts (tests, `twin worker --once` output)."""
    with session_scope(engine) as session:
        owner_id = None
        if telegram_id is not None:
            owner = repo.find_owner(session=session, telegram_id=telegram_id)
            if owner is None:
                return []
            owner_id = owner.id
        return [{"id": r.id, "owner_id": r.owner_id, "status": r.status.value, "outcome": r.outcome,
                 "cycle_id": r.cycle_id, "worker": r.worker, "attempts": r.attempts, "trigger": r.trigger}
                for r in repo.list_cycle_requests(session=session, owner_id=owner_id)]


@dataclass
class WorkerSummary:
    ran: list[dict[str, Any]] = field(default_factory=list)  # one entry per cycle this worker ran


def _telegram_id(engine: Engine, owner_id: int) -> int:
    with session_scope(engine) as session:
        from storage.models import Owner

        owner = session.get(Owner, owner_id)
        if owner is None:
            raise LookupError(f"owner {owner_id} is gone")
        return owner.telegram_id


def requeue_abandoned(engine: Engine, *, now: datetime | None = None) -> list[int]:
    """Put back running requests whose worker is dead (on this host) or silent past STALE_AFTER."""
    now = now or datetime.now(timezone.utc)
    put_back: list[int] = []
    with session_scope(engine) as session:
        for request in repo.running_cycle_requests(session=session):
            beat, claimed = request.heartbeat_at or now, request.claimed_at or now
            if now - beat > STALE_AFTER or not _holder_alive(request.worker, claimed):
                repo.requeue_cycle_request(session=session, request_id=request.id, due_at=now,  # type: ignore[arg-type]
                                           note=f"worker {request.worker} stopped; queued again")
                put_back.append(request.id)  # type: ignore[arg-type]
    if put_back:
        logger.warning("requests %s lost their worker and are queued again", put_back)
    return put_back


class Worker:
    """Takes due requests from the queue and runs up to `concurrency` cycles at once."""

    def __init__(self, config: Config, engine: Engine, *, concurrency: int = 1, poll_s: float = 15.0,
                 runner: CycleRunner = run_cycle):
        if concurrency < 1:
            raise ValueError("concurrency must be 1 or more")
        self.config, self.engine, self.concurrency, self.poll_s, self.runner = config, engine, concurrency, poll_s, runner
        self.id = repo.lock_holder_id()
        self.stop = threading.Event()
        self.summary = WorkerSummary()
        self._running: dict[int, Future[None]] = {}
        self._lock = threading.Lock()

    def _claim(self, limit: int) -> list[Any]:
        claimed = []
        with session_scope(self.engine) as session:
            candidates = repo.due_cycle_requests(session=session, limit=limit)
        for request in candidates:
            with session_scope(self.engine) as session:
                if repo.claim_cycle_request(session=session, request_id=request.id, worker=self.id):
                    claimed.append(request)
        return claimed

    def _run(self, request: Any) -> None:
        started = time.perf_counter()
        try:
            telegram_id = _telegram_id(self.engine, request.owner_id)
            outcome = self.runner(self.config, self.engine, telegram_id=telegram_id, force=request.force,
                                  trigger=request.trigger, exclusive=False)
        except CycleAlreadyRunning as error:
            logger.info("request %s: %s; trying again in %s", request.id, error, BUSY_RETRY)
            with session_scope(self.engine) as session:
                repo.requeue_cycle_request(session=session, request_id=request.id, note=str(error),
                                           due_at=datetime.now(timezone.utc) + BUSY_RETRY)
            return
        except Exception as error:  # one owner's failure must not stop the worker
            logger.exception("request %s failed", request.id)
            with session_scope(self.engine) as session:
                repo.finish_cycle_request(session=session, request_id=request.id, status=CycleRequestStatus.failed,
                                          outcome=f"{type(error).__name__}: {error}",
                                          report=f"The nightly training failed: {type(error).__name__}: {error}")
            return
        report = outcome.report_text if outcome.status != "skipped" else ""
        with session_scope(self.engine) as session:
            repo.finish_cycle_request(session=session, request_id=request.id, status=CycleRequestStatus.done,
                                      outcome=outcome.status, cycle_id=outcome.cycle_id, report=report)
        with self._lock:
            self.summary.ran.append({"request": request.id, "owner": telegram_id, "cycle": outcome.cycle_id,
                                     "status": outcome.status, "seconds": round(time.perf_counter() - started, 1)})
        logger.info("request %s: cycle %s for owner %s %s", request.id, outcome.cycle_id, telegram_id, outcome.status)

    def _beat(self) -> None:
        with self._lock:
            ids = [request_id for request_id, future in self._running.items() if not future.done()]
        with session_scope(self.engine) as session:
            repo.heartbeat_cycle_requests(session=session, request_ids=ids, worker=self.id)

    def run(self, *, once: bool = False) -> WorkerSummary:
        """Work until `stop` is set; with `once`, until nothing is due and nothing runs."""
        last_beat = time.monotonic()
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="twin-worker") as pool:
            while not self.stop.is_set():
                with self._lock:
                    self._running = {k: f for k, f in self._running.items() if not f.done()}
                    free = self.concurrency - len(self._running)
                requeue_abandoned(self.engine)
                claimed = self._claim(free) if free > 0 else []
                for request in claimed:
                    with self._lock:
                        self._running[request.id] = pool.submit(self._run, request)
                if once and not claimed and not self._running:
                    break
                if time.monotonic() - last_beat >= HEARTBEAT_EVERY_S:
                    self._beat()
                    last_beat = time.monotonic()
                # Look again soon while cycles run (a slot may free up), else at the poll interval.
                self.stop.wait(min(self.poll_s, 1.0) if self._running or claimed else self.poll_s)
        return self.summary
