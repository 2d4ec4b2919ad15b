"""Long polling that confirms an update to Telegram only after the bot has handled it.

python-telegram-bot's `Updater` moves the `getUpdates` offset (which confirms updates, so
Telegram drops them) as soon as it has fetched them into an in-memory queue: a kill -9 loses
every update fetched but not yet handled. `HandledFirstUpdater` keeps the `Updater` interface
(`start_polling`, `stop`, `running`), so `Application.run_polling` and everything else of PTB
work unchanged, but its loop awaits `application.process_update(update)` for each update and
moves the offset past an update only after that returned. A text is by then stored and its
draft queued (bot.handlers.queue_draft), a verdict committed and acknowledged.

Semantics: at least once. An update handled just before a kill comes again after the restart;
a text is then recognised by its Telegram message id and not drafted twice, and a second press
of a decided button is answered "already …" and changes nothing. Updates are handled one at a
time, in order (the bot is built with `concurrent_updates(False)` for the same reason).

Webhook mode is the `Updater`'s own: Telegram redelivers a webhook update until it gets 200,
and PTB answers 200 once the update is queued; that gap remains (see RELIABILITY.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import logging
from typing import Any, Sequence

from telegram.error import InvalidToken, RetryAfter, TelegramError
from telegram.ext import Application, Updater

from bot.telegram_io import with_retry

logger = logging.getLogger(__name__)

BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)  # pauses after failed getUpdates calls; the last repeats


class HandledFirstUpdater(Updater):
    """An `Updater` whose long polling confirms each update only once it was handled."""

    def __init__(self, application: Application):
        super().__init__(bot=application.bot, update_queue=application.update_queue)
        self._application = application
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._handling = False
        self._offset = 0  # every update below it was handled
        self._confirmed = 0  # the offset Telegram was last told

    @property
    def running(self) -> bool:
        return self._task is not None or super().running

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
        if self._task is None:
            await super().stop()
            return
        self._stopping = True
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
                pause = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
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
                    await self._application.process_update(update)
                except Exception:  # handler errors went to the error handler; this is PTB itself failing
                    logger.exception("update %s could not be processed", update.update_id)
                finally:
                    self._handling = False
                self._offset = update.update_id + 1
                if self._stopping:
                    return


def _seconds(value: dtm.timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)
