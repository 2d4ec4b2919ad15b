"""Updates confirmed to Telegram only after the bot has handled them, with long polling and webhooks.

python-telegram-bot's `Updater` moves the `getUpdates` offset (which confirms updates, so
Telegram drops them) as soon as it has fetched them into an in-memory queue, and its webhook
server answers 200 as soon as it has put the update there: a kill -9 loses every update taken
but not yet handled. `HandledFirstUpdater` keeps the `Updater` interface (`start_polling`,
`start_webhook`, `stop`, `running`), so `run_polling`, `run_webhook` and everything else of PTB
work unchanged, but both modes go through `handle`, which awaits
`application.process_update(update)`: polling moves the offset past an update only after that
returned, and the webhook answers 200 only then (PTB's webhook handler awaits `put` on the
updater's queue before it answers; the queue given to it handles the update in `put`). A text is
by then stored and its draft queued (bot.handlers.queue_draft), a verdict committed and
acknowledged.

An update whose handler found the database locked past its busy timeout (`DatabaseBusy`: nothing
was written; the error handler calls `handle_again`) is handled again after a pause, until it
goes through or the bot stops; it is not confirmed meanwhile, so a kill loses it neither.

Semantics: at least once. An update handled just before a kill comes again after the restart;
a text is then recognised by its Telegram message id and not drafted twice, and a second press
of a decided button is answered "already …" and changes nothing. Updates are handled one at a
time, in order (the bot is built with `concurrent_updates(False)` for the same reason, and the
webhook is registered with `max_connections=1`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import logging
from typing import Any, Sequence

from telegram.error import InvalidToken, RetryAfter, TelegramError
from telegram.ext import Application, Updater

from bot.telegram_io import PAUSES_S, pause_after, with_retry

logger = logging.getLogger(__name__)

BACKOFF_S = PAUSES_S[1:]  # 1 s … 30 s: pauses after failed getUpdates calls; the last repeats
BUSY_PAUSES_S = PAUSES_S[1:-1]  # 1 s … 15 s: pauses before handling again an update that met a locked
# database; the last repeats


class _HandleOnPut(asyncio.Queue):  # type: ignore[type-arg]
    """The queue PTB's webhook server puts updates into: `put` returns once the update was handled
    (the server answers Telegram after that), or raises so that Telegram is not answered 200."""

    def __init__(self, updater: "HandledFirstUpdater"):
        super().__init__()
        self._updater = updater

    async def put(self, item: object) -> None:
        if not await self._updater.handle(item):
            import tornado.web  # PTB's webhook server; the answer makes Telegram deliver it again

            raise tornado.web.HTTPError(503, reason="stopping; update not handled")


class HandledFirstUpdater(Updater):
    """An `Updater` that confirms each update (polling: the offset, webhook: the 200) only once it was handled."""

    def __init__(self, application: Application):
        super().__init__(bot=application.bot, update_queue=_HandleOnPut(self))
        self._application = application
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._handling = False
        self._one_at_a_time = asyncio.Lock()  # webhook requests may come in parallel
        self._again: set[int] = set()  # update ids whose handler asked to be run again
        self._offset = 0  # every update below it was handled
        self._confirmed = 0  # the offset Telegram was last told

    @property
    def running(self) -> bool:
        return self._task is not None or super().running

    def handle_again(self, update: object) -> None:
        """Called by the error handler while `update` is handled: it met a busy database, nothing of
        it was stored; run it again after a pause instead of counting it as handled."""
        update_id = getattr(update, "update_id", None)
        if update_id is not None:
            self._again.add(update_id)

    async def handle(self, update: object) -> bool:
        """Handle one update, one at a time; True once handled, False when the bot stopped first
        (then it is not confirmed and Telegram delivers it again)."""
        update_id = getattr(update, "update_id", None)
        async with self._one_at_a_time:
            attempt = 0
            while not self._stopping:
                try:
                    await self._application.process_update(update)
                except Exception:  # handler errors went to the error handler; this is PTB itself failing
                    logger.exception("update %s could not be processed", update_id)
                    return True
                if update_id not in self._again:
                    return True
                self._again.discard(update_id)
                pause = pause_after(attempt, BUSY_PAUSES_S)
                attempt += 1
                logger.warning("update %s met a busy database; handling it again in %.0f s", update_id, pause)
                await self._sleep_unless_stopping(pause)
            return False

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self._stopping and loop.time() < deadline:
            await asyncio.sleep(min(0.1, deadline - loop.time()))

    async def start_webhook(self, *args: Any, **kwargs: Any) -> asyncio.Queue[object]:  # type: ignore[override]
        """PTB's webhook server; each update it receives is handled before Telegram gets its 200."""
        self._stopping = False
        return await super().start_webhook(*args, **kwargs)

    async def start_polling(  # type: ignore[override]
        self,
        poll_interval: float = 0.0,
        timeout: dtm.timedelta | int = dtm.timedelta(seconds=10),
        bootstrap_retries: int = 0,
        allowed_updates: Sequence[str] | None = None,
        drop_pending_updates: bool | None = None,
        error_callback: Any = None,
    ) -> asyncio.Queue[object]:
        """Remove any webhook, then poll in a background task (the arguments are `Updater`'s;
        errors are logged and retried here, so `error_callback` and `poll_interval` are unused)."""
        if self.running:
            raise RuntimeError("This Updater is already running!")
        await with_retry(lambda: self.bot.delete_webhook(drop_pending_updates=bool(drop_pending_updates)),
                         what="deleteWebhook")
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._poll(timeout, allowed_updates),
                                                            name="twin-polling")
        return self.update_queue

    async def stop(self) -> None:
        """Stop polling: a long poll in progress is dropped (nothing it fetched was confirmed), an
        update being handled is finished; then Telegram is told what was handled."""
        self._stopping = True  # an update waiting for a busy database is given up (not confirmed)
        if self._task is None:
            await super().stop()
            return
        if not self._handling:
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._offset > self._confirmed:
            try:
                await self.bot.get_updates(offset=self._offset, timeout=0, limit=1)
                self._confirmed = self._offset
            except TelegramError as error:  # they come again at the next start and are recognised then
                logger.warning("could not confirm the last handled updates: %s", error)

    async def _poll(self, timeout: dtm.timedelta | int, allowed_updates: Sequence[str] | None) -> None:
        failures = 0
        while not self._stopping:
            try:
                updates = await self.bot.get_updates(offset=self._offset or None, timeout=timeout,
                                                     allowed_updates=allowed_updates)
            except InvalidToken:
                logger.critical("Telegram refused the bot token; polling stopped")
                return
            except RetryAfter as error:
                await asyncio.sleep(_seconds(error.retry_after))
                continue
            except Exception as error:  # network errors, timeouts, 5xx, a conflict with another poller
                pause = pause_after(failures, BACKOFF_S)
                failures += 1
                logger.warning("getUpdates failed (%s: %s); polling again in %.0f s", type(error).__name__, error,
                               pause, exc_info=not isinstance(error, TelegramError))
                await asyncio.sleep(pause)
                continue
            failures = 0
            self._confirmed = self._offset
            for update in updates:
                if update.update_id < self._offset:
                    continue
                self._handling = True
                try:
                    handled = await self.handle(update)
                finally:
                    self._handling = False
                if not handled:
                    return
                self._offset = update.update_id + 1
                if self._stopping:
                    return


def _seconds(value: dtm.timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)
