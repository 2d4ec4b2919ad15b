"""Retrieval of the owner's own words (training.retrieval) and how the one prompt renderer shows them.

BM25 runs for real (bm25s); the prompts are rendered with the SmolLM2 tokenizer's chat template.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from training.config import ConfigError, GenerationSettings, ModelSettings
from training.datasets import FeedbackExample, WritingExample, make_renderer
from training.prompt import Conversation, Turn
from training.retrieval import Budget, PastReply, ReplyIndex, Split, attach_examples, clip, past_replies

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)

# The prompt of this conversation as the renderer wrote it before retrieval existed (rendered by the
# main branch's training/prompt.py): with the lever off nothing of it may change.
BEFORE_RETRIEVAL = (
    "<|im_start|>system\nYou are Ada's twin. Reply to the last message exactly as Ada would write it: same "
    "length, tone, spelling and punctuation habits.\nYou are writing to Anna.<|im_end|>\n<|im_start|>user\nhey"
    "<|im_end|>\n<|im_start|>assistant\nhi!<|im_end|>\n<|im_start|>user\nso?\nare you coming tonight?<|im_end|>\n"
    "<|im_start|>assistant\n")
CONVERSATION = Conversation.of("are you coming tonight?",
                               [Turn("other", "hey"), Turn("owner", "hi!"), Turn("other", "so?")], contact="Anna")


@pytest.fixture(scope="module")
def tokenizer():
    from training.model import load_tokenizer
    from training.tiny import smollm2_tokenizer_dir

    return load_tokenizer(smollm2_tokenizer_dir())


def reply(prompt: str, text: str, *, days: int | None, thread: str | None = "chat|Bob") -> WritingExample:
    return WritingExample(kind="reply", text=text, conversation=Conversation.of(prompt),
                          written_at=T0 + timedelta(days=days) if days is not None else None, thread=thread)


HISTORY = [
    reply("what time is dinner on sunday?", "7ish, bring dessert lol", days=1, thread="chat|Mum"),
    reply("did you see the match last night?", "ugh dont remind me", days=2, thread="chat|Bob"),
    reply("are you coming to the party tonight?", "yesss wouldnt miss it", days=3, thread="chat|Cat"),
    reply("can you send me the report", "sent! check ur inbox", days=4, thread="work|Dan"),
    reply("hey", "heyy", days=5, thread="chat|Bob"),
]


def test_bm25_finds_the_reply_to_the_most_similar_past_message() -> None:
    index = ReplyIndex(past_replies([], HISTORY))
    examples = index.choose(Conversation.of("party tonight at mine, coming?"), thread=None, at=T0 + timedelta(days=9),
                            similar=2, recent=0, max_chars=200)
    assert examples[0] == "yesss wouldnt miss it"
    assert len(examples) == 1  # nothing else shares a word with the message: no filler
    match = index.choose(Conversation.of("who won the match?"), thread=None, at=None, similar=1, recent=0,
                         max_chars=200)
    assert match == ("ugh dont remind me",)
    assert ReplyIndex([]).choose(CONVERSATION, thread=None, at=None, similar=3, recent=3, max_chars=50) == ()


def test_the_last_replies_in_the_same_thread_come_newest_first_and_only_from_before() -> None:
    index = ReplyIndex(past_replies([], HISTORY))
    at = T0 + timedelta(days=4)
    assert index.choose(Conversation.of("zzz"), thread="chat|Bob", at=at, similar=0, recent=5,
                        max_chars=200) == ("ugh dont remind me",)  # "heyy" (day 5) is Bob's future
    later = index.choose(Conversation.of("zzz"), thread="chat|Bob", at=T0 + timedelta(days=9), similar=0, recent=1,
                         max_chars=200)
    assert later == ("heyy",)


def test_examples_are_clipped_at_a_word_and_never_repeat_the_context() -> None:
    assert clip("a" * 10, 20) == "a" * 10
    assert clip("one two three four five six", 14) == "one two three…"
    assert len(clip("x" * 500, 40)) == 40
    index = ReplyIndex([PastReply("party?", "yes", "t", T0), PastReply("party!", "YES ", "t", T0),
                        PastReply("party tonight", "maybe", "t", T0)])
    conversation = Conversation.of("party?", [Turn("owner", "maybe")])
    # "YES" repeats "yes"; "maybe" is already in the context.
    assert index.choose(conversation, thread=None, at=None, similar=3, recent=0, max_chars=50) == ("yes",)


def test_a_training_row_never_retrieves_its_own_reply_nor_its_conversations_future() -> None:
    writing = [
        reply("party tonight?", "yesss", days=1, thread="chat|Cat"),
        reply("party tonight?", "yesss", days=6, thread="chat|Bob"),  # the same words to someone else
        reply("the party tonight, still on?", "course", days=2, thread="chat|Cat"),
        reply("party tonight, bring snacks?", "on it", days=3, thread="chat|Cat"),
        reply("any party tonight?", "idk", days=None, thread="chat|Cat"),
    ]
    feedback = [FeedbackExample(kind="edit", conversation=Conversation.of("party tonight?"), draft="no",
                                text="party!! yes", later_kept=None, created_at=T0 + timedelta(days=4),
                                thread="conversation:9"),
                FeedbackExample(kind="regenerate", conversation=Conversation.of("party tonight?"), draft="nah",
                                text=None, later_kept="party!! yes", created_at=T0 + timedelta(days=4),
                                thread="conversation:9")]
    split = attach_examples(Split(feedback, writing, [], []), Budget(similar=10, recent=10, max_chars=200))
    examples = {item.text: item.conversation.examples for item in split.train_writing}
    assert "yesss" not in examples["yesss"]  # not its own, nor the same words said to Bob
    # Cat's day-2 reply sees Cat's day-1 one, never her day-3 one or the undated one (either may be later).
    assert "yesss" in examples["course"] and not {"on it", "idk"} & set(examples["course"])
    assert {"yesss", "course"} <= set(examples["on it"]) and "idk" not in examples["on it"]
    assert not {"course", "on it"} & set(examples["idk"])  # undated: all of its conversation may be later
    for item in split.train_feedback:  # the regenerate's kept text is the edit's: neither sees it
        assert "party!! yes" not in item.conversation.examples and item.conversation.examples


def test_held_out_items_never_retrieve_held_out_texts() -> None:
    train = [reply("party tonight?", "yesss", days=1), reply("dinner sunday?", "7ish", days=2),
             reply("party sunday?", "cant, away", days=3)]
    heldout_writing = [reply("party tonight??", "cant, away", days=10), reply("dinner tonight?", "sure", days=11)]
    heldout_feedback = [FeedbackExample(kind="edit", conversation=Conversation.of("party this sunday?"), draft="ok",
                                        text="sure", later_kept=None, created_at=T0 + timedelta(days=12),
                                        thread="conversation:3")]
    split = attach_examples(Split([], train, heldout_feedback, heldout_writing), Budget(similar=5, recent=5))
    held_texts = {"cant, away", "sure"}
    for item in [*split.heldout_writing, *split.heldout_feedback]:
        assert item.conversation.examples and not held_texts & set(item.conversation.examples)
    # A training row retrieves from the training side only: no held-out text reaches the training data.
    for item in split.train_writing:
        assert "sure" not in item.conversation.examples


def test_the_lever_off_changes_nothing(tokenizer) -> None:
    render = make_renderer(tokenizer, ModelSettings(owner_name="Ada"))
    assert render(CONVERSATION) == BEFORE_RETRIEVAL
    split = Split([], HISTORY, [], [])
    assert attach_examples(split, Budget.of(GenerationSettings())) is split
    assert not Budget.of(GenerationSettings()).enabled


def test_examples_go_in_the_system_text_and_give_way_before_the_conversation(tokenizer) -> None:
    render = make_renderer(tokenizer, ModelSettings(owner_name="Ada", max_prompt_tokens=96))
    with_examples = Conversation.of(CONVERSATION.incoming, CONVERSATION.context, contact="Anna",
                                    examples=("yesss wouldnt miss it", "omw\nsoon"))
    prompt = render(with_examples)
    assert ("You are writing to Anna.\nEarlier replies of Ada:\n- yesss wouldnt miss it\n- omw\n  soon<|im_end|>"
            in prompt)
    assert prompt.split("<|im_end|>", 1)[1] == BEFORE_RETRIEVAL.split("<|im_end|>", 1)[1]
    # Too long for the budget: the examples go, least similar first, before any turn of the conversation.
    crowded = Conversation.of(CONVERSATION.incoming, CONVERSATION.context, contact="Anna",
                              examples=("short one", "word " * 60))
    squeezed = render(crowded)
    assert "- short one<|im_end|>" in squeezed and "word word" not in squeezed and "hi!" in squeezed


def test_retrieval_settings_are_checked() -> None:
    assert GenerationSettings().retrieved_examples == 0 and GenerationSettings().contact_examples == 0
    with pytest.raises(ConfigError, match="generation.retrieved_examples"):
        GenerationSettings(retrieved_examples=-1)
    with pytest.raises(ConfigError, match="generation.retrieved_max_chars"):
        GenerationSettings(retrieved_max_chars=5)
