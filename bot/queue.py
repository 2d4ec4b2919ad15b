"""The draft worker queue: slow model work off the update loop, in order, bounded per owner.

Handlers put a `DraftJob` here and return at once, so the bot keeps answering buttons while
a draft is being written. One worker thread runs the jobs one after another (one model, one
CPU budget), which also keeps the drafts of a chat in the order their messages came. Each
owner has a lane of their own, bounded by `maxsize` waiting jobs: beyond it `submit` raises
`QueueFull` and the handler tells the owner to try again, instead of piling up work nobody will
wait for. The worker takes the lanes in turn, so one owner's burst neither makes another
owner's message "busy" nor keeps it waiting behind the whole burst.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generic, Hashable, TypeVar

from bot.errors import QueueFull

logger = logging.getLogger(__name__)

T = TypeVar("T")
TYPING_INTERVAL_S = 4.0  # Telegram shows "typing…" for about 5 s per chat action


@dataclass
class DraftJob(Generic[T]):
    """One unit of slow work: `work` runs in the worker thread, `deliver` on the event loop."""

    chat_id: int
    work: Callable[[], T]
    deliver: Callable[[T], Awaitable[None]]
    update: Any = None  # handed to the error callback, so errors reach the right owner
    on_error: Callable[[BaseException], Awaitable[bool]] | None = None  # True: handled, skip the error callback
    owner: Hashable = None  # the lane: the owner's Telegram id
    submitted_at: float = field(default_factory=time.monotonic)


class DraftQueue:
    """Bounded FIFO lanes of draft jobs, one per owner, run one at a time in a worker thread."""

    def __init__(
        self,
        maxsize: int,
        *,
        error_callback: Callable[[Any, BaseException], Awaitable[None]],
        typing: Callable[[int], Awaitable[None]] | None = None,
    ):
        self.maxsize = maxsize
        self._error_callback = error_callback
        self._typing = typing
        self._lanes: OrderedDict[Hashable, deque[DraftJob[Any]]] = OrderedDict()  # in turn order
        self._ready: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._unfinished = 0
        self._runner: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._busy = False
        self._last_typing: dict[int, float] = {}

    @property
    def running(self) -> bool:
        return self._runner is not None and not self._runner.done()

    @property
    def waiting(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    def waiting_for(self, owner: Hashable) -> int:
        return len(self._lanes.get(owner, ()))

    def has_room(self, owner: Hashable) -> bool:
        return self.waiting_for(owner) < self.maxsize

    def start(self) -> None:
        """Start the worker; call from inside the running event loop."""
        if self.running:
            return
        self._ready, self._idle = asyncio.Event(), asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twin-draft")
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="twin-draft-queue")

    def submit(self, job: DraftJob[Any], *, force: bool = False) -> int:
        """Queue a job; returns how many jobs are ahead of it in all lanes. Raises QueueFull when its
        owner already has `maxsize` waiting, unless `force` (work recovered after a restart)."""
        if not self.running:
            raise RuntimeError("the draft queue is not running")
        if not force and not self.has_room(job.owner):
            raise QueueFull(f"{self.maxsize} drafts are waiting")
        assert self._ready is not None and self._idle is not None
        ahead = self.waiting + (1 if self._busy else 0)
        self._lanes.setdefault(job.owner, deque()).append(job)
        self._unfinished += 1
        self._idle.clear()
        self._ready.set()
        return ahead

    async def drain(self) -> None:
        """Wait until every queued job has been run and delivered."""
        if self._idle is not None and self.running:
            await self._idle.wait()

    async def stop(self, *, drain_timeout: float | None = 0.0) -> None:
        """Stop the worker, first letting queued jobs finish for up to `drain_timeout` seconds
        (None: as long as they take; 0: drop them)."""
        if not self.running:
            return
        if drain_timeout != 0:
            try:
                await asyncio.wait_for(self.drain(), timeout=drain_timeout)
            except asyncio.TimeoutError:
                logger.warning("stopping with %d drafts still queued; their messages are stored and are "
                               "answered after the next start", self.waiting)
        assert self._runner is not None
        self._runner.cancel()
        try:
            await self._runner
        except asyncio.CancelledError:
            pass
        if self._executor is not None:
            # A draft in progress cannot be interrupted; it finishes in the background.
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._runner = self._executor = None
        self._lanes.clear()  # dropped jobs: their messages are stored and queued again at the next start
        self._unfinished = 0

    async def _next(self) -> DraftJob[Any]:
        """The next job, taking the owners' lanes in turn."""
        assert self._ready is not None
        while not self._lanes:
            self._ready.clear()
            await self._ready.wait()
        owner, lane = next(iter(self._lanes.items()))
        job = lane.popleft()
        if lane:
            self._lanes.move_to_end(owner)
        else:
            del self._lanes[owner]
        return job

    async def _run(self) -> None:
        assert self._idle is not None
        loop = asyncio.get_running_loop()
        while True:
            job = await self._next()
            self._busy = True
            try:
                typing_task = loop.create_task(self._keep_typing(job.chat_id)) if self._typing else None
                try:
                    result = await loop.run_in_executor(self._executor, job.work)
                finally:
                    if typing_task is not None:
                        typing_task.cancel()
                await job.deliver(result)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # one failed job must not stop the queue
                await self._handle_error(job, error)
            finally:
                self._busy = False
                self._unfinished -= 1
                if self._unfinished == 0:
                    self._idle.set()

    async def _handle_error(self, job: DraftJob[Any], error: BaseException) -> None:
        try:
            if job.on_error is not None and await job.on_error(error):
                return
            await self._error_callback(job.update, error)
        except Exception:
            logger.exception("the error callback of the draft queue failed")

    async def _keep_typing(self, chat_id: int) -> None:
        """Show "typing…" while the draft is written; skipped while the last one still shows."""
        assert self._typing is not None
        while True:
            now = time.monotonic()
            if now - self._last_typing.get(chat_id, float("-inf")) >= TYPING_INTERVAL_S:
                self._last_typing[chat_id] = now
                try:
                    await self._typing(chat_id)
                except Exception as error:  # a lost chat action is cosmetic
                    logger.debug("chat action failed in chat %s: %r", chat_id, error)
            await asyncio.sleep(TYPING_INTERVAL_S)
