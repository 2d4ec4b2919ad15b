"""Dataset builders: the owner's writing and feedback turned into trl's row formats.

Pure functions: no model, no database. The cycle reads rows from storage into the frozen
`FeedbackExample` / `WritingExample` of `training.examples`; the training child (training.nightly)
calls the builders and writes the result as JSONL so a cycle can be re-run and inspected. The mapping follows the table "From feedback to
training rows" in docs/architecture.md.

Every completion ends with the chat template's end-of-turn token (`<|im_end|>` for SmolLM2,
which is also its eos). trl 1.16 appends `tokenizer.eos_token` to SFT completions and DPO/KTO
completions only when they do not already end with it, so writing it here keeps it present
exactly once and identical across SFT, DPO and KTO: the twin learns where a reply stops.
"""

from __future__ import annotations

import functools
import json
import math
import random
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from training.artifacts import atomic_file
from training.chunking import chunk_text
from training.config import ModelSettings
from training.examples import FEEDBACK_KINDS, FeedbackExample, WritingExample, kept_text, replay_sample
from training.prompt import EXAMPLES_HEADER, Conversation, render_prompt, system_text

END_OF_TURN = "<|im_end|>"
DATASET_NAMES = ("sft", "dpo", "kto")
MONOLOGUE_INSTRUCTION = "Write a passage of your own, in your own words."
MONOLOGUE_CONTINUE = "Continue your own text from where it stops:"
MONOLOGUE_TAIL_WORDS = 48  # how much of the previous chunk the continuation prompt repeats

Renderer = Callable[[Conversation], str]
Row = dict[str, Any]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def make_renderer(tokenizer: Any, settings: ModelSettings) -> Renderer:
    """The one prompt renderer, bound to a tokenizer and the model settings (also used by drafting)."""
    return functools.partial(
        render_prompt, tokenizer,
        system=system_text(settings.system_prompt, settings.owner_name),
        max_context_turns=settings.context_turns,
        max_prompt_tokens=settings.max_prompt_tokens,
        examples_header=system_text(EXAMPLES_HEADER, settings.owner_name),
    )


# Held-out splits ---------------------------------------------------------------------------------

def _holdout_size(total: int, fraction: float, minimum: int) -> int:
    """At least `minimum` (or `fraction`), but never more than half: the rest must train."""
    wanted = max(minimum, math.ceil(fraction * total))
    return min(wanted, total // 2)


def split_holdout(feedback: Sequence[FeedbackExample], *, fraction: float,
                  minimum: int) -> tuple[list[FeedbackExample], list[FeedbackExample]]:
    """(train, heldout): the newest feedback is held out for evaluation, by `created_at`."""
    ordered = sorted(feedback, key=lambda item: item.created_at)
    size = _holdout_size(len(ordered), fraction, minimum)
    cut = len(ordered) - size
    return ordered[:cut], ordered[cut:]


def split_writing_holdout(writing: Sequence[WritingExample], fraction: float,
                          minimum: int) -> tuple[list[WritingExample], list[WritingExample]]:
    """(train, heldout) of writing: the newest replies are held out; monologues always train.

    Only replies have a prompt to score the owner's text against; samples without a date count
    as the oldest, in their given order.
    """
    replies = [w for w in writing if w.kind == "reply" and w.conversation is not None]
    ordered = sorted(replies, key=lambda item: item.written_at or _EPOCH)
    size = _holdout_size(len(ordered), fraction, minimum)
    held = {id(item) for item in ordered[len(ordered) - size:]}
    return [w for w in writing if id(w) not in held], [w for w in ordered if id(w) in held]


# Row builders ----------------------------------------------------------------------------------

def _checked(feedback: Sequence[FeedbackExample]) -> Sequence[FeedbackExample]:
    """Refuse unknown verdicts loudly: silently skipping them would hide a storage/loop mismatch."""
    for item in feedback:
        if item.kind not in FEEDBACK_KINDS:
            raise ValueError(f"unknown feedback kind {item.kind!r}; expected one of {', '.join(FEEDBACK_KINDS)}")
    return feedback


def _clean(text: str | None) -> str:
    return (text or "").strip()


def _completion(text: str, end_of_turn: str) -> str:
    return text + end_of_turn


def preference_pair(item: FeedbackExample) -> tuple[str, str] | None:
    """(chosen, rejected) texts of a verdict, or None when it does not rank two texts."""
    if item.kind == "accept":
        return None
    chosen, rejected = kept_text(item), _clean(item.draft)
    if not chosen or not rejected or chosen == rejected:
        return None
    return chosen, rejected


def _count_tokens(tokenizer: Any | None) -> Callable[[str], int]:
    if tokenizer is None:  # no tokenizer (quick inspection): about 4/3 tokens per word
        return lambda text: math.ceil(len(text.split()) * 4 / 3)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def monologue_conversation(previous_chunk: str | None) -> Conversation:
    """The prompt of a monologue chunk: a fixed instruction, plus the previous chunk's tail."""
    if not previous_chunk:
        return Conversation.of(MONOLOGUE_INSTRUCTION)
    tail = previous_chunk.split()[-MONOLOGUE_TAIL_WORDS:]
    return Conversation.of(f"{MONOLOGUE_CONTINUE}\n\n…{' '.join(tail)}")


def _writing_sft_rows(writing: Iterable[WritingExample], *, render: Renderer, tokenizer: Any | None,
                      chunk_tokens: int, end_of_turn: str) -> list[Row]:
    count = _count_tokens(tokenizer)
    rows: list[Row] = []
    for item in writing:
        text = _clean(item.text)
        if not text:
            continue
        if item.kind == "reply" and item.conversation is not None:
            rows.append({"prompt": render(item.conversation), "completion": _completion(text, end_of_turn)})
            continue
        # A monologue, or a reply whose conversation was lost: the owner's own text, continued.
        previous: str | None = None
        for chunk in chunk_text(text, limit=chunk_tokens, measure=count):
            rows.append({"prompt": render(monologue_conversation(previous)),
                         "completion": _completion(chunk, end_of_turn)})
            previous = chunk
    return rows


def newest_distinct_writing(writing: Sequence[WritingExample], limit: int) -> list[WritingExample]:
    """At most `limit` pieces of writing (0: all): the newest, each text once, in their given order.

    A long history would make the first cycle train for hours (2,000 chat replies: 80 minutes on
    2 cores); the newest pieces are closest to how the owner writes now, and a repeated text
    (the hundredth "ok") teaches nothing the first did not. Undated pieces count as the oldest.
    """
    if limit <= 0 or len(writing) <= limit:
        return list(writing)
    seen: set[str] = set()
    chosen: set[int] = set()
    for index in sorted(range(len(writing)), key=lambda i: writing[i].written_at or _EPOCH, reverse=True):
        key = " ".join(_clean(writing[index].text).lower().split())
        if key and key not in seen:
            seen.add(key)
            chosen.add(index)
            if len(chosen) == limit:
                break
    return [item for index, item in enumerate(writing) if index in chosen]


def build_sft_rows(feedback: Sequence[FeedbackExample], writing: Sequence[WritingExample], *,
                   render: Renderer, replay_fraction: float, seed: int, tokenizer: Any | None,
                   chunk_tokens: int, end_of_turn: str = END_OF_TURN, first_cycle_writing: int = 0) -> list[Row]:
    """`prompt`/`completion` rows: kept texts of feedback plus a replay sample of writing.

    With no feedback at all (the first cycle after an import) the writing is used, at most
    `first_cycle_writing` pieces of it (`newest_distinct_writing`; 0: all); otherwise
    `replay_fraction` × the feedback rows are drawn from all the writing (seeded), so the twin
    keeps the owner's wider voice without drowning the new corrections.
    """
    rows: list[Row] = []
    for item in _checked(feedback):
        if item.kind in ("accept", "edit", "reject"):
            text = kept_text(item)
            if text:
                rows.append({"prompt": render(item.conversation), "completion": _completion(text, end_of_turn)})
    if not feedback:
        return _writing_sft_rows(newest_distinct_writing(writing, first_cycle_writing), render=render,
                                 tokenizer=tokenizer, chunk_tokens=chunk_tokens, end_of_turn=end_of_turn)
    writing_rows = _writing_sft_rows(writing, render=render, tokenizer=tokenizer,
                                     chunk_tokens=chunk_tokens, end_of_turn=end_of_turn)
    return rows + replay_sample(writing_rows, fraction=replay_fraction, of=len(rows), seed=seed)


def build_dpo_rows(feedback: Sequence[FeedbackExample], *, render: Renderer,
                   end_of_turn: str = END_OF_TURN) -> list[Row]:
    """`prompt`/`chosen`/`rejected` rows: the owner's text over the draft it replaced."""
    rows: list[Row] = []
    for item in _checked(feedback):
        pair = preference_pair(item)
        if pair is not None:
            rows.append({"prompt": render(item.conversation),
                         "chosen": _completion(pair[0], end_of_turn),
                         "rejected": _completion(pair[1], end_of_turn)})
    return rows


def build_kto_rows(feedback: Sequence[FeedbackExample], writing: Sequence[WritingExample], *,
                   render: Renderer, paired: bool = True, end_of_turn: str = END_OF_TURN) -> list[Row]:
    """`prompt`/`completion`/`label` rows: single texts marked desirable or not.

    `paired=False` leaves out the verdicts that `preference_pair` ranks (edits, replacements, a
    regenerate whose message got a kept text): when DPO trains on those pairs the same night,
    KTO rows of them would learn each correction twice and double the stage's time.
    """
    rows: list[Row] = []

    def add(conversation: Conversation, text: str, label: bool) -> None:
        rows.append({"prompt": render(conversation), "completion": _completion(text, end_of_turn), "label": label})

    for sample in writing:
        if sample.kind == "reply" and sample.conversation is not None and _clean(sample.text):
            add(sample.conversation, _clean(sample.text), True)
    for item in _checked(feedback):
        if not paired and preference_pair(item) is not None:
            continue
        draft = _clean(item.draft)
        if item.kind == "accept" and draft:
            add(item.conversation, draft, True)
        elif item.kind == "edit":
            text = _clean(item.text)
            if text:
                add(item.conversation, text, True)
            if draft and draft != text:
                add(item.conversation, draft, False)
        elif item.kind in ("reject", "regenerate") and draft:
            add(item.conversation, draft, False)
    return rows


def balance_kto_rows(rows: Sequence[Row], *, desirable_ratio: float, seed: int) -> list[Row]:
    """At most `desirable_ratio` desirable rows per undesirable one, a seeded sample, order kept; 0 keeps all.

    A night of verdicts is mostly desirable texts for KTO (accepted drafts, replayed replies) and a
    few rejected drafts (the 300-verdict night: 128 and 25). Cutting the desirable ones shortens the
    stage, but they teach too (measured: config.toml, `training.kto.desirable_ratio`), so the default
    keeps them all. trl's class weights keep the two sides' weight equal either way
    (training.stages.kto_class_weights). Without undesirable rows nothing is dropped: the stage is
    skipped (training.train.plan_stages).
    """
    undesirable = sum(1 for row in rows if not row["label"])
    desirable = [index for index, row in enumerate(rows) if row["label"]]
    keep = math.ceil(desirable_ratio * undesirable)
    if desirable_ratio <= 0 or not undesirable or keep >= len(desirable):
        return list(rows)
    dropped = set(desirable) - set(random.Random(seed).sample(desirable, keep))
    return [row for index, row in enumerate(rows) if index not in dropped]


# JSONL files -------------------------------------------------------------------------------------

def write_datasets(rows_by_name: dict[str, list[Row]], folder: Path) -> dict[str, int]:
    """Write each list of rows to `folder/<name>.jsonl` (atomically per file); returns the counts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for name, rows in rows_by_name.items():
        with atomic_file(folder / f"{name}.jsonl") as staging, staging.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        counts[name] = len(rows)
    return counts


def read_datasets(folder: Path) -> dict[str, list[Row]]:
    """Every `<name>.jsonl` of `folder` as lists of rows (missing folder: nothing)."""
    folder = Path(folder)
    result: dict[str, list[Row]] = {}
    if not folder.is_dir():
        return result
    for path in sorted(folder.glob("*.jsonl")):
        with path.open(encoding="utf-8") as handle:
            result[path.stem] = [json.loads(line) for line in handle if line.strip()]
    return result
