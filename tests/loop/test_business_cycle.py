"""The nightly cycle's data path for Telegram Business chats: verdicts given there (by a button or by
the owner's own reply) and hand-written replies become SFT, DPO and KTO rows as button verdicts in the
private chat do, with the contact's name in a prompt identical to the one drafting used.

It runs what the cycle runs (loop.collect.collect, the JSON hop to the training child, the dataset
builders of training.datasets with the tiny model's tokenizer), on the test's database.
"""

from __future__ import annotations

from loop.business import Business
from loop.collect import collect
from training.examples import feedback_from_json, feedback_to_json, writing_from_json, writing_to_json
from loop.drafting import FakeDrafter
from loop.twin import Twin
from storage import repo
from storage.db import session_scope
from storage.models import FeedbackKind
from tests.tiny import tiny_model_settings
from training.datasets import build_dpo_rows, build_kto_rows, build_sft_rows, make_renderer
from training.prompt import CONTACT_LINE

OWNER = 1001


def test_business_verdicts_and_hand_written_replies_become_training_rows(config, engine, tiny_model_dir):
    from training.model import load_tokenizer

    config.model = tiny_model_settings(tiny_model_dir)
    drafter = FakeDrafter(replies=["yes, at 8", "see you then", "a draft never used"])
    twin = Twin(config, engine, drafter)
    business = Business(twin)
    connection = business.connect(connection_id="bc-1", telegram_id=OWNER, user_chat_id=OWNER, enabled=True,
                                  rights={"can_reply": True}).connection
    assert connection is not None

    def contact_writes(message_id: int, text: str) -> int:
        return business.contact_message(connection, chat_id=5005, contact="Anna", telegram_message_id=message_id,
                                        text=text).chat.id

    # 1. The owner types their own reply while a draft is pending: an implicit edit.
    chat = contact_writes(1, "dinner tonight?")
    first = business.draft_for_chat(telegram_id=OWNER, business_chat_id=chat)
    assert first is not None
    business.owner_message(connection, chat_id=5005, contact="Anna", telegram_message_id=2,
                           text="yes!! 8 at mine", by_bot=False)
    # 2. ✅ Send: the accept, noted and posted as the bot does it.
    contact_writes(3, "should I bring wine?")
    second = business.draft_for_chat(telegram_id=OWNER, business_chat_id=chat)
    assert second is not None
    twin.record_verdict(telegram_id=OWNER, draft_id=second.draft_id, kind=FeedbackKind.accept)
    plan = business.after_verdict(telegram_id=OWNER, draft_id=second.draft_id)
    assert plan is not None and plan.text == "see you then"
    business.sent(telegram_id=OWNER, draft_id=second.draft_id, sent_message_id=4)
    # 3. A hand-written reply with no draft pending: a writing sample.
    contact_writes(5, "red or white?")
    business.owner_message(connection, chat_id=5005, contact="Anna", telegram_message_id=6, text="red pls",
                           by_bot=False)

    with session_scope(engine) as session:
        owner_id = repo.find_owner(session=session, telegram_id=OWNER).id
        collected = collect(session=session, owner_id=owner_id, after_id=0, upto_id=10**9, trained_upto_id=0,
                            since=None)
    # Through the JSON the training child reads, as the cycle hands them over.
    feedback = [feedback_from_json(feedback_to_json(item)) for item in collected.feedback]
    writing = [writing_from_json(writing_to_json(item)) for item in collected.writing]
    assert [(f.kind, f.text) for f in feedback] == [("edit", "yes!! 8 at mine"), ("accept", None)]
    assert [(w.kind, w.text) for w in writing] == [("reply", "red pls")]

    tokenizer = load_tokenizer(tiny_model_dir)
    render = make_renderer(tokenizer, config.model)
    sft = build_sft_rows(feedback, writing, render=render, replay_fraction=1.0, seed=1, tokenizer=tokenizer,
                         chunk_tokens=64)
    dpo = build_dpo_rows(feedback, render=render)
    kto = build_kto_rows(feedback, writing, render=render)
    assert [row["completion"].split("<")[0] for row in sft] == ["yes!! 8 at mine", "see you then", "red pls"]
    assert len(dpo) == 1 and dpo[0]["chosen"].startswith("yes!! 8 at mine")
    assert dpo[0]["rejected"].startswith("yes, at 8")
    assert sorted((row["completion"].split("<")[0], row["label"]) for row in kto) == [
        ("red pls", True), ("see you then", True), ("yes!! 8 at mine", True), ("yes, at 8", False)]

    # Drafting and training saw the same prompt, and it names the contact.
    line = CONTACT_LINE.format(contact="Anna")
    drafted = [render(call[0]) for call in drafter.calls]
    assert dpo[0]["prompt"] == drafted[0] and sft[1]["prompt"] == drafted[1]
    assert all(line in row["prompt"] for row in sft + dpo + kto)
    # The writing sample's prompt is the one a draft for that message would have had.
    assert "red or white?" in sft[2]["prompt"] and "see you then" in sft[2]["prompt"]
