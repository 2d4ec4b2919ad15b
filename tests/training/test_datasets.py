"""Dataset builders: every row of docs/architecture.md's "From feedback to training rows" table, splits, files."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from training.chunking import chunk_text
from training.datasets import (
    END_OF_TURN,
    MONOLOGUE_INSTRUCTION,
    FeedbackExample,
    WritingExample,
    balance_kto_rows,
    build_dpo_rows,
    build_kto_rows,
    build_sft_rows,
    make_renderer,
    read_datasets,
    split_holdout,
    split_writing_holdout,
    write_datasets,
)
from training.prompt import Conversation, Turn
from tests.tiny import tiny_model_settings

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def render(conversation: Conversation) -> str:
    """A stand-in renderer: the builders only need a Conversation -> str function."""
    return f"PROMPT[{conversation.incoming}]"


def fb(kind: str, incoming: str, draft: str, text: str | None = None, later: str | None = None,
       minutes: int = 0) -> FeedbackExample:
    return FeedbackExample(kind=kind, conversation=Conversation.of(incoming), draft=draft, text=text,
                           later_kept=later, created_at=T0 + timedelta(minutes=minutes))


def reply(text: str, incoming: str = "hi?", days: int | None = 0) -> WritingExample:
    return WritingExample(kind="reply", text=text, conversation=Conversation.of(incoming),
                          written_at=None if days is None else T0 + timedelta(days=days))


def monologue(text: str) -> WritingExample:
    return WritingExample(kind="monologue", text=text, conversation=None, written_at=T0)


def e(text: str) -> str:
    return text + END_OF_TURN


TABLE_FEEDBACK = [
    fb("accept", "m1", "draft one"),
    fb("edit", "m2", "draft two", text="owner two"),
    fb("reject", "m3", "draft three", text="replacement three"),
    fb("reject", "m4", "draft four"),
    fb("regenerate", "m5", "draft five", later="kept five"),
    fb("regenerate", "m6", "draft six"),
]


def test_sft_rows_from_feedback_follow_the_table() -> None:
    rows = build_sft_rows(TABLE_FEEDBACK, [], render=render, replay_fraction=0, seed=0, tokenizer=None,
                          chunk_tokens=64)
    assert rows == [
        {"prompt": "PROMPT[m1]", "completion": e("draft one")},  # accept: the draft
        {"prompt": "PROMPT[m2]", "completion": e("owner two")},  # edit: the owner's text
        {"prompt": "PROMPT[m3]", "completion": e("replacement three")},  # reject with replacement
    ]  # reject without replacement and regenerate: no SFT row


def test_dpo_rows_follow_the_table() -> None:
    rows = build_dpo_rows(TABLE_FEEDBACK + [fb("edit", "m7", "same", text=" same ")], render=render)
    assert rows == [
        {"prompt": "PROMPT[m2]", "chosen": e("owner two"), "rejected": e("draft two")},
        {"prompt": "PROMPT[m3]", "chosen": e("replacement three"), "rejected": e("draft three")},
        {"prompt": "PROMPT[m5]", "chosen": e("kept five"), "rejected": e("draft five")},
    ]  # accept, reject without text, regenerate with nothing kept, an edit that changed nothing: none


def test_kto_rows_follow_the_table() -> None:
    rows = build_kto_rows(TABLE_FEEDBACK, [reply("owner reply", "w1")], render=render)
    assert [(r["prompt"], r["completion"], r["label"]) for r in rows] == [
        ("PROMPT[w1]", e("owner reply"), True),  # imported reply
        ("PROMPT[m1]", e("draft one"), True),  # accept
        ("PROMPT[m2]", e("owner two"), True),  # edit: the owner's text is good ...
        ("PROMPT[m2]", e("draft two"), False),  # ... and the draft it replaced is not
        ("PROMPT[m3]", e("draft three"), False),  # reject with replacement: the draft only
        ("PROMPT[m4]", e("draft four"), False),  # reject without replacement
        ("PROMPT[m5]", e("draft five"), False),  # regenerate
        ("PROMPT[m6]", e("draft six"), False),
    ]


def test_kto_rows_without_pairs_leave_the_ranked_verdicts_to_dpo() -> None:
    rows = build_kto_rows(TABLE_FEEDBACK + [fb("edit", "m7", "same", text="same")], [], render=render, paired=False)
    assert [(r["prompt"], r["completion"], r["label"]) for r in rows] == [
        ("PROMPT[m1]", e("draft one"), True),  # accept
        ("PROMPT[m4]", e("draft four"), False),  # reject without replacement
        ("PROMPT[m6]", e("draft six"), False),  # regenerate with nothing kept later
        ("PROMPT[m7]", e("same"), True),  # an edit that changed nothing ranks nothing: an accept
    ]  # m2 (edit), m3 (replacement) and m5 (regenerate, then kept) are DPO pairs


@pytest.mark.parametrize(("ratio", "desirable", "undesirable", "kept"), [
    (1.0, 9, 3, 3), (1.5, 9, 3, 5), (2.0, 3, 3, 3), (0, 9, 3, 9), (1.0, 9, 0, 9)])
def test_kto_balance_keeps_every_undesirable_row_and_a_share_of_desirable_ones(
        ratio: float, desirable: int, undesirable: int, kept: int) -> None:
    rows = [{"prompt": f"p{i}", "completion": "c", "label": True} for i in range(desirable)]
    rows += [{"prompt": f"n{i}", "completion": "c", "label": False} for i in range(undesirable)]
    balanced = balance_kto_rows(rows, desirable_ratio=ratio, seed=1)
    assert sum(row["label"] for row in balanced) == kept
    assert [row for row in balanced if not row["label"]] == rows[desirable:]
    assert balanced == [row for row in rows if row in balanced]  # in their order


def test_monologues_give_no_dpo_or_kto_rows() -> None:
    assert build_kto_rows([], [monologue("a long text of mine.")], render=render) == []


def test_first_cycle_trains_on_all_writing() -> None:
    writing = [reply("r1", "a"), reply("r2", "b"), monologue("my own words.")]
    rows = build_sft_rows([], writing, render=render, replay_fraction=0.1, seed=0, tokenizer=None, chunk_tokens=64)
    assert rows == [{"prompt": "PROMPT[a]", "completion": e("r1")},
                    {"prompt": "PROMPT[b]", "completion": e("r2")},
                    {"prompt": f"PROMPT[{MONOLOGUE_INSTRUCTION}]", "completion": e("my own words.")}]
    capped = build_sft_rows([], writing, render=render, replay_fraction=0.1, seed=0, tokenizer=None, chunk_tokens=64,
                            first_cycle_writing=2)
    assert len(capped) == 2  # a long history is cut to the newest pieces (undated ones count as oldest)


def test_replay_mixes_a_seeded_share_of_writing_into_new_feedback() -> None:
    writing = [reply(f"old reply {i}", f"w{i}") for i in range(20)]
    feedback = [fb("accept", f"m{i}", f"draft {i}") for i in range(4)]
    rows = build_sft_rows(feedback, writing, render=render, replay_fraction=1.5, seed=3, tokenizer=None,
                          chunk_tokens=64)
    assert rows[:4] == [{"prompt": f"PROMPT[m{i}]", "completion": e(f"draft {i}")} for i in range(4)]
    replayed = rows[4:]
    assert len(replayed) == 6  # 1.5 × 4 feedback rows
    assert all(r["completion"].startswith("old reply") for r in replayed)
    again = build_sft_rows(feedback, writing, render=render, replay_fraction=1.5, seed=3, tokenizer=None,
                           chunk_tokens=64)
    other = build_sft_rows(feedback, writing, render=render, replay_fraction=1.5, seed=4, tokenizer=None,
                           chunk_tokens=64)
    assert again == rows and other != rows


def test_every_completion_ends_with_one_end_of_turn() -> None:
    writing = [reply("r1"), monologue("one. two.\n\nthree.")]
    sft = build_sft_rows(TABLE_FEEDBACK, writing, render=render, replay_fraction=5, seed=0, tokenizer=None,
                         chunk_tokens=64)
    dpo = build_dpo_rows(TABLE_FEEDBACK, render=render)
    kto = build_kto_rows(TABLE_FEEDBACK, writing, render=render)
    texts = [r["completion"] for r in sft + kto] + [r[k] for r in dpo for k in ("chosen", "rejected")]
    assert texts and all(t.endswith(END_OF_TURN) and t.count(END_OF_TURN) == 1 for t in texts)


def words_count(text: str) -> int:
    return len(text.split())


def test_monologue_chunks_break_at_paragraphs_then_sentences_and_keep_every_word() -> None:
    paragraphs = ["one two three. four five six six.", "seven eight. nine ten eleven twelve.", "thirteen"]
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, limit=6, measure=words_count)
    assert all(words_count(c) <= 6 for c in chunks)
    assert " ".join(" ".join(chunks).split()) == " ".join(text.split())
    assert chunks[0] == "one two three." and chunks[1] == "four five six six."  # sentence split of paragraph 1
    long_sentence = " ".join(f"w{i}" for i in range(15))
    assert [words_count(c) for c in chunk_text(long_sentence, limit=6, measure=words_count)] == [6, 6, 3]
    assert chunk_text("a b.\n\nc d.", limit=10, measure=words_count) == ["a b.\n\nc d."]


def test_a_long_paragraph_stays_one_paragraph_in_the_monologue_rows() -> None:
    """Its sentences are re-joined by a space (chunk_monologue put a blank line between them)."""
    text = "One two. Three four. Five six seven eight.\n\nNine."
    rows = build_sft_rows([], [monologue(text)], render=render, replay_fraction=0, seed=0, tokenizer=None,
                          chunk_tokens=6)  # no tokenizer: ceil(4/3 x words) tokens, so 4 words a chunk
    assert [r["completion"] for r in rows] == [e("One two. Three four."), e("Five six seven eight."), e("Nine.")]


def test_monologue_rows_continue_from_the_previous_chunk() -> None:
    text = "first part words here.\n\nsecond part words here.\n\nthird part words."
    rows = build_sft_rows([], [monologue(text)], render=render, replay_fraction=0, seed=0, tokenizer=None,
                          chunk_tokens=6)
    assert [r["completion"] for r in rows] == [e("first part words here."), e("second part words here."),
                                               e("third part words.")]
    assert rows[0]["prompt"] == f"PROMPT[{MONOLOGUE_INSTRUCTION}]"
    assert "first part words here." in rows[1]["prompt"] and "second part words here." in rows[2]["prompt"]


def test_split_holdout_keeps_the_newest_feedback_out() -> None:
    items = [fb("accept", f"m{i}", "d", minutes=m) for i, m in enumerate([5, 1, 9, 3, 7, 2, 8, 4, 6, 0])]
    train, held = split_holdout(items, fraction=0.2, minimum=1)
    assert [i.created_at.minute for i in held] == [8, 9]
    assert max(i.created_at for i in train) < min(i.created_at for i in held)
    _, held = split_holdout(items, fraction=0.1, minimum=3)
    assert len(held) == 3  # the minimum wins over the fraction ...
    train, held = split_holdout(items[:3], fraction=0.5, minimum=5)
    assert len(held) == 1 and len(train) == 2  # ... but at least half always trains
    assert split_holdout([], fraction=0.2, minimum=2) == ([], [])


def test_split_writing_holdout_holds_out_the_newest_replies_only() -> None:
    writing = [reply("old", days=1), monologue("mono"), reply("undated", days=None), reply("new", days=9),
               reply("mid", days=5)]
    train, held = split_writing_holdout(writing, 0.25, 1)
    assert [w.text for w in held] == ["new"]
    assert [w.text for w in train] == ["old", "mono", "undated", "mid"]


def test_datasets_round_trip_through_jsonl(tmp_path: Path) -> None:
    rows = {"sft": [{"prompt": "p", "completion": e("ünïcode ✓")}], "dpo": [], "kto": [
        {"prompt": "p", "completion": e("c"), "label": False}]}
    assert write_datasets(rows, tmp_path / "ds") == {"sft": 1, "dpo": 0, "kto": 1}
    assert read_datasets(tmp_path / "ds") == rows
    assert read_datasets(tmp_path / "missing") == {}


def test_renderer_uses_the_chat_template_with_our_system_prompt(tiny_model_dir: Path) -> None:
    from training.model import load_tokenizer

    render_real = make_renderer(load_tokenizer(tiny_model_dir), tiny_model_settings(tiny_model_dir))
    conversation = Conversation.of("are you coming?", [Turn("other", "hey"), Turn("owner", "hi")])
    prompt = render_real(conversation)
    assert prompt.startswith("<|im_start|>system\nYou are Ada's twin.")
    assert "SmolLM" not in prompt  # the template's default system prompt never sneaks in
    assert prompt.endswith("<|im_start|>user\nare you coming?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("bad", ["unknown"])
def test_unknown_feedback_kind_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        build_sft_rows([fb(bad, "m", "d", text="t")], [], render=render, replay_fraction=0, seed=0,
                       tokenizer=None, chunk_tokens=64)


def test_a_first_cycle_trains_on_the_newest_distinct_writing_up_to_its_limit():
    from datetime import datetime, timedelta, timezone

    from training.datasets import WritingExample, newest_distinct_writing
    from training.prompt import Conversation

    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    texts = ["ok", "see you at 8", "OK", "ok ", "sounds good lol", "ok"]
    writing = [WritingExample("reply", text, Conversation.of(f"q{i}"), start + timedelta(days=i))
               for i, text in enumerate(texts)]
    chosen = newest_distinct_writing(writing, 3)
    # Newest first: "ok" (day 5), then "sounds good lol"; the other "ok"s repeat it; then "see you at 8".
    assert [w.text for w in chosen] == ["see you at 8", "sounds good lol", "ok"]
    assert [w.written_at for w in chosen] == sorted(w.written_at for w in chosen)  # given order kept
    assert newest_distinct_writing(writing, 0) == writing == newest_distinct_writing(writing, 6)
