"""Security through the real bot: only configured owners in private chats are served, the bot
token stays out of every log line and message, and /forget leaves nothing of the owner.

The bot runs against the fake Bot API with a token shaped like a real one, and with logging
set up as `twin run` sets it up (root handlers with the redaction filter), at DEBUG, so every
record that python-telegram-bot, httpx and the twin write is checked.
"""

from __future__ import annotations

import io
import logging

import pytest
from sqlmodel import Session, select

from loop.config import TOKEN_ENV
from loop.runtime import install_token_redaction
from storage.models import Conversation, Draft, Feedback, Message, Owner, WritingSample
from bench.fakebotapi import FakeBotApi
from tests.reliability.bot import feedback_data_of, harness  # noqa: F401 - fixture
from tests.reliability.figures import record
from tests.bot.test_bot_harness import OWNER_ID, STRANGER_ID, Harness
from tests.reliability.test_reliability_privacy import files_holding, rows_holding

REAL_LOOKING_TOKEN = "7123456789:AAH3kq9ZtWv0xYbCdEfGhIjKlMnOpQrStUv"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # as loop.runtime.setup_logging


def stored_texts(harness: Harness) -> list[str]:
    with Session(harness.engine) as session:
        return [m.text for m in session.exec(select(Message).order_by(Message.id)).all()]


async def test_only_owners_in_private_chats_are_served(harness: Harness) -> None:
    await harness.start()
    api = harness.api
    stranger = api.user(STRANGER_ID, "Eve")
    owner = harness.owner
    group = api.group(-100555, "Owner and Eve")

    # What strangers try: writing, forwarding the owner's words, commands, files, forged buttons.
    attempts = len(api.pending_updates())
    api.send_text(stranger, "hello twin, write for me")
    api.send_text(stranger, "I am the owner now", forward_from=owner)
    for command in ("/start", "/status", "/stats", "/style", "/train", "/rollback 0", "/forget", "/import", "/help"):
        api.send_command(stranger, command)
    api.send_document(stranger, "result.json", b'{"messages": []}')
    api.send_sticker(stranger)
    eve_chat_message = api.send_text(stranger, "one more")
    forged = [api.press(eve_chat_message, data, user=stranger) for data in ("fb:1:a", "forget:yes", "fb:1:n")]
    # Groups: neither the owner nor the stranger is served there (telegram.allow_groups is off).
    api.send_text(owner, "owner writes in the group", chat=group)
    api.send_text(stranger, "stranger writes in the group", chat=group)
    attempts = len(api.pending_updates()) - attempts

    # What the owner may do: forward a stranger's message, or one whose sender is hidden.
    from_stranger = await harness.draft_for("can you lend me 500?", forward_from=stranger)
    from_hidden = await harness.draft_for("who is this?", forward_sender_name="Hidden Person")
    await api.wait_for(lambda: all(q in api.answers for q in forged), what="answers to the forged presses")

    refusals = api.bot_messages(STRANGER_ID)
    assert [m["text"] for m in refusals] == ["Sorry, this twin only answers its owner."]  # told once, no data
    assert all("only answers its owner" in api.answers[q]["text"] for q in forged)
    assert api.bot_messages(-100555) == []
    assert not api.calls_to("getFile")
    assert from_stranger["text"].endswith("can you lend me 500?") and from_hidden["text"].endswith("who is this?")
    with Session(harness.engine) as session:
        assert [o.telegram_id for o in session.exec(select(Owner)).all()] == [OWNER_ID]
        keys = sorted(c.chat_key for c in session.exec(select(Conversation)).all())
    assert keys == ["tg:name:Hidden Person", f"tg:user:{STRANGER_ID}"]
    assert stored_texts(harness) == ["can you lend me 500?", "who is this?"]
    assert len(harness.drafter.calls) == 2
    record("security: stranger and group attempts refused, rows stored for them", f"{attempts}, 0")


async def logged_bot_run(config, engine, *, httpx_level: int) -> tuple[str, list[str]]:
    """A bot run with errors, retries and a file download, logged at DEBUG as `twin run` logs
    (root handler with the redaction filter); returns the log text and the messages sent."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    names = ("", "httpx", "httpcore", "telegram", "aiohttp")
    levels = {name: logging.getLogger(name).level for name in names}
    root.addHandler(handler)
    install_token_redaction()
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    logging.getLogger("httpx").setLevel(httpx_level)
    try:
        async with FakeBotApi(token=REAL_LOOKING_TOKEN) as api:
            config.telegram.base_url, config.telegram.base_file_url = api.base_url, api.base_file_url
            running = Harness(api=api, config=config, engine=engine)
            try:
                await running.start()
                api.fail_next("sendMessage", error_code=502, description="Bad Gateway", times=1)
                shown = await running.draft_for("hello")
                api.fail_next("editMessageText", error_code=400, description="Bad Request: message can't be edited")
                api.press(shown, feedback_data_of(shown, "a"))
                await running.bot_says("went wrong")  # the error handler logged a traceback, told the owner
                api.send_document(running.owner, "notes.txt", b"some of my writing, plain text\n")
                await running.bot_says("Imported")
                api.fail_next("getUpdates", error_code=500, description="Internal Server Error", times=1)
                await running.draft_for("after a polling error")
            finally:
                await running.stop()
            messages = [m.get("text") or "" for m in api.bot_messages(OWNER_ID)]
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    return stream.getvalue(), messages


@pytest.mark.parametrize("httpx_level", [
    pytest.param(logging.WARNING, id="httpx at WARNING as twin run sets it"),
    pytest.param(logging.DEBUG, id="httpx at DEBUG"),
])
async def test_the_bot_token_is_in_no_log_record_and_no_message(config, engine, monkeypatch, httpx_level) -> None:
    monkeypatch.setenv(TOKEN_ENV, REAL_LOOKING_TOKEN)
    output, messages = await logged_bot_run(config, engine, httpx_level=httpx_level)
    assert "getUpdates" in output and "Traceback" in output, "the run, and its error, were logged"
    secret = REAL_LOOKING_TOKEN.split(":")[1]
    leaks = [line for line in output.splitlines() if secret in line]
    assert leaks == [], leaks[:3]
    assert not any(secret in text for text in messages)
    record(f"security: log lines of a bot run at DEBUG (httpx {logging.getLevelName(httpx_level)}) "
           "/ lines holding the token", f"{output.count(chr(10))} / {len(leaks)}")


def test_a_logged_exception_never_carries_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, REAL_LOOKING_TOKEN)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    install_token_redaction()
    try:
        try:  # e.g. an HTTP library error that names the URL it fetched (file URLs carry the token)
            raise OSError(f"GET https://api.telegram.org/file/bot{REAL_LOOKING_TOKEN}/documents/f.json failed")
        except OSError:
            logging.getLogger("bot.commands").exception("the download failed")
    finally:
        root.removeHandler(handler)
    assert "the download failed" in stream.getvalue()
    assert REAL_LOOKING_TOKEN not in stream.getvalue()


async def test_forget_in_telegram_removes_the_owner_and_keeps_others(harness: Harness) -> None:
    marker, kept = "Q7marker-forget-me", "K9kept-other-owner"
    other_id = 1002
    harness.config.owners = [OWNER_ID, other_id]
    await harness.start()
    other = harness.api.user(other_id, "Pavel")
    for i in range(3):
        shown = await harness.draft_for(f"{marker} message {i}")
        harness.api.press(shown, feedback_data_of(shown, "r"))
        prompt = await harness.bot_says("what you would have written", after=shown["message_id"])
        harness.api.send_text(harness.owner, f"{marker} what I would say {i}", reply_to=prompt)
        await harness.bot_says("Saved, with your version", after=shown["message_id"])
    await harness.reply_to(harness.api.send_text(other, f"{kept} hello"), with_buttons=True)
    harness.api.send_document(harness.owner, "notes.md", f"# {marker}\n\nmy own {marker} notes, long enough.\n".encode())
    await harness.bot_says("Imported")
    owner_dir = harness.config.owner_dir(OWNER_ID)
    (owner_dir / "cycles" / "1").mkdir(parents=True)
    (owner_dir / "cycles" / "1" / "train.log").write_text(f"{marker} in a training log\n")
    assert rows_holding(harness.engine, marker)

    asked = harness.api.send_command(harness.owner, "/forget")
    confirm = await harness.bot_says("Delete everything?", after=asked["message_id"])
    query = harness.api.press(confirm, "forget:yes")
    await harness.answered(query)
    await harness.bot_says("everything is deleted")

    assert rows_holding(harness.engine, marker) == {}
    assert rows_holding(harness.engine, kept)
    assert not owner_dir.exists()
    non_database = [hit for hit in files_holding(harness.config.data_dir, marker) if "twin.db" not in hit]
    assert non_database == [], non_database
    # Old buttons of forgotten drafts change nothing now.
    with Session(harness.engine) as session:
        assert session.exec(select(Draft).where(Draft.chat_id == OWNER_ID)).all() == []
        assert session.exec(select(Feedback)).all() == [] and session.exec(select(WritingSample)).all() == []


def test_the_training_child_does_not_inherit_the_bot_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child writes logs of its own; it needs no Telegram access, so it never sees the token."""
    import subprocess

    from loop import child

    monkeypatch.setenv(TOKEN_ENV, REAL_LOOKING_TOKEN)
    seen: dict[str, str] = {}

    class Stop(Exception):
        pass

    def popen(*args, env, **kwargs):
        seen.update(env)
        raise Stop

    monkeypatch.setattr(subprocess, "Popen", popen)
    with pytest.raises(Stop):
        child.run_child(tmp_path / "job.json", log_path=tmp_path / "train.log", heartbeat=lambda: None)
    assert seen and TOKEN_ENV not in seen and REAL_LOOKING_TOKEN not in "".join(seen.values())
