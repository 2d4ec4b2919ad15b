"""End to end: the twin inside the owner's real chats through a Telegram Business connection.

The real Application against the fake Bot API (bench/fakebotapi/business.py), on the test's
database (SQLite, and PostgreSQL when TWIN_TEST_DATABASE_URL is set), with the FakeDrafter.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from storage.models import (
    BusinessChat,
    BusinessConnection,
    BusinessDraft,
    BusinessMessage,
    FeedbackKind,
    Owner,
    WritingSample,
)
from tests.bot.test_bot_harness import OWNER_ID, STRANGER_ID, running_harness

CONTACT_ID = 5005


@pytest.fixture
async def harness(config, engine):
    config.telegram.business_quiet_s = 0.2
    async with running_harness(config, engine) as running:
        yield running


async def connect(harness: Any, **kwargs: Any) -> dict[str, Any]:
    await harness.start()
    connection = harness.api.business_connect(harness.owner, **kwargs)
    await harness.bot_says("Connected to your Telegram Business account" if connection["is_enabled"]
                           else "connection is off")
    return connection


def anna(harness: Any) -> dict[str, Any]:
    return harness.api.contact(CONTACT_ID, "Anna")


async def business_draft(harness: Any, after: int = 0) -> dict[str, Any]:
    """The next business draft shown in the owner's chat (a message with a Send button)."""
    def find() -> dict[str, Any] | None:
        for message in harness.api.bot_messages(OWNER_ID):
            buttons = [b["text"] for row in message.get("reply_markup", {}).get("inline_keyboard", []) for b in row]
            if message["message_id"] > after and "✅ Send" in buttons:
                return message
        return None

    return await harness.api.wait_for(find, what="a business draft in the owner's chat")


def posted(harness: Any, connection_id: str = "bc-1") -> list[dict[str, Any]]:
    """What the owner (through the bot) said in the real chat with Anna."""
    return [m for m in harness.api.business_chat(connection_id, CONTACT_ID) if m["from"]["id"] == OWNER_ID]


async def test_connect_then_a_contact_writes_and_send_posts_the_draft_as_the_owner(harness):
    connection = await connect(harness)
    assert [c.connection_id for c in harness.rows(BusinessConnection)] == [connection["id"]]
    harness.api.business_message("bc-1", anna(harness), "are you coming tonight?")
    shown = await business_draft(harness)
    assert "Anna" in shown["text"] and "are you coming tonight?" in shown["text"]
    buttons = [b["text"] for row in shown["reply_markup"]["inline_keyboard"] for b in row]
    assert buttons == ["✅ Send", "✏️ Edit", "🗑 Reject", "🔄 Another", "🔇 Mute this chat"]
    assert posted(harness) == []  # nothing reaches the contact without the owner's tap
    [draft] = harness.drafts()
    # The contact's name is in the prompt: the drafter saw it.
    assert harness.drafter.calls[0][0].contact == "Anna"

    await harness.press(shown, "Send")
    await harness.verdict_shown(shown, "✅ Sent to Anna as you")
    [sent] = posted(harness)
    assert sent["text"] == draft.text and sent["sender_business_bot"]["id"] == harness.api.bot_id
    assert sent["business_connection_id"] == "bc-1"
    [feedback] = harness.feedback()
    assert feedback.kind == FeedbackKind.accept
    [row] = harness.rows(BusinessDraft)
    assert (row.send_state, row.sent_message_id) == ("sent", sent["message_id"])
    # The post's echo (a business_message with sender_business_bot) is recognised, not stored again.
    await harness.api.wait_for(lambda: not harness.api.pending_updates(), what="the echo to be handled")
    assert [m.role for m in harness.messages()] == ["other", "owner"]


async def test_edit_sends_the_owners_version_and_stores_an_edit(harness):
    await connect(harness)
    harness.api.business_message("bc-1", anna(harness), "lunch tomorrow?")
    shown = await business_draft(harness)
    await harness.press(shown, "Edit")
    prompt = await harness.bot_says("Send me your version")
    harness.api.send_text(harness.owner, "sure, 1pm at the usual place", reply_to=prompt)
    await harness.api.wait_for(lambda: posted(harness), what="the edit posted in the real chat")
    assert posted(harness)[0]["text"] == "sure, 1pm at the usual place"
    [feedback] = harness.feedback()
    assert (feedback.kind, feedback.text) == (FeedbackKind.edit, "sure, 1pm at the usual place")
    await harness.verdict_shown(shown, "✅ Sent to Anna as you")


async def test_a_hand_written_reply_while_a_draft_is_pending_is_an_implicit_edit(harness):
    await connect(harness)
    harness.api.business_message("bc-1", anna(harness), "did you call mum?")
    shown = await business_draft(harness)
    harness.api.business_message("bc-1", anna(harness), "not yet, tonight", from_user=harness.owner)
    await harness.verdict_shown(shown, "✏️ You wrote Anna your own reply: saved as your version")
    [feedback] = harness.feedback()
    assert (feedback.kind, feedback.text) == (FeedbackKind.edit, "not yet, tonight")
    assert harness.rows(WritingSample) == []  # the verdict is the lesson; not a sample as well


async def test_a_hand_written_reply_with_the_same_text_is_an_accept(harness):
    await connect(harness)
    harness.api.business_message("bc-1", anna(harness), "ok?")
    shown = await business_draft(harness)
    [draft] = harness.drafts()
    harness.api.business_message("bc-1", anna(harness), draft.text, from_user=harness.owner)
    await harness.verdict_shown(shown, "✅ You sent it to Anna yourself")
    assert [f.kind for f in harness.feedback()] == [FeedbackKind.accept]


async def test_a_hand_written_reply_with_no_draft_pending_is_a_writing_sample(harness):
    await connect(harness)
    await harness.stop()
    harness.config.telegram.business_quiet_s = 30  # the owner answers before any draft is written
    await harness.start()
    harness.api.business_message("bc-1", anna(harness), "hey")
    harness.api.business_message("bc-1", anna(harness), "free on sunday?", from_user=None)
    reply = harness.api.business_message("bc-1", anna(harness), "yes! brunch?", from_user=harness.owner)
    [sample] = await harness.api.wait_for(lambda: harness.rows(WritingSample), what="the writing sample")
    assert (sample.text, sample.prompt, sample.sender) == ("yes! brunch?", "free on sunday?", "Anna")
    assert [t["text"] for t in sample.context] == ["hey"]
    assert harness.feedback() == [] and harness.drafts() == []
    # Edited and deleted business messages follow.
    harness.api.business_edit(reply, "yes!! brunch at 11?")
    await harness.api.wait_for(lambda: harness.rows(WritingSample)[0].text == "yes!! brunch at 11?",
                               what="the edit to reach the sample")
    harness.api.business_delete("bc-1", anna(harness), [reply["message_id"]])
    await harness.api.wait_for(lambda: not harness.rows(WritingSample), what="the deleted sample to go")
    assert "yes!! brunch at 11?" not in [m.text for m in harness.messages()]


async def test_three_quick_messages_give_one_draft_and_a_newer_one_outdates_it(harness):
    await connect(harness)
    await harness.stop()
    harness.config.telegram.business_quiet_s = 1.0
    await harness.start()
    for text in ("hi", "are you around", "need a hand with the move"):
        harness.api.business_message("bc-1", anna(harness), text)
    shown = await business_draft(harness)
    assert len(harness.drafter.calls) == 1
    assert all(text in shown["text"] for text in ("hi", "are you around", "need a hand with the move"))
    conversation = harness.drafter.calls[0][0]
    assert conversation.incoming == "need a hand with the move"
    assert [t.text for t in conversation.context] == ["hi", "are you around"]

    harness.api.business_message("bc-1", anna(harness), "saturday?")
    newer = await business_draft(harness, after=shown["message_id"])
    await harness.verdict_shown(shown, "⌛ Outdated: Anna wrote again")
    answer = await harness.answered(harness.api.press(shown, "bz:%d:s" % harness.drafts()[0].id))
    assert "outdated" in answer["text"] and posted(harness) == []
    assert "saturday?" in newer["text"]


async def test_mute_and_pause_stop_drafting_and_unmute_resume_bring_it_back(harness):
    await connect(harness)
    harness.api.business_message("bc-1", anna(harness), "hello")
    shown = await business_draft(harness)
    answer = await harness.press(shown, "Mute")
    assert "Muted" in answer["text"]
    await harness.api.wait_for(lambda: "reply_markup" not in harness.api.message(OWNER_ID, shown["message_id"]))
    harness.api.business_message("bc-1", anna(harness), "hello??")
    harness.api.send_command(harness.owner, "/chats")
    listing = await harness.bot_says("muted (/unmute")
    assert "Anna" in listing["text"]
    assert len(harness.drafter.calls) == 1
    harness.api.send_command(harness.owner, "/unmute")
    await harness.bot_says("Drafting again for Anna")
    harness.api.send_command(harness.owner, "/pause")
    await harness.bot_says("Paused")
    harness.api.business_message("bc-1", anna(harness), "still there?")
    harness.api.send_command(harness.owner, "/resume")
    await harness.bot_says("Drafting again for your connected chats")
    assert len(harness.drafter.calls) == 1  # neither the muted nor the paused message was drafted
    harness.api.business_message("bc-1", anna(harness), "ok now?")
    await business_draft(harness, after=shown["message_id"])
    # A chat muted at connection time stays muted after a reconnect.
    mute_again = await business_draft(harness, after=shown["message_id"])
    await harness.press(mute_again, "Mute")
    harness.api.business_connect(harness.owner, connection_id="bc-2")
    await harness.bot_says("stay muted", after=mute_again["message_id"])
    assert [c.muted for c in harness.rows(BusinessChat)] == [True]


async def test_disconnecting_stops_the_drafts_and_keeps_the_history(harness):
    await connect(harness)
    harness.api.business_message("bc-1", anna(harness), "hi there")
    await business_draft(harness)
    harness.api.business_connect(harness.owner, enabled=False)
    await harness.bot_says("connection is off")
    harness.api.business_message("bc-1", anna(harness), "hello?")
    harness.api.send_command(harness.owner, "/chats")
    await harness.bot_says("Business connection: off")
    assert len(harness.drafter.calls) == 1
    assert [m.text for m in harness.messages()] == ["hi there"]  # the history stays until /forget


async def test_a_strangers_connection_is_refused_and_nothing_of_it_is_stored(harness):
    await harness.start()
    stranger = harness.api.user(STRANGER_ID, "Mallory")
    harness.api.business_connect(stranger, connection_id="bc-x")
    await harness.bot_says("only answers its owner", chat_id=STRANGER_ID)
    harness.api.business_message("bc-x", anna(harness), "hi mallory")
    harness.api.business_message("bc-x", anna(harness), "hi anna", from_user=stranger)
    await harness.api.wait_for(lambda: not harness.api.pending_updates(), what="the updates to be handled")
    assert harness.rows(BusinessConnection) == [] and harness.rows(BusinessMessage) == []
    assert harness.messages() == [] and harness.drafter.calls == []
    assert [o.telegram_id for o in harness.rows(Owner)] == []


async def test_a_reply_outside_the_24_hour_window_is_refused_with_a_clear_message(harness):
    await connect(harness)
    harness.api.business_message("bc-1", anna(harness), "you there?", date=int(time.time()) - 25 * 3600)
    shown = await business_draft(harness)
    await harness.press(shown, "Send")
    notice = await harness.bot_says("only within 24 hours")
    assert "Your verdict is saved" in notice["text"]
    assert posted(harness) == []
    assert [f.kind for f in harness.feedback()] == [FeedbackKind.accept]  # the verdict is kept
    [row] = harness.rows(BusinessDraft)
    assert row.send_state == "refused" and "BUSINESS_PEER_USAGE_MISSING" in row.error.upper()


async def test_without_the_reply_right_send_is_refused_and_the_owner_told_why(harness):
    await connect(harness, can_reply=False)
    harness.api.business_message("bc-1", anna(harness), "ping")
    shown = await business_draft(harness)
    await harness.press(shown, "Send")
    await harness.bot_says("doesn't let me reply", after=shown["message_id"])
    assert posted(harness) == [] and [f.kind for f in harness.feedback()] == [FeedbackKind.accept]


async def test_forget_deletes_the_business_chats(harness):
    await connect(harness)
    harness.api.business_message("bc-1", anna(harness), "secret plans")
    await business_draft(harness)
    services = harness.state.services
    import asyncio

    assert await asyncio.to_thread(services.forget, telegram_id=OWNER_ID)
    for model in (BusinessConnection, BusinessChat, BusinessMessage, BusinessDraft):
        assert harness.rows(model) == []
    assert harness.messages() == []
