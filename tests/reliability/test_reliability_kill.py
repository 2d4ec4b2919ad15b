"""kill -9 of the running bot while drafts and verdicts are being written, then a restart.

The bot is a real process (tests/reliability/run_bot.py: `twin run` with the FakeDrafter)
talking to the fake Bot API of this test over HTTP, on the test's database (SQLite, and
PostgreSQL in CI). After SIGKILL the database must be consistent, every verdict the owner saw
acknowledged must be stored, and the buttons of drafts shown before the kill must still work.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import sqlite3
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, select

from bot import keyboards
from loop.config import TOKEN_ENV, Config
from storage.models import Conversation, Draft, Feedback, Message
from bench.fakebotapi import FakeBotApi
from tests.reliability.bot import draft_messages, feedback_data_of, fetched, maybe_shown_notices, until
from tests.reliability.figures import record
from tests.bot.test_bot_commands import free_port
from tests.bot.test_bot_harness import OWNER_ID

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "7123456789:AAH3kq9ZtWv0xYbCdEfGhIjKlMnOpQrStUv"
SAVED = "Saved"


class BotProcess:
    """`twin run` (FakeDrafter) as a child process, its output in a log file."""

    def __init__(self, config: Config, api: FakeBotApi, log: Path, *, draft_delay: float,
                 webhook_port: int | None = None):
        self.config, self.api, self.log, self.draft_delay = config, api, log, draft_delay
        self.webhook_port = webhook_port
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {**os.environ, TOKEN_ENV: TOKEN, "PYTHONPATH": str(ROOT)}
        args = [sys.executable, "-m", "tests.reliability.run_bot", "--data-dir", str(self.config.data_dir),
                "--database-url", self.config.database_url, "--owner", str(OWNER_ID),
                "--base-url", self.api.base_url, "--base-file-url", self.api.base_file_url,
                "--draft-delay", str(self.draft_delay)]
        if self.webhook_port:
            args += ["--webhook-port", str(self.webhook_port)]
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(*args, cwd=ROOT, env=env, stdout=log,
                                                                stderr=log, stdin=asyncio.subprocess.DEVNULL)
        # Polling starts right after deleteWebhook, the webhook server right after setWebhook; updates
        # sent before that simply wait on the server (or are posted again until the webhook answers).
        await self.api.wait_for(lambda: self.starts() > self._starts_before or self.exited(), timeout=60,
                                what="the bot process starting to poll or to listen")
        assert not self.exited(), self.log.read_text(errors="replace")[-3000:]

    def starts(self) -> int:
        return len(self.api.calls_to("deleteWebhook")) + len(self.api.calls_to("setWebhook"))

    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    @property
    def _starts_before(self) -> int:
        return getattr(self, "_before", 0)

    async def kill(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        return await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()

    async def restart(self) -> None:
        self._before = self.starts()
        await self.start()


def check_consistency(engine: Engine, database_url: str) -> dict[str, Any]:
    """Integrity of the file (SQLite) and of the rows (any database): no half-written rows."""
    facts: dict[str, Any] = {}
    if make_url(database_url).get_backend_name() == "sqlite":
        with engine.connect() as connection:
            facts["integrity_check"] = connection.execute(text("PRAGMA integrity_check")).scalar()
            facts["foreign_key_errors"] = len(connection.execute(text("PRAGMA foreign_key_check")).all())
        assert facts["integrity_check"] == "ok" and facts["foreign_key_errors"] == 0, facts
    with Session(engine) as session:
        messages = {m.id: m for m in session.exec(select(Message)).all()}
        drafts = {d.id: d for d in session.exec(select(Draft)).all()}
        conversations = {c.id for c in session.exec(select(Conversation)).all()}
        feedback = list(session.exec(select(Feedback)).all())
    assert all(m.conversation_id in conversations and m.text for m in messages.values())
    assert all(d.message_id in messages and d.conversation_id in conversations and d.text and d.incoming
               for d in drafts.values())
    assert all(f.draft_id in drafts and f.owner_id == drafts[f.draft_id].owner_id for f in feedback)
    assert len({f.draft_id for f in feedback}) == len(feedback)
    facts.update(messages=len(messages), drafts=len(drafts), feedback=len(feedback))
    return facts


def acknowledged(api: FakeBotApi, presses: dict[str, str]) -> dict[int, str]:
    """Draft id -> action of every press the owner saw answered with "Saved"."""
    done = {}
    for query_id, data in presses.items():
        if SAVED in (api.answers.get(query_id) or {}).get("text", ""):
            press = keyboards.parse_feedback_data(data)
            done[press.draft_id] = press.action
    return done


def stored_verdicts(engine: Engine) -> dict[int, str]:
    reverse = {kind: action for action, kind in keyboards.ACTIONS.items()}
    with Session(engine) as session:
        return {f.draft_id: reverse[f.kind] for f in session.exec(select(Feedback)).all()}


@pytest.fixture
async def bot_api():
    async with FakeBotApi(token=TOKEN) as api:
        yield api


async def test_kill_9_while_writing_then_restart_keeps_the_database_and_every_acknowledged_verdict(
        config: Config, engine: Engine, bot_api: FakeBotApi, tmp_path: Path) -> None:
    api, owner = bot_api, bot_api.user(OWNER_ID, "Olga")
    bot = BotProcess(config, api, tmp_path / "bot.log", draft_delay=0.05)
    await bot.start()
    presses: dict[str, str] = {}
    try:
        # Phase 1: ten drafts, half of them answered.
        first = [api.send_text(owner, f"before the kill {i}") for i in range(10)]
        await api.wait_for(lambda: len(draft_messages(api, OWNER_ID)) >= 10, what="ten drafts")
        # Copies: the server's messages lose their buttons once a verdict is shown.
        shown_before = {m["reply_to_message"]["message_id"]: copy.deepcopy(m) for m in draft_messages(api, OWNER_ID)}
        for index, message in enumerate(first[:5]):
            data = feedback_data_of(shown_before[message["message_id"]], "ar"[index % 2])
            presses[api.press(shown_before[message["message_id"]], data)] = data
        await api.wait_for(lambda: len(acknowledged(api, presses)) == 5, what="five verdicts acknowledged")

        # Phase 2: more messages and presses in flight, then SIGKILL mid-way.
        second = [api.send_text(owner, f"during the kill {i}") for i in range(20)]
        pressed_second: set[int] = set()

        def press_new_drafts() -> bool:
            for message in draft_messages(api, OWNER_ID):
                if message["message_id"] in pressed_second or "reply_markup" not in message:
                    continue
                if message["reply_to_message"]["message_id"] in shown_before:
                    continue
                pressed_second.add(message["message_id"])
                data = feedback_data_of(message, "a")
                presses[api.press(message, data)] = data
            return len(pressed_second) >= 6 and len(acknowledged(api, presses)) >= 8

        await api.wait_for(press_new_drafts, timeout=60, what="drafts and verdicts in flight")
        acknowledged_at_kill = acknowledged(api, presses)
        returncode = await bot.kill()
        assert returncode == -signal.SIGKILL

        # Straight after the kill: a consistent database holding every acknowledged verdict.
        facts = check_consistency(engine, config.db_url)
        stored = stored_verdicts(engine)
        missing = {d: a for d, a in acknowledged_at_kill.items() if stored.get(d) != a}
        assert missing == {}, f"acknowledged but not stored: {missing}"

        # Restart: old buttons work, and the conversation goes on.
        await bot.restart()
        undecided = [m for m in shown_before.values() if keyboards.parse_feedback_data(
            feedback_data_of(m, "a")).draft_id not in stored_verdicts(engine)]
        assert undecided, "some drafts from before the kill were left without a verdict"
        old_presses = {}
        for message in undecided:
            data = feedback_data_of(message, "a")
            old_presses[api.press(message, data)] = data
        decided = next(iter(acknowledged_at_kill))
        again = api.press(shown_before[first[0]["message_id"]], f"fb:{decided}:r")
        sync = api.send_text(owner, "after the restart")
        await api.wait_for(lambda: any(m["reply_to_message"]["message_id"] == sync["message_id"]
                                       for m in draft_messages(api, OWNER_ID)), timeout=60,
                           what="the draft of a message sent after the restart")
        await api.wait_for(lambda: all(q in api.answers for q in [*old_presses, again]), what="old buttons answered")
        # What the kill interrupted was queued again before anything new: every message has its draft.
        shown_for = Counter(m["reply_to_message"]["message_id"] for m in draft_messages(api, OWNER_ID))
        # A draft whose send the kill interrupted is not sent again: its message gets a notice instead.
        noticed = {m["reply_to_message"]["message_id"] for m in maybe_shown_notices(api, OWNER_ID)}
        assert all(SAVED in api.answers[q]["text"] for q in old_presses)
        assert "already" in api.answers[again]["text"]
        presses.update(old_presses)
        final = stored_verdicts(engine)
        assert all(final.get(d) == a for d, a in acknowledged(api, presses).items())
        check_consistency(engine, config.db_url)
    finally:
        await bot.stop()

    with Session(engine) as session:
        incoming = Counter(m.text for m in session.exec(select(Message).where(Message.role == "other")).all())
        # The text after a 🗑 press is the owner's version of the rejected draft, not one to answer.
        versions = {f.text for f in session.exec(select(Feedback)).all() if f.text}
    sent = [m["text"] for m in first + second] + ["after the restart"]
    never_stored = [t for t in sent if t not in incoming and t not in versions]
    stored_twice = sum(1 for t in sent if incoming[t] > 1)
    never_answered = [m["text"] for m in first + second + [sync]
                      if not shown_for[m["message_id"]] and m["message_id"] not in noticed and m["text"] not in versions]
    shown_twice = sum(1 for count in shown_for.values() if count > 1)
    assert never_stored == [] and stored_twice == 0 and never_answered == [], (never_stored, never_answered)
    assert shown_twice == 0, shown_for
    log = (tmp_path / "bot.log").read_text(errors="replace")
    assert TOKEN.split(":")[1] not in log
    record("kill -9: messages sent / verdicts acknowledged before the kill", f"{len(sent)} / {len(acknowledged_at_kill)}")
    record("kill -9: acknowledged verdicts missing after the kill", len(missing))
    record("kill -9: database check after the kill", f"{facts.get('integrity_check', 'n/a (PostgreSQL)')}, "
           f"{facts['messages']} messages, {facts['drafts']} drafts, {facts['feedback']} verdicts")
    record("kill -9: old buttons pressed after the restart / stored", f"{len(old_presses)} / {len(old_presses)}")
    record("kill -9: messages never answered (fetched or queued when killed)", len(never_answered))
    record("kill -9: messages stored twice (handled, not yet confirmed, delivered again)", stored_twice)
    record("kill -9: drafts shown twice (sent, killed before noted as shown)", shown_twice)
    record("kill -9: drafts interrupted while being sent, noticed instead of sent again", len(noticed))


async def test_messages_fetched_but_not_yet_handled_survive_a_kill_9(
        config: Config, engine: Engine, bot_api: FakeBotApi, tmp_path: Path) -> None:
    """The bot fetches a press and five messages in one getUpdates answer; the press's handler
    waits for the database (another writer holds SQLite's lock), so the five are fetched but not
    handled when the bot is killed. Telegram must not have been told to drop them."""
    path = make_url(config.db_url).database
    if make_url(config.db_url).get_backend_name() != "sqlite":
        pytest.skip("the handler is held with SQLite's writer lock")
    api, owner = bot_api, bot_api.user(OWNER_ID, "Olga")
    bot = BotProcess(config, api, tmp_path / "bot.log", draft_delay=0.0)
    locked, release = threading.Event(), threading.Event()
    await bot.start()
    try:
        shown = await _draft(api, owner, "first")

        holder = threading.Thread(target=_hold_the_writer_lock, args=(path, locked, release))
        holder.start()
        assert await asyncio.to_thread(locked.wait, 10)
        # Injected together, so one getUpdates answer carries all six.
        press = api.press(shown, feedback_data_of(shown, "a"))  # its handler now waits for the database
        waiting = [api.send_text(owner, f"waiting {i}") for i in range(5)]
        await api.wait_for(lambda: fetched(api, messages=waiting, queries=[press]), timeout=60,
                           what="the updates fetched by the bot")
        # An updater that confirms on fetching does so with its very next getUpdates call; give it
        # the time to (this is not a measurement).
        await asyncio.sleep(0.5)
        unconfirmed = {u["message"]["message_id"] for u in api.pending_updates() if "message" in u}
        assert [m["message_id"] in unconfirmed for m in waiting] == [True] * len(waiting)
        assert press not in api.answers  # not handled: nothing was acknowledged
        await bot.kill()
        release.set()
        holder.join()
        await bot.restart()
        await _draft(api, owner, "after the restart")
        answered = Counter(m["reply_to_message"]["message_id"] for m in draft_messages(api, OWNER_ID))
        assert [answered[m["message_id"]] for m in waiting] == [1] * len(waiting)
        await api.wait_for(lambda: press in api.answers, what="the press handled after the restart")
        assert SAVED in api.answers[press]["text"]
        assert list(stored_verdicts(engine).values()) == ["a"]
        check_consistency(engine, config.db_url)
    finally:
        release.set()
        await bot.stop()
    record("kill -9 with 5 messages fetched, not yet handled: answered after the restart",
           f"{sum(answered[m['message_id']] == 1 for m in waiting)} / {len(waiting)}")


async def _draft(api: FakeBotApi, owner: dict[str, Any], text_: str) -> dict[str, Any]:
    incoming = api.send_text(owner, text_)
    return await api.wait_for(lambda: next((m for m in draft_messages(api, OWNER_ID)
                                            if m["reply_to_message"]["message_id"] == incoming["message_id"]), None),
                              timeout=60, what=f"the draft for {text_!r}")


async def test_messages_waiting_in_the_draft_queue_are_answered_after_a_kill_9(
        config: Config, engine: Engine, bot_api: FakeBotApi, tmp_path: Path) -> None:
    api, owner = bot_api, bot_api.user(OWNER_ID, "Olga")
    bot = BotProcess(config, api, tmp_path / "bot.log", draft_delay=1.0)
    await bot.start()
    try:
        waiting = [api.send_text(owner, f"queued {i}") for i in range(4)]
        await api.wait_for(lambda: api.calls_to("sendChatAction"), what="the first draft being written")
        await until(lambda: not api.pending_updates(), what="the updates fetched and confirmed", timeout=60)
        await asyncio.sleep(0.3)  # let the handlers put the other messages in the queue (not a measurement)
        await bot.kill()
        await bot.restart()
        await _draft(api, owner, "after the restart")
        answered = {m["reply_to_message"]["message_id"] for m in draft_messages(api, OWNER_ID)}
        with Session(engine) as session:
            stored = {m.text for m in session.exec(select(Message)).all()}
        assert [m["text"] in stored for m in waiting] == [True] * len(waiting)
        assert [m["message_id"] in answered for m in waiting] == [True] * len(waiting)
        with Session(engine) as session:  # each stored once, drafted once (the redelivered ones recognised)
            incoming = Counter(m.text for m in session.exec(select(Message).where(Message.role == "other")).all())
            drafted = Counter(d.incoming for d in session.exec(select(Draft)).all())
        assert [(incoming[m["text"]], drafted[m["text"]]) for m in waiting] == [(1, 1)] * len(waiting)
        check_consistency(engine, config.db_url)
    finally:
        await bot.stop()
    record("kill -9 with 4 messages waiting in the draft queue: answered after the restart",
           f"{sum(m['message_id'] in answered for m in waiting)} / {len(waiting)}")


def _hold_the_writer_lock(path: str, locked: threading.Event, release: threading.Event) -> None:
    """Another connection holds SQLite's writer lock until `release`: a handler that writes waits."""
    connection = sqlite3.connect(path, timeout=30)
    connection.execute("BEGIN IMMEDIATE")
    locked.set()
    release.wait(60)
    connection.rollback()
    connection.close()


async def test_a_webhook_update_taken_but_not_yet_handled_survives_a_kill_9(
        config: Config, engine: Engine, bot_api: FakeBotApi, tmp_path: Path) -> None:
    """Telegram drops a webhook update once the bot answered 200. PTB answers once the update is in
    its memory; the twin answers once it was handled. The handler is held with SQLite's writer lock
    (another connection holds it), the bot is killed, Telegram posts the update again, and the
    restarted bot drafts it."""
    if make_url(config.db_url).get_backend_name() != "sqlite":
        pytest.skip("the handler is held with SQLite's writer lock")
    api, owner = bot_api, bot_api.user(OWNER_ID, "Olga")
    bot = BotProcess(config, api, tmp_path / "bot.log", draft_delay=0.0, webhook_port=free_port())
    locked, release = threading.Event(), threading.Event()
    await bot.start()
    try:
        await _draft(api, owner, "first, through the webhook")
        holder = threading.Thread(target=_hold_the_writer_lock,
                                  args=(make_url(config.db_url).database, locked, release))
        holder.start()
        assert await asyncio.to_thread(locked.wait, 10)
        posted_before = len(api.webhook_sending)
        taken = api.send_text(owner, "taken by the webhook")
        await api.wait_for(lambda: len(api.webhook_sending) > posted_before, what="the update posted to the webhook")
        update_id = api.webhook_sending[-1]
        # A webhook that answers on receipt does so at once; give it the time to (not a measurement).
        await asyncio.sleep(1.0)
        answered_before_kill = [status for status, update in api.webhook_posts if update["update_id"] == update_id]
        assert answered_before_kill == [], "the webhook answered before the update was handled"
        await bot.kill()
        release.set()
        holder.join()
        await bot.restart()
        shown = await api.wait_for(lambda: [m for m in draft_messages(api, OWNER_ID)
                                            if m["reply_to_message"]["message_id"] == taken["message_id"]],
                                   timeout=60, what="the draft of the update posted again after the restart")
        await _draft(api, owner, "after the restart")
        shown = [m for m in draft_messages(api, OWNER_ID) if m["reply_to_message"]["message_id"] == taken["message_id"]]
        with Session(engine) as session:
            stored = [m for m in session.exec(select(Message)).all() if m.text == taken["text"]]
        assert (len(shown), len(stored)) == (1, 1)
        posts = [status for status, update in api.webhook_posts if update["update_id"] == update_id]
        assert posts == [200]  # answered once, after the restart handled it
        check_consistency(engine, config.db_url)
    finally:
        release.set()
        await bot.stop()
    attempts = api.webhook_sending.count(update_id)
    record("webhook, kill -9 while an update was being handled: answered 200 before the kill / "
           "posts until handled / drafts shown after the restart", f"no / {attempts} / {len(shown)}")


async def test_a_draft_sent_but_not_noted_as_shown_is_not_shown_again_after_a_kill_9(
        config: Config, engine: Engine, bot_api: FakeBotApi, tmp_path: Path) -> None:
    """The draft reaches the chat but the bot never gets Telegram's answer (killed meanwhile), so it
    cannot note it as shown. After the restart the chat holds the draft once, the owner gets a line
    saying it may be above, and its buttons work."""
    api, owner = bot_api, bot_api.user(OWNER_ID, "Olga")
    bot = BotProcess(config, api, tmp_path / "bot.log", draft_delay=0.0)
    await bot.start()
    try:
        hold = api.hold_next("sendMessage")  # the draft's send: carried out, its answer held back
        incoming = api.send_text(owner, "are you coming tonight?")
        drafts_of = lambda: [m for m in draft_messages(api, OWNER_ID)  # noqa: E731
                             if m["reply_to_message"]["message_id"] == incoming["message_id"]]
        shown = (await api.wait_for(drafts_of, timeout=60, what="the draft in the chat"))[0]
        await bot.kill()
        hold.set()
        with Session(engine) as session:
            row = session.exec(select(Draft)).one()
        assert (row.shown_message_id, row.delivery) == (None, "sending")
        await bot.restart()
        await _draft(api, owner, "after the restart")  # what the restart queued came before this
        copies = [m for m in api.bot_messages(OWNER_ID) if m.get("text") == shown["text"]]
        assert len(copies) == 1 and len(drafts_of()) == 1
        notice = maybe_shown_notices(api, OWNER_ID)
        assert len(notice) == 1
        assert notice[0]["reply_to_message"]["message_id"] == incoming["message_id"]
        press = api.press(shown, feedback_data_of(shown, "a"))
        await api.wait_for(lambda: press in api.answers, what="the old draft's button answered")
        assert SAVED in api.answers[press]["text"]
        with Session(engine) as session:
            assert session.get(Draft, row.id).delivery == "uncertain"
        check_consistency(engine, config.db_url)
    finally:
        await bot.stop()
    record("kill -9 after a draft reached the chat, before it was noted as shown: copies in the chat "
           "after the restart / notices", f"{len(copies)} / {len(notice)}")
