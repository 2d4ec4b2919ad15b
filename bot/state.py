"""The bot's long-lived services, kept in `application.bot_data` (never in module globals).

Only what must not be lost lives in the database; what is here is process state: the worker
queue, the event loop the scheduler thread hops onto, strangers already refused, "another"
presses in flight, whether this process runs a training cycle, and how drafts stream.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from telegram.ext import Application, ContextTypes

from bot.queue import DraftQueue
from bot.services import Services
from bot.streaming import Streamer

STATE_KEY = "twin"


@dataclass
class BotState:
    services: Services
    queue: DraftQueue
    loop: asyncio.AbstractEventLoop | None = None
    scheduler: Any = None  # the nightly APScheduler, when this process runs it
    reports_task: Any = None  # schedule.train_in_bot = false: the task that sends the workers' reports
    start_scheduler: bool = False
    refused: set[int] = field(default_factory=set)  # strangers told once; nothing else of them is kept
    regenerating: set[int] = field(default_factory=set)  # drafts whose "another" is queued or running
    told_busy: set[int] = field(default_factory=set)  # update ids the owner was told met a busy database
    training: threading.Event = field(default_factory=threading.Event)  # a /train cycle runs in this process
    streamer: Streamer = field(default_factory=Streamer)  # how drafts show while written (telegram.stream)


def state_of(application: Application) -> BotState:
    return application.bot_data[STATE_KEY]


def state(context: ContextTypes.DEFAULT_TYPE) -> BotState:
    return context.bot_data[STATE_KEY]
