"""End to end: drafts and verdicts through HTTP, the real Application against the fake Bot API.

Every test runs python-telegram-bot unchanged against bench/fakebotapi.py, on a real SQLite
file, with the FakeDrafter; what the owner would see is read back from the fake server.
"""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from storage import repo
from storage.db import session_scope
from storage.models import AdapterState, Conversation, FeedbackKind, Owner
from tests.bot.test_bot_harness import OWNER_ID, STRANGER_ID, running_harness


@pytest.fixture
async def harness(config, engine):
    async with running_harness(config, engine) as running:
        yield running


async def test_accept_stores_the_verdict_then_shows_it_instead_of_the_buttons(harness):
    await harness.start()
    shown = await harness.draft_for("are you coming tonight?")
    assert shown["text"] == harness.fake_draft("are you coming tonight?")
    buttons = [b["text"] for row in shown["reply_markup"]["inline_keyboard"] for b in row]
    assert buttons == ["✅ Accept", "✏️ Edit", "🗑 Reject", "🔄 Another", "📋 Copy"]
    assert shown["reply_markup"]["inline_keyboard"][2][0]["copy_text"] == {"text": shown["text"]}
    actions = [c for c in harness.api.calls if c.method in ("sendChatAction", "sendMessage")]
    assert actions[0].method == "sendChatAction" and actions[0].params["action"] == "typing"

    answer = await harness.press(shown, "Accept")
    assert "accepted" in answer["text"]
    [feedback] = harness.feedback()
    assert feedback.kind == FeedbackKind.accept
    await harness.verdict_shown(shown, "✅ Accepted")
    # The accepted draft joins the conversation as the owner's turn.
    assert [m.role for m in harness.messages()] == ["other", "owner"]


async def test_edit_by_replying_to_the_draft(harness):
    await harness.start()
    shown = await harness.draft_for("lunch tomorrow?")
    harness.api.send_text(harness.owner, "sure, 1pm works", reply_to=shown)
    ack = await harness.bot_says("Saved your version")
    [feedback] = harness.feedback()
    assert (feedback.kind, feedback.text) == (FeedbackKind.edit, "sure, 1pm works")
    await harness.verdict_shown(shown, "✏️ Edited: your version is saved")
    assert ack["message_id"] > shown["message_id"]
    assert len(harness.drafts()) == 1  # the reply was not taken as a new message to answer


async def test_edit_after_pressing_edit_prefills_the_draft(harness):
    await harness.start()
    shown = await harness.draft_for("what time is it?")
    answer = await harness.press(shown, "Edit")
    assert "your version" in answer["text"]
    prompt = await harness.bot_says("Send me your version")
    assert shown["text"] in prompt["text"]  # shown as code: tap to copy
    keyboard = prompt["reply_markup"]["inline_keyboard"]
    assert keyboard[0][0]["switch_inline_query_current_chat"] == shown["text"]
    assert keyboard[1][0]["copy_text"] == {"text": shown["text"]}
    assert harness.feedback() == []  # pressing edit alone decides nothing

    # The pre-filled input starts with "@botname "; the bot drops it.
    harness.api.send_text(harness.owner, f"@{harness.api.bot_username} almost 5, why")
    await harness.bot_says("Saved your version")
    [feedback] = harness.feedback()
    assert (feedback.kind, feedback.text) == (FeedbackKind.edit, "almost 5, why")
    assert len(harness.drafts()) == 1


async def test_reject_without_text(harness):
    await harness.start()
    shown = await harness.draft_for("you free?")
    answer = await harness.press(shown, "Reject")
    assert "rejected" in answer["text"]
    prompt = await harness.bot_says("If you like, reply to this message with what you would have written")
    [feedback] = harness.feedback()
    assert (feedback.kind, feedback.text, feedback.reason) == (FeedbackKind.reject, None, None)
    harness.api.send_command(harness.owner, "/cancel")
    await harness.bot_says("the reject stays", after=prompt["message_id"])
    # After /cancel the next text is a new message to answer again, not a reject detail.
    await harness.draft_for("hello?")
    assert harness.feedback()[0].text is None and len(harness.drafts()) == 2


async def test_reject_with_the_text_the_owner_would_have_sent_or_a_reason(harness):
    await harness.start()
    first = await harness.draft_for("dinner at 8?")
    await harness.press(first, "Reject")
    prompt = await harness.bot_says("If you like")
    harness.api.send_text(harness.owner, "make it 9 and you're on", reply_to=prompt)
    await harness.bot_says("Saved, with your version")
    second = await harness.draft_for("did you call mum?")
    await harness.press(second, "Reject")
    # A reply to the rejected draft itself works as well as one to the question.
    harness.api.send_text(harness.owner, "because I never talk like that", reply_to=second)
    await harness.bot_says("Saved, with your reason")
    first_fb, second_fb = sorted(harness.feedback(), key=lambda f: f.draft_id)
    assert (first_fb.kind, first_fb.text, first_fb.reason) == (FeedbackKind.reject, "make it 9 and you're on", None)
    assert (second_fb.text, second_fb.reason) == (None, "because I never talk like that")
    await harness.verdict_shown(first, "🗑 Rejected: your version is saved")
    assert "make it 9 and you're on" in [m.text for m in harness.messages() if m.role == "owner"]


async def test_another_draft_with_another_seed(harness):
    await harness.start()
    shown = await harness.draft_for("movie tonight?")
    answer = await harness.press(shown, "Another")
    assert answer["text"] == "Writing another draft…"
    again = await harness.api.wait_for(
        lambda: next((m for m in harness.api.bot_messages(OWNER_ID)
                      if m.get("reply_to_message", {}).get("message_id") == shown["message_id"]), None))
    seed = harness.config.generation.seed
    assert again["text"] == harness.fake_draft("movie tonight?", seed + 1)
    old, new = sorted(harness.drafts(), key=lambda d: d.id)
    assert new.regenerated_from == old.id
    [feedback] = harness.feedback()
    assert (feedback.kind, feedback.draft_id) == (FeedbackKind.regenerate, old.id)
    await harness.verdict_shown(shown, "🔄 You asked for another draft")
    await harness.press(again, "Accept")
    assert {f.kind for f in harness.feedback()} == {FeedbackKind.regenerate, FeedbackKind.accept}


async def test_a_second_press_changes_nothing_and_is_answered_politely(harness):
    await harness.start()
    shown = await harness.draft_for("ok?")
    draft_id = harness.api.button_data(shown, "Accept").split(":")[1]
    await harness.press(shown, "Accept")
    # As a client that missed the edit would still show the buttons, and press them.
    for action in "aren":
        answer = await harness.answered(harness.api.press(shown, f"fb:{draft_id}:{action}"))
        assert answer["text"] == "That draft is already accepted. Nothing was changed."
    [feedback] = harness.feedback()
    assert feedback.kind == FeedbackKind.accept and len(harness.drafts()) == 1
    assert not any("went wrong" in (m.get("text") or "") for m in harness.api.bot_messages(OWNER_ID))


async def test_buttons_of_drafts_written_before_a_restart_still_work(harness):
    await harness.start()
    by_button = await harness.draft_for("first")
    by_reply = await harness.draft_for("second")
    await harness.restart()
    await harness.press(by_button, "Accept")
    harness.api.send_text(harness.owner, "my own words", reply_to=by_reply)
    await harness.bot_says("Saved your version")
    kinds = {f.draft_id: (f.kind, f.text) for f in harness.feedback()}
    first, second = sorted(harness.drafts(), key=lambda d: d.id)
    assert kinds == {first.id: (FeedbackKind.accept, None), second.id: (FeedbackKind.edit, "my own words")}


async def test_tampered_or_foreign_buttons_change_nothing(harness):
    harness.config.owners = [OWNER_ID, 1002]
    await harness.start()
    shown = await harness.draft_for("mine")
    other = harness.api.user(1002, "Pat")
    theirs = await harness.reply_to(harness.api.send_text(other, "theirs"), with_buttons=True)
    their_draft_id = int(harness.api.button_data(theirs, "Accept").split(":")[1])
    for data, expected in [("fb:abc:a", "isn't one of mine"), ("fb:1:x", "isn't one of mine"),
                           (f"fb:{their_draft_id}:a", "I don't know that draft"),
                           ("fb:999999:r", "I don't know that draft"), ("fb:0:a", "isn't one of mine"),
                           ("something else", "isn't one of mine")]:
        answer = await harness.answered(harness.api.press(shown, data))
        assert expected in answer["text"], data
    assert harness.feedback() == []


async def test_strangers_get_one_refusal_and_nothing_is_stored(harness):
    await harness.start()
    stranger = harness.api.user(STRANGER_ID, "Eve")
    harness.api.send_text(stranger, "hi twin")
    await harness.bot_says("only answers its owner", chat_id=STRANGER_ID)
    harness.api.send_text(stranger, "hello??")
    query = harness.api.press(harness.api.send_text(stranger, "x"), "fb:1:a", user=stranger)
    assert "only answers its owner" in (await harness.answered(query))["text"]
    # The owner's draft proves the stranger's updates were all handled before it.
    await harness.draft_for("and me?")
    assert len(harness.api.bot_messages(STRANGER_ID)) == 1
    assert len(harness.drafter.calls) == 1
    with Session(harness.engine) as session:
        assert [o.telegram_id for o in session.exec(select(Owner)).all()] == [OWNER_ID]
    assert [m.text for m in harness.messages()] == ["and me?"]


async def test_group_chats_are_ignored_unless_allowed(harness):
    await harness.start()
    group = harness.api.group(-100123, "Family")
    harness.api.send_text(harness.owner, "in the group", chat=group)
    await harness.draft_for("in private")
    assert harness.api.bot_messages(-100123) == []
    assert [m.text for m in harness.messages()] == ["in private"]


async def test_forwarded_message_is_answered_as_from_its_sender_with_that_chat_as_context(harness):
    await harness.start()
    alice = {"id": 2002, "is_bot": False, "first_name": "Alice", "last_name": "Nguyen"}
    first = await harness.draft_for("are we still on for saturday?", forward_from=alice)
    await harness.press(first, "Accept")
    await harness.draft_for("great, 10am at the cafe", forward_from=alice)
    await harness.draft_for("unrelated typed text")
    conversation, context_seen = harness.drafter.calls[1][0], harness.drafter.calls[2][0]
    assert [(t.role, t.text) for t in conversation.context] == [
        ("other", "are we still on for saturday?"), ("owner", harness.fake_draft("are we still on for saturday?"))]
    assert context_seen.context == ()  # typed texts are another conversation
    senders = [m.sender for m in harness.messages() if m.role == "other"]
    assert senders == ["Alice Nguyen", "Alice Nguyen", None]
    with Session(harness.engine) as session:
        keys = sorted(c.chat_key for c in session.exec(select(Conversation)).all())
    assert keys == [f"tg:{OWNER_ID}", "tg:user:2002"]


async def test_a_long_draft_is_split_with_the_buttons_on_the_last_part(harness):
    harness.drafter.replies.append("word " * 1500)  # 7500 characters
    await harness.start()
    incoming = harness.api.send_text(harness.owner, "tell me everything")
    last = await harness.reply_to(incoming, with_buttons=True)
    parts = harness.api.bot_messages(OWNER_ID)
    assert len(parts) == 2 and parts[-1] == last
    assert all(len(p["text"]) <= 4096 for p in parts)
    assert [b["text"] for row in last["reply_markup"]["inline_keyboard"] for b in row][-1] == "🔄 Another"  # no copy
    await harness.press(last, "Accept")
    now = await harness.verdict_shown(last, "✅ Accepted")
    assert len(now["text"]) <= 4096


async def test_a_promoted_adapter_is_used_from_the_next_draft_without_restart(harness, tmp_path):
    await harness.start()
    await harness.draft_for("before")
    with session_scope(harness.engine) as session:  # what a cycle in another process does
        owner = repo.find_owner(session=session, telegram_id=OWNER_ID)
        repo.add_adapter(session=session, owner_id=owner.id, version=1, path=str(tmp_path / "v1"), parent_version=0,
                         cycle_id=None, checksum="", data_counts={}, metrics={}, state=AdapterState.active)
    await harness.draft_for("after")
    adapters = [call[1] for call in harness.drafter.calls]
    assert adapters[0] is None and adapters[1].version == 1
    assert [d.adapter_version for d in sorted(harness.drafts(), key=lambda d: d.id)] == [0, 1]


async def test_stickers_and_other_media_get_a_hint_and_nothing_is_stored(harness):
    await harness.start()
    harness.api.send_sticker(harness.owner)
    await harness.bot_says("I can only draft replies to text")
    assert harness.messages() == [] and harness.drafter.calls == []


def sent_markup(harness, message: dict) -> dict:
    """The reply_markup the bot sent with `message` (a ForceReply is not part of the Message)."""
    [call] = [c for c in harness.api.calls_to("sendMessage")
              if c.ok and c.result["message_id"] == message["message_id"]]
    return call.params.get("reply_markup") or {}


async def test_after_reject_only_a_reply_is_the_owners_version_anything_else_gets_its_draft(harness):
    await harness.start()
    shown = await harness.draft_for("dinner at 8?")
    await harness.press(shown, "Reject")
    prompt = await harness.bot_says("reply to this message")
    assert sent_markup(harness, prompt)["force_reply"] is True  # the input field opens as a reply to it
    # A new text and a forwarded one are messages to answer, not the rejected draft's replacement.
    unrelated = await harness.draft_for("also, are you free on sunday?")
    assert unrelated["text"] == harness.fake_draft("also, are you free on sunday?")
    forwarded = await harness.draft_for("can you call me back?", forward_from=harness.api.user(77, "Ann"))
    assert forwarded["text"] == harness.fake_draft("can you call me back?")
    assert [(f.kind, f.text, f.reason) for f in harness.feedback()] == [(FeedbackKind.reject, None, None)]
    assert len(harness.drafts()) == 3
    # The question stays open: a reply to it later is still the version.
    harness.api.send_text(harness.owner, "make it 9 and you're on", reply_to=prompt)
    await harness.bot_says("Saved, with your version", after=forwarded["message_id"])
    [feedback] = harness.feedback()
    assert (feedback.kind, feedback.text, feedback.draft_id) == (FeedbackKind.reject, "make it 9 and you're on",
                                                                 harness.drafts()[0].id)
    assert len(harness.drafts()) == 3


async def test_after_edit_only_a_reply_or_the_prefilled_text_is_the_owners_version(harness):
    await harness.start()
    shown = await harness.draft_for("what time is it?")
    await harness.press(shown, "Edit")
    prompt = await harness.bot_says("Send me your version")
    assert "reply to this message" in prompt["text"]
    unrelated = await harness.draft_for("and where are you?")
    assert unrelated["text"] == harness.fake_draft("and where are you?")
    assert harness.feedback() == []
    harness.api.send_text(harness.owner, "almost 5, why", reply_to=prompt)
    await harness.bot_says("Saved your version", after=unrelated["message_id"])
    [feedback] = harness.feedback()
    assert (feedback.kind, feedback.text, feedback.draft_id) == (FeedbackKind.edit, "almost 5, why", harness.drafts()[0].id)
    await harness.verdict_shown(shown, "✏️ Edited: your version is saved")
    assert len(harness.drafts()) == 2


async def test_a_draft_too_long_for_the_prefill_button_asks_for_the_edit_with_a_force_reply(harness):
    harness.drafter.replies = ["a long draft " * 30]
    await harness.start()
    shown = await harness.draft_for("tell me everything")
    await harness.press(shown, "Edit")
    prompt = await harness.bot_says("Send me your version")
    assert "reply_markup" not in prompt and sent_markup(harness, prompt)["force_reply"] is True
    harness.api.send_text(harness.owner, "short", reply_to=prompt)
    await harness.bot_says("Saved your version", after=prompt["message_id"])
    assert [(f.kind, f.text) for f in harness.feedback()] == [(FeedbackKind.edit, "short")]


async def test_the_question_for_a_version_survives_a_restart(harness):
    await harness.start()
    rejected = await harness.draft_for("dinner at 8?")
    await harness.press(rejected, "Reject")
    reject_prompt = await harness.bot_says("reply to this message")
    edited = await harness.draft_for("lunch?")
    await harness.press(edited, "Edit")
    edit_prompt = await harness.bot_says("Send me your version", after=edited["message_id"])
    await harness.restart()
    harness.api.send_text(harness.owner, "make it 9", reply_to=reject_prompt)
    saved = await harness.bot_says("Saved, with your version", after=edit_prompt["message_id"])
    # The ✍️ button's text (after the bot's @name) still completes the edit asked for before the restart.
    harness.api.send_text(harness.owner, f"@{harness.api.bot_username} sure, 1pm")
    await harness.bot_says("Saved your version", after=saved["message_id"])
    by_draft = {f.draft_id: (f.kind, f.text) for f in harness.feedback()}
    first, second = sorted(d.id for d in harness.drafts())
    assert by_draft == {first: (FeedbackKind.reject, "make it 9"), second: (FeedbackKind.edit, "sure, 1pm")}
    assert len(harness.drafts()) == 2
    harness.api.send_command(harness.owner, "/cancel")
    await harness.bot_says("Nothing to cancel")
