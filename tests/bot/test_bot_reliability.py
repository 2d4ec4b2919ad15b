"""End to end: what users rely on when things get busy or break: order and bounds of the draft
queue, buttons answered during drafting, nothing lost on shutdown, flood control, network errors,
"message is not modified", and errors told to the owner."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

import pytest
from sqlmodel import Session

from loop.drafting import FakeDrafter
from loop.twin import Twin
from storage.models import FeedbackKind, Message
from bench.fakebotapi import NOT_MODIFIED
from tests.reliability.bot import until
from tests.bot.test_bot_harness import OWNER_ID, GatedDrafter, running_harness


@pytest.fixture
async def harness(config, engine):
    async with running_harness(config, engine) as running:
        yield running


async def test_a_burst_of_messages_is_answered_in_order_per_chat(harness):
    harness.config.owners = [OWNER_ID, 1002]
    harness.config.telegram.draft_queue_size = 200
    await harness.start()
    users = [harness.owner, harness.api.user(1002, "Pat")]
    for index in range(100):
        harness.api.send_text(users[index % 2], f"message {index}")

    def drafted() -> bool:
        return sum(len(harness.api.bot_messages(u["id"])) for u in users) >= 100

    await harness.api.wait_for(drafted, timeout=120, what="100 drafts")
    for offset, user in enumerate(users):
        texts = [m["text"] for m in harness.api.bot_messages(user["id"])]
        assert texts == [harness.fake_draft(f"message {i}") for i in range(offset, 100, 2)]
    assert len(harness.drafts()) == 100


async def test_beyond_the_queue_bound_the_owner_is_told_to_try_again(harness):
    harness.config.telegram.draft_queue_size = 1
    drafter = GatedDrafter()
    await harness.start(drafter)
    harness.api.send_text(harness.owner, "one")
    assert await asyncio.to_thread(drafter.started.wait, 30)
    harness.api.send_text(harness.owner, "two")  # waits in the queue
    three = harness.api.send_text(harness.owner, "three")  # beyond the bound
    busy = await harness.bot_says("I'm busy")
    assert "send it again" in busy["text"]
    assert busy["reply_to_message"]["message_id"] == three["message_id"]  # which one to send again
    drafter.gate.set()
    await harness.api.wait_for(lambda: len(harness.drafts()) == 2)
    assert [m.text for m in harness.messages()] == ["one", "two"]


async def test_buttons_are_answered_while_a_draft_is_being_written(harness):
    drafter = GatedDrafter()
    drafter.gate.set()
    await harness.start(drafter)
    shown = await harness.draft_for("first")
    drafter.gate.clear()
    drafter.started.clear()
    harness.api.send_text(harness.owner, "second")
    assert await asyncio.to_thread(drafter.started.wait, 30)
    answer = await harness.press(shown, "Accept")  # answered while the worker is blocked
    assert "accepted" in answer["text"] and len(harness.drafts()) == 1
    drafter.gate.set()
    await harness.api.wait_for(lambda: len(harness.drafts()) == 2)


async def test_flood_control_is_waited_out(harness):
    await harness.start()
    harness.api.fail_next("sendMessage", error_code=429, retry_after=1)
    shown = await harness.draft_for("are you there?")
    assert shown["text"] == harness.fake_draft("are you there?")
    sends = harness.api.calls_to("sendMessage")
    assert [(c.ok, c.error_code) for c in sends] == [(False, 429), (True, None)]


async def test_message_is_not_modified_is_ignored(harness):
    await harness.start()
    shown = await harness.draft_for("hey")
    harness.api.fail_next("editMessageText", error_code=400, description=NOT_MODIFIED)
    answer = await harness.press(shown, "Accept")
    assert "accepted" in answer["text"]
    await harness.draft_for("still fine?")  # the bot carries on; no error reached the owner
    assert [f.kind for f in harness.feedback()] == [FeedbackKind.accept]
    assert not any("went wrong" in (m.get("text") or "") for m in harness.api.bot_messages(OWNER_ID))


async def test_errors_are_logged_and_told_to_the_owner_in_a_sentence(harness, caplog):
    class Broken:
        calls: list = []

        def draft(self, conversation, *, adapter, seed, on_text=None):
            raise RuntimeError("the model fell over")

    await harness.start(Broken())
    harness.api.send_text(harness.owner, "hello")
    said = await harness.bot_says("something went wrong")
    assert "RuntimeError" in said["text"]
    assert any(r.exc_info and "the model fell over" in str(r.exc_info[1]) for r in caplog.records)


async def test_the_error_log_names_the_update_and_the_chat_but_never_the_text(harness, caplog):
    class Broken:
        def draft(self, conversation, *, adapter, seed, on_text=None):
            raise RuntimeError("the model fell over")

    caplog.set_level(logging.INFO)
    secret = "the door code is 4711, don't tell anyone"
    await harness.start(Broken())
    incoming = harness.api.send_text(harness.owner, secret)
    await harness.bot_says("something went wrong")
    [update_id] = [u["update_id"] for call in harness.api.calls_to("getUpdates") for u in call.result or []
                   if u.get("message", {}).get("message_id") == incoming["message_id"]]
    errors = [r for r in caplog.records if r.name == "bot.app" and r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [f"error while handling update {update_id} in chat {OWNER_ID}: RuntimeError"]
    assert "Traceback" in caplog.text and "the model fell over" in caplog.text
    assert secret not in caplog.text  # logs are out of /forget's reach


async def test_a_model_with_nothing_to_say_is_reported_plainly(harness):
    from loop.drafting import DraftingError

    class Empty:
        def draft(self, conversation, *, adapter, seed, on_text=None):
            raise DraftingError("the model gave an empty reply 3 times")

    await harness.start(Empty())
    harness.api.send_text(harness.owner, "hello")
    said = await harness.bot_says("I couldn't write a draft")
    assert "empty reply" in said["text"]


async def test_network_errors_are_retried(harness):
    await harness.start()
    harness.api.fail_next("sendMessage", error_code=502, description="Bad Gateway")
    shown = await harness.draft_for("still there?")
    assert shown["text"] == harness.fake_draft("still there?")
    assert [(c.ok, c.error_code) for c in harness.api.calls_to("sendMessage")] == [(False, 502), (True, None)]


async def test_queued_drafts_are_finished_on_shutdown_and_nothing_is_lost(harness):
    drafter = GatedDrafter()
    await harness.start(drafter)
    harness.api.send_text(harness.owner, "one")
    harness.api.send_text(harness.owner, "two")
    assert await asyncio.to_thread(drafter.started.wait, 30)
    app = harness.app
    stopping = asyncio.ensure_future(harness.stop())  # e.g. SIGTERM while drafts are queued
    while app.running or app.updater.running:  # let the stop get past fetching and handling updates
        await asyncio.sleep(0.01)
    drafter.gate.set()
    await stopping
    await harness.start(drafter)  # updates fetched but not handled before the stop come again
    await harness.api.wait_for(lambda: len(harness.api.bot_messages(OWNER_ID)) >= 2)
    assert [m["text"] for m in harness.api.bot_messages(OWNER_ID)] == [
        harness.fake_draft("one"), harness.fake_draft("two")]
    assert sorted(m.text for m in harness.messages()) == ["one", "two"]


async def test_an_update_delivered_again_is_not_drafted_twice(harness):
    await harness.start()
    shown = await harness.draft_for("only once, please")
    harness.api.deliver_again(shown["reply_to_message"])
    await harness.draft_for("next")  # updates are handled in order: the repeated one came before
    assert [d.incoming for d in harness.drafts()] == ["only once, please", "next"]
    assert [m.text for m in harness.messages() if m.role == "other"] == ["only once, please", "next"]
    assert len(harness.api.bot_messages(OWNER_ID)) == 2


async def test_what_a_crash_left_undone_is_done_at_the_next_start(harness):
    twin = Twin(harness.config, harness.engine, FakeDrafter())
    where = {"telegram_id": OWNER_ID, "chat_key": f"tg:{OWNER_ID}", "chat_id": OWNER_ID}
    # As a killed run leaves them: a message stored, not drafted; a draft written, not shown; and a
    # message too old to answer now.
    old = twin.record_incoming(incoming="old news", telegram_message_id=900, **where)
    with Session(harness.engine) as session:
        session.get(Message, old.message_id).created_at = datetime.now(timezone.utc) - timedelta(days=2)
        session.commit()
    twin.record_incoming(incoming="are you coming?", telegram_message_id=901, **where)
    twin.draft_reply(incoming="at 8?", telegram_message_id=902, **where)
    harness.owner  # the chat exists on the server
    await harness.start()
    await harness.draft_for("and now?")  # recovered work is queued before anything new
    assert [m["text"] for m in harness.api.bot_messages(OWNER_ID)] == [
        harness.fake_draft("are you coming?"), harness.fake_draft("at 8?"), harness.fake_draft("and now?")]
    assert sorted(d.incoming for d in harness.drafts()) == ["and now?", "are you coming?", "at 8?"]
    await until(lambda: all(d.shown_message_id for d in harness.drafts()), what="every draft noted as shown")


async def test_another_pressed_twice_while_writing_drafts_once(harness):
    drafter = GatedDrafter()
    drafter.gate.set()
    await harness.start(drafter)
    shown = await harness.draft_for("which one?")
    drafter.gate.clear()
    assert (await harness.press(shown, "Another"))["text"] == "Writing another draft…"
    assert (await harness.press(shown, "Another"))["text"] == "I'm already writing another one."
    drafter.gate.set()
    await harness.api.wait_for(lambda: len(harness.drafts()) == 2)
    await harness.verdict_shown(shown, "🔄 You asked for another draft")
    assert [f.kind for f in harness.feedback()] == [FeedbackKind.regenerate]


async def test_group_chats_are_served_when_allowed(harness):
    harness.config.telegram.allow_groups = True
    await harness.start()
    group = harness.api.group(-100123, "Family")
    incoming = harness.api.send_text(harness.owner, "in the group", chat=group)
    shown = await harness.reply_to(incoming, with_buttons=True)
    assert shown["text"] == harness.fake_draft("in the group")
    stranger = harness.api.user(4242, "Eve")
    harness.api.send_text(stranger, "me too", chat=group)
    await harness.draft_for("and in private")
    assert len(harness.api.bot_messages(-100123)) == 1  # the stranger in the group got nothing


async def test_a_press_whose_answer_cannot_be_delivered_still_shows_the_stored_verdict(harness):
    await harness.start()
    shown = await harness.draft_for("are you in?")
    harness.api.fail_next("answerCallbackQuery", error_code=502, description="Bad Gateway", times=10)
    harness.api.press(shown, harness.api.button_data(shown, "Accept"))
    await harness.verdict_shown(shown, "✅ Accepted")
    assert [f.kind for f in harness.feedback()] == [FeedbackKind.accept]
    assert not any("went wrong" in (m.get("text") or "") for m in harness.api.bot_messages(OWNER_ID))
