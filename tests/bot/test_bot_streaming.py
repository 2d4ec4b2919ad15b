"""End to end: drafts streamed while they are written (issue 20), the real Application against the
fake Bot API, with a FakeDrafter that hands its reply over word by word as a decoding model would."""

from __future__ import annotations

from typing import Any

import pytest

from loop.drafting import FakeDrafter
from tests.bot.test_bot_business import CONTACT_ID, anna, business_draft, connect
from tests.bot.test_bot_harness import OWNER_ID, running_harness

REPLY = "sure, I will be there at nine with the others"


@pytest.fixture
async def harness(config, engine):
    config.telegram.stream_interval_s = 0.05
    config.telegram.business_quiet_s = 0.2
    async with running_harness(config, engine) as running:
        yield running


def streaming_drafter(*replies: str) -> FakeDrafter:
    return FakeDrafter(replies=list(replies), word_delay_s=0.03, stream=True)


def draft_texts(harness: Any, chat_id: int = OWNER_ID) -> list[str]:
    return [text for (chat, _), texts in harness.api.message_drafts.items() if chat == chat_id for _, text in texts]


async def stored_drafts(harness: Any, n: int = 1) -> list[Any]:
    """The stored drafts once `n` of them are noted as shown (that is committed after the send returns)."""
    return await harness.api.wait_for(lambda: (lambda drafts: drafts if len(drafts) == n and all(
        d.shown_message_id for d in drafts) else None)(harness.drafts()), what=f"{n} drafts noted as shown")


def call_index(harness: Any, method: str, predicate: Any = lambda call: True) -> list[int]:
    return [i for i, call in enumerate(harness.api.calls) if call.method.lower() == method.lower() and call.ok
            and predicate(call)]


async def test_a_draft_streams_through_send_message_draft_then_comes_with_its_buttons(harness):
    await harness.start(streaming_drafter(REPLY))
    shown = await harness.draft_for("are you coming tonight?")
    streamed = draft_texts(harness)
    assert streamed, "no sendMessageDraft while the draft was written"
    assert all(REPLY.startswith(text) for text in streamed) and len(streamed) == len(set(streamed))
    assert len({draft_id for chat, draft_id in harness.api.message_drafts}) == 1  # one animated draft
    # The final message, with its buttons, comes after the last partial text.
    [final] = call_index(harness, "sendMessage", lambda call: call.params.get("reply_markup"))
    assert max(call_index(harness, "sendMessageDraft")) < final
    assert shown["text"] == REPLY and "inline_keyboard" in shown["reply_markup"]
    # What is stored is the final draft only, shown in this message.
    [draft] = await stored_drafts(harness)
    assert draft.text == shown["text"] and draft.shown_message_id == shown["message_id"]
    assert len(harness.api.bot_messages(OWNER_ID)) == 1  # a draft leaves no message behind


async def test_a_refused_send_message_draft_falls_back_to_one_message_edited_into_the_draft(harness):
    harness.api.refuse_message_drafts = True  # a Bot API server without the method
    await harness.start(streaming_drafter(REPLY, "and a second one after that"))
    shown = await harness.draft_for("are you coming tonight?")
    assert harness.api.message_drafts == {}
    # The preview was sent without buttons as a reply to the owner's message, then became the draft.
    [preview] = [c for c in harness.api.calls_to("sendMessage") if c.ok]
    assert not preview.params.get("reply_markup") and REPLY.startswith(preview.params["text"])
    assert preview.result["message_id"] == shown["message_id"] and shown["text"] == REPLY
    assert "inline_keyboard" in shown["reply_markup"]
    [draft] = await stored_drafts(harness)
    assert draft.text == REPLY and draft.shown_message_id == shown["message_id"]
    # Edits come at most once a second: a draft written in a fraction of one is the preview, then the final edit.
    assert len([c for c in harness.api.calls_to("editMessageText") if c.ok]) <= 2

    refused_calls = len(harness.api.calls_to("sendMessageDraft"))
    second = await harness.draft_for("and then?")
    assert len(harness.api.calls_to("sendMessageDraft")) == refused_calls  # not asked again this run
    assert second["text"] == "and a second one after that" and len(await stored_drafts(harness, 2)) == 2


async def test_streaming_failures_never_lose_the_draft(harness):
    harness.api.fail_next("sendMessageDraft", error_code=500, times=1000)  # every update fails
    await harness.start(streaming_drafter(REPLY))
    shown = await harness.draft_for("are you coming tonight?")
    assert shown["text"] == REPLY and harness.drafts()[0].text == REPLY
    assert harness.api.calls_to("sendMessageDraft") and harness.api.message_drafts == {}


async def test_stream_off_sends_the_final_message_only(harness):
    harness.config.telegram.stream = "off"
    await harness.start(streaming_drafter(REPLY))
    shown = await harness.draft_for("are you coming tonight?")
    assert shown["text"] == REPLY and harness.api.calls_to("sendMessageDraft") == []
    assert [c for c in harness.api.calls_to("sendMessage") if c.ok] and len(harness.api.bot_messages(OWNER_ID)) == 1


async def test_another_streams_the_new_draft_too(harness):
    await harness.start(streaming_drafter(REPLY, "no wait, make it ten"))
    shown = await harness.draft_for("are you coming tonight?")
    before = len(draft_texts(harness))
    await harness.press(shown, "Another")
    await stored_drafts(harness, 2)
    again = draft_texts(harness)[before:]
    assert again and all("no wait, make it ten".startswith(text) for text in again)
    assert harness.drafts()[1].text == "no wait, make it ten"


async def test_business_drafts_are_not_streamed(harness):
    harness.drafter = streaming_drafter(REPLY)
    await connect(harness)
    harness.api.business_message("bc-1", anna(harness), "are you coming tonight?")
    shown = await business_draft(harness)
    assert REPLY in shown["text"]
    assert harness.api.calls_to("sendMessageDraft") == [] and draft_texts(harness, CONTACT_ID) == []
    [draft] = harness.drafts()
    assert draft.text == REPLY
