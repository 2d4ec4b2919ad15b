"""The retrieval lever through the twin: drafts carry the owner's past replies, chosen from the database
by the rules the cycle's training rows are built with, and rendered into the same prompt.

Real SQLite, real BM25 (bm25s), the fake drafter recording what it was asked, the SmolLM2 tokenizer.
"""

from __future__ import annotations

import json

import pytest

from loop.business import Business
from loop.collect import collect, conversation_thread
from training.examples import feedback_from_json, feedback_to_json
from loop.cycle import _prepare
from loop.drafting import FakeDrafter
from loop.examples import OwnWords
from loop.twin import Twin
from storage import repo
from storage.db import session_scope
from storage.models import SampleKind, WritingSampleCreate
from tests.loop.test_cycle_support import OWNER, import_writing
from training.datasets import make_renderer
from training.retrieval import Budget, Split, attach_examples

PARTY_REPLY = "yeah im coming lol, bringing snacks 0"  # tests.loop.test_cycle_support's first reply


@pytest.fixture(scope="module")
def tokenizer():
    from training.model import load_tokenizer
    from training.tiny import smollm2_tokenizer_dir

    return load_tokenizer(smollm2_tokenizer_dir())


def owner_db_id(engine) -> int:
    with session_scope(engine) as session:
        return repo.get_or_create_owner(session=session, telegram_id=OWNER).id


def collected(engine):
    with session_scope(engine) as session:
        return collect(session=session, owner_id=owner_db_id(engine), after_id=0, upto_id=10**9, trained_upto_id=0,
                       since=None)


def test_a_draft_and_its_training_row_get_the_same_examples_in_the_same_prompt(config, engine, tokenizer):
    config.generation.retrieved_examples, config.generation.contact_examples = 2, 2
    import_writing(engine, 12)
    drafter = FakeDrafter(replies=["sounds fun, see u there"])
    twin = Twin(config, engine, drafter)
    draft = twin.draft_reply(telegram_id=OWNER, chat_key="tg:party", incoming="party tonight at mine?")
    asked = drafter.calls[0][0]
    assert asked.examples == (PARTY_REPLY,)  # the reply to the one past message about a party tonight
    twin.record_verdict(telegram_id=OWNER, draft_id=draft.id, kind="accept")

    got = collected(engine)
    split = attach_examples(Split(got.feedback, got.writing, [], []), Budget.of(config.generation))
    row = feedback_from_json(json.loads(json.dumps(feedback_to_json(split.train_feedback[0]))))  # the child's hop
    assert row.conversation == asked
    render = make_renderer(tokenizer, config.model)
    assert render(row.conversation) == render(asked) and "- " + PARTY_REPLY in render(asked)


def test_the_index_is_rebuilt_when_the_owners_words_change(config, engine):
    import_writing(engine, 3)
    owner, words = owner_db_id(engine), OwnWords(engine)
    first = words.index(owner)
    assert words.index(owner) is first and len(first) == 3
    with session_scope(engine) as session:
        repo.add_writing_samples(session=session, owner_id=owner, samples=[WritingSampleCreate(
            kind=SampleKind.reply, text="new words", prompt="anything new?", source="test")])
    assert len(words.index(owner)) == 4


def test_with_the_lever_off_drafts_have_no_examples_and_nothing_is_indexed(config, engine):
    import_writing(engine, 12)
    drafter = FakeDrafter()
    twin = Twin(config, engine, drafter)
    twin.draft_reply(telegram_id=OWNER, chat_key="tg:party", incoming="party tonight at mine?")
    assert drafter.calls[0][0].examples == () and twin.own_words._indexes == {}


def test_a_business_chat_drafts_with_the_owners_earlier_replies_to_that_contact(config, engine):
    config.generation.contact_examples = 2
    config.model.context_turns = 1  # the newest turn is context; what came before it is an example
    drafter = FakeDrafter(replies=["a draft"])
    business = Business(Twin(config, engine, drafter))
    connection = business.connect(connection_id="bc-1", telegram_id=OWNER, user_chat_id=OWNER, enabled=True,
                                  rights={"can_reply": True}).connection
    assert connection is not None
    chat = None
    for number, (theirs, mine) in enumerate((("dinner tonight?", "yes!! 8 at mine"), ("red or white?", "red pls"))):
        chat = business.contact_message(connection, chat_id=5005, contact="Anna", telegram_message_id=10 * number,
                                        text=theirs).chat.id
        business.owner_message(connection, chat_id=5005, contact="Anna", telegram_message_id=10 * number + 1,
                               text=mine, by_bot=False)
    business.contact_message(connection, chat_id=5005, contact="Anna", telegram_message_id=30, text="see you")
    assert business.draft_for_chat(telegram_id=OWNER, business_chat_id=chat) is not None
    asked = drafter.calls[0][0]
    assert [t.text for t in asked.context] == ["red pls"]
    assert asked.examples == ("yes!! 8 at mine",)  # "red pls" is in the context already
    # The cycle files those replies under the conversation drafting named.
    with session_scope(engine) as session:
        conversation_id = repo.find_business_chat(session=session, owner_id=owner_db_id(engine),
                                                  chat_id=5005).conversation_id
    assert {w.thread for w in collected(engine).writing} == {conversation_thread(conversation_id)}


def test_the_cycle_hands_the_child_examples_that_hold_nothing_held_out(config, engine, tmp_path):
    config.generation.retrieved_examples, config.generation.contact_examples = 3, 2
    import_writing(engine, 24)
    got = collected(engine)
    job, counts, _ = _prepare(config, engine, owner_id=owner_db_id(engine), telegram_id=OWNER, cycle_id=1,
                              folder=tmp_path, collected=got, active_path=None, init_path=None, after_id=0,
                              progress=False)
    examples = json.loads((tmp_path / "examples.json").read_text())
    held = {item["text"] for item in examples["heldout_writing"]}
    assert held and counts["heldout_writing"] == len(held)
    assert counts["retrieved_examples"]["prompts"] == 24 and counts["retrieved_examples"]["with_examples"] == 23
    for item in examples["train_writing"] + examples["heldout_writing"]:
        shown = item["conversation"].get("examples", [])
        assert not held & set(shown) and item["text"] not in shown
    # The oldest reply has nothing before it in its conversation, nor a past message like its own.
    assert all(item["conversation"].get("examples") for item in examples["train_writing"][1:])
    assert all(item["conversation"].get("examples") for item in examples["heldout_writing"])
    config.generation.retrieved_examples = config.generation.contact_examples = 0
    _, counts, _ = _prepare(config, engine, owner_id=owner_db_id(engine), telegram_id=OWNER, cycle_id=2,
                            folder=tmp_path, collected=got, active_path=None, init_path=None, after_id=0,
                            progress=False)
    assert "retrieved_examples" not in counts
    off = json.loads((tmp_path / "examples.json").read_text())
    assert not any("examples" in item["conversation"] for item in off["train_writing"] + off["heldout_writing"])
