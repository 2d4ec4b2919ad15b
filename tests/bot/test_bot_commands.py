"""End to end: the bot's commands, /import of a file, reports from other threads, and the runners
(`run_bot` with long polling and with a webhook), against the fake Bot API."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from bot.app import build_application, make_notifier, run_application, run_bot
from bot.state import state_of
from bot.texts import COMMANDS
from loop.cycle import CycleAlreadyRunning
from loop.twin import Twin
from storage import repo
from storage.db import session_scope
from storage.models import AdapterState, Owner, WritingSample
from tests.bot.test_bot_harness import OWNER_ID, running_harness


FIXTURES = Path(__file__).parents[1] / "fixtures"
TELEGRAM_EXPORT = FIXTURES / "telegram_single" / "result.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
async def harness(config, engine):
    async with running_harness(config, engine) as running:
        yield running


def png(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure = plt.figure(figsize=(1, 1))
    figure.savefig(path)
    plt.close(figure)
    return path


def photos_to(harness, chat_id: int = OWNER_ID) -> list[bytes]:
    return [harness.api.files[m["photo"][0]["file_id"]].content for m in harness.api.bot_messages(chat_id) if "photo" in m]


async def test_commands_are_registered_at_start_and_start_and_help_explain(harness):
    await harness.start()
    assert [c["command"] for c in harness.api.commands] == [name for name, _ in COMMANDS]
    harness.api.send_command(harness.owner, "/start")
    await harness.bot_says("learns to write the way you do")
    harness.api.send_command(harness.owner, "/help")
    help_text = (await harness.bot_says("Commands:"))["text"]
    assert "📋 Copy" in help_text and "✍️" in help_text and "/forget" in help_text
    assert [o.name for o in harness.rows(Owner)] == ["Olga"]


async def test_import_of_a_telegram_export_says_what_was_added(harness):
    await harness.start()
    harness.api.send_command(harness.owner, "/import")
    await harness.bot_says("Telegram export (result.json)")
    content = TELEGRAM_EXPORT.read_bytes()
    harness.api.send_document(harness.owner, "result.json", content, mime_type="application/json")
    first = await harness.bot_says("Imported result.json")
    samples = harness.rows(WritingSample)
    assert samples and f"{len(samples)} added" in first["text"]
    harness.api.send_document(harness.owner, "result.json", content, mime_type="application/json")
    second = await harness.bot_says("already there", after=first["message_id"])
    assert "0 added" in second["text"] and len(harness.rows(WritingSample)) == len(samples)
    assert list((harness.config.data_dir / "uploads").iterdir()) == []  # uploads are not kept


async def test_import_refuses_big_files_and_reports_broken_ones(harness):
    harness.config.telegram.max_upload_mb = 1
    await harness.start()
    harness.api.send_document(harness.owner, "big.txt", b"x" * (1024 * 1024 + 1), mime_type="text/plain")
    first = await harness.bot_says("over 1 MB")
    assert not harness.api.calls_to("getFile")
    harness.api.send_document(harness.owner, "big.txt", b"x" * (1024 * 1024 + 1), mime_type="text/plain")
    harness.api.pending_updates()[-1]["message"]["document"].pop("file_size")  # optional in the Bot API
    await harness.bot_says("over 1 MB", after=first["message_id"])
    harness.api.send_document(harness.owner, "result.json", b"{not json", mime_type="application/json")
    broken = await harness.bot_says("I could not import result.json")
    assert "Nothing of it was stored" in broken["text"]
    assert harness.rows(WritingSample) == []


async def test_stats_sends_the_numbers_and_a_chart(harness):
    await harness.start()
    harness.api.send_command(harness.owner, "/stats")
    await harness.bot_says("No drafts yet")
    shown = await harness.draft_for("hi")
    harness.api.press(shown, harness.api.button_data(shown, "Accept"))
    await harness.verdict_shown(shown, "✅ Accepted")
    harness.api.send_command(harness.owner, "/stats")
    said = await harness.bot_says("v0: 1 drafts, 100% accepted")
    assert "edit distance 0.00" in said["text"]
    [chart] = await harness.api.wait_for(lambda: photos_to(harness))
    assert chart.startswith(PNG_MAGIC)


async def test_style_shows_the_profile(harness):
    await harness.start()
    harness.api.send_command(harness.owner, "/style")
    await harness.bot_says("Nothing of yours is stored yet")
    shown = await harness.draft_for("so what do you think?")
    harness.api.send_text(harness.owner, "honestly? i think its great lol", reply_to=shown)
    await harness.bot_says("Saved your version")
    harness.api.send_command(harness.owner, "/style")
    profile = await harness.api.wait_for(
        lambda: [m for m in harness.api.bot_messages(OWNER_ID) if "sentiment" in (m.get("text") or "")])
    assert profile


async def test_train_starts_a_cycle_in_the_background_and_sends_the_report(harness, tmp_path):
    gate, calls = threading.Event(), []
    chart = png(tmp_path / "history.png")

    def runner(config, engine, *, telegram_id, force, trigger):
        calls.append((telegram_id, force, trigger))
        assert gate.wait(30)
        return SimpleNamespace(report_text="Cycle 1: promoted v1 (likelihood 3.1 → 2.9)", chart_path=chart)

    harness.cycle_runner = runner
    await harness.start()
    harness.api.send_command(harness.owner, "/train")
    await harness.bot_says("Training started")
    harness.api.send_command(harness.owner, "/train")
    await harness.bot_says("already running")
    await harness.draft_for("drafts still come while training")
    gate.set()
    await harness.bot_says("Cycle 1: promoted v1")
    [photo] = await harness.api.wait_for(lambda: photos_to(harness))
    assert photo.startswith(PNG_MAGIC)
    assert calls == [(OWNER_ID, True, "telegram")]


async def test_train_says_so_when_a_cycle_runs_in_another_process(harness):
    def runner(config, engine, **kwargs):
        raise CycleAlreadyRunning("held by host:123 since 03:00")

    harness.cycle_runner = runner
    await harness.start()
    harness.api.send_command(harness.owner, "/train")
    said = await harness.bot_says("already running")
    assert "host:123" in said["text"]
    assert not harness.state.training.is_set()


async def test_status_rollback_cancel_and_unknown_commands(harness, tmp_path):
    await harness.start()
    harness.api.send_command(harness.owner, "/status")
    status = await harness.bot_says("Active version: v0")
    assert "Last cycle: none yet" in status["text"] and "Next run: 20" in status["text"]
    harness.api.send_command(harness.owner, "/rollback")
    await harness.bot_says("Rollback refused")
    harness.api.send_command(harness.owner, "/rollback soon")
    await harness.bot_says("Use /rollback")
    with session_scope(harness.engine) as session:
        owner = repo.find_owner(session=session, telegram_id=OWNER_ID)
        repo.add_adapter(session=session, owner_id=owner.id, version=1, path=str(tmp_path / "v1"), parent_version=0,
                         cycle_id=None, checksum="", data_counts={}, metrics={}, state=AdapterState.active)
    harness.api.send_command(harness.owner, "/rollback 0")
    await harness.bot_says("Now using v0 (the base model)")
    with session_scope(harness.engine) as session:
        assert repo.active_version(session=session, owner_id=owner.id) == 0
    harness.api.send_command(harness.owner, "/cancel")
    await harness.bot_says("Nothing to cancel")
    harness.api.send_command(harness.owner, "/frobnicate")
    await harness.bot_says("I don't know that command")


async def test_forget_deletes_everything_after_confirmation_only(harness):
    await harness.start()
    await harness.draft_for("remember me?")
    harness.api.send_command(harness.owner, "/forget")
    ask = await harness.bot_says("Delete everything?")
    harness.api.press(ask, "forget:no")
    await harness.api.wait_for(lambda: harness.api.message(OWNER_ID, ask["message_id"])["text"] == "Nothing was deleted.")
    assert len(harness.drafts()) == 1

    harness.api.send_command(harness.owner, "/forget")
    old = await harness.bot_says("Delete everything?", after=ask["message_id"])
    harness.api.message(OWNER_ID, old["message_id"])["date"] -= 3600  # an hour-old confirmation
    harness.api.press(old, "forget:yes")
    await harness.api.wait_for(lambda: "expired" in harness.api.message(OWNER_ID, old["message_id"])["text"])
    assert len(harness.drafts()) == 1

    harness.api.send_command(harness.owner, "/forget")
    ask = await harness.bot_says("Delete everything?", after=old["message_id"])
    harness.api.press(ask, "forget:yes")
    await harness.api.wait_for(lambda: "everything is deleted" in harness.api.message(OWNER_ID, ask["message_id"])["text"])
    assert harness.rows(Owner) == [] and harness.drafts() == [] and harness.messages() == []


async def test_the_notifier_sends_a_report_from_another_thread(harness, tmp_path):
    harness.owner  # the owner has a chat with the bot (Telegram refuses to write first)
    await harness.start()
    notify = make_notifier(harness.app)
    await asyncio.to_thread(notify, OWNER_ID, "Nightly cycle: kept v0", png(tmp_path / "chart.png"))
    assert (await harness.bot_says("Nightly cycle: kept v0"))
    assert photos_to(harness)[0].startswith(PNG_MAGIC)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _run_in_thread(harness, target) -> tuple[threading.Thread, list]:
    """Start a blocking runner in a thread; returns it and a list that receives its application."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as error:  # surfaced by the test
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


async def test_run_bot_with_long_polling(harness, monkeypatch):
    built = []
    original = build_application

    def spy(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr("bot.app.build_application", spy)
    twin = Twin(harness.config, harness.engine, harness.drafter)
    thread, errors = await _run_in_thread(
        harness, lambda: run_bot(harness.config, twin, token=harness.api.token, run_scheduler=False, stop_signals=None))
    await harness.api.wait_for(lambda: harness.api.commands, what="the bot to start")
    reply = await harness.draft_for("via run_bot")
    assert reply["text"].endswith("via run_bot")
    app = built[0]
    state_of(app).loop.call_soon_threadsafe(app.stop_running)
    await asyncio.to_thread(thread.join, 30)
    assert not thread.is_alive() and errors == []


async def test_webhook_mode(harness):
    port = free_port()
    harness.config.telegram.mode = "webhook"
    harness.config.telegram.webhook_url = f"http://127.0.0.1:{port}/tg/hook"
    harness.config.telegram.webhook_port = port
    app = build_application(harness.config, Twin(harness.config, harness.engine, harness.drafter),
                            token=harness.api.token)
    thread, errors = await _run_in_thread(harness, lambda: run_application(app, harness.config, stop_signals=None))
    await harness.api.wait_for(lambda: harness.api.webhook_url, what="setWebhook")
    assert harness.api.webhook_url == f"http://127.0.0.1:{port}/tg/hook" and harness.api.webhook_secret
    reply = await harness.draft_for("via webhook")
    assert reply["text"].endswith("via webhook")
    assert all(status == 200 for status, _ in harness.api.webhook_posts)
    state_of(app).loop.call_soon_threadsafe(app.stop_running)
    await asyncio.to_thread(thread.join, 30)
    assert not thread.is_alive() and errors == []
