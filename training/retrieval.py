"""The owner's own words for a prompt: past replies to similar messages, and the last ones to the same person.

Issue 16's retrieval lever (off unless `generation.retrieved_examples` or `generation.contact_examples`
is above 0). The index holds the owner's past replies; BM25 (bm25s, no model) matches the
incoming message against the messages those replies answered, so what comes back is how the owner
answered messages like this one. The replies chosen travel in `Conversation.examples` and the one
prompt renderer (training.prompt) puts them in the system text, identically at training, evaluation
and drafting time.

Pure: no database, no model. Leakage rules (tests/training/test_retrieval.py):
- a training row never sees its own reply, nor any reply of its own conversation written at or
  after it (those are the future at drafting time), nor a text equal to its own reply;
- held-out items retrieve from the training items only, and never a text equal to a held-out one;
- a text already in the prompt's context is not repeated as an example.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Hashable, Iterable, Sequence

from training.examples import FeedbackExample, WritingExample, kept_text
from training.prompt import Conversation

STOPWORDS = "en"  # bm25s's English list: chat is mostly function words, which match everything


@dataclass(frozen=True)
class PastReply:
    """One reply of the owner: what it answered (matched by BM25), the reply, where and when."""

    prompt: str
    text: str
    thread: str | None
    at: datetime | None
    origin: Hashable = None  # the example it came from, so a training row can leave itself out


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def clip(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars` characters, at a word boundary, marked with "…"."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut).rstrip() + "…"


def past_replies(feedback: Sequence[FeedbackExample], writing: Sequence[WritingExample]) -> list[PastReply]:
    """The owner's replies that have a message they answered: imported replies and kept texts of verdicts."""
    replies: list[PastReply] = []
    for index, sample in enumerate(writing):
        if sample.kind == "reply" and sample.conversation is not None and sample.text.strip():
            replies.append(PastReply(sample.conversation.incoming, sample.text.strip(), sample.thread,
                                     sample.written_at, ("writing", index)))
    for index, item in enumerate(feedback):
        text = kept_text(item)
        if text:
            replies.append(PastReply(item.conversation.incoming, text, item.thread, item.created_at,
                                     ("feedback", index)))
    return replies


@functools.lru_cache(maxsize=1)
def _bm25s() -> Any:
    import bm25s  # imported on first use: drafting with the lever off never loads it

    return bm25s


def _tokens(texts: list[str]) -> list[list[str]]:
    return _bm25s().tokenize(texts, stopwords=STOPWORDS, return_ids=False, show_progress=False)


class ReplyIndex:
    """BM25 over the messages the owner answered; `choose` picks the examples for one prompt."""

    def __init__(self, replies: Iterable[PastReply]):
        self.replies = list(replies)
        self._bm25: Any = None
        if self.replies:
            self._bm25 = _bm25s().BM25()
            self._bm25.index(_tokens([r.prompt for r in self.replies]), show_progress=False)
        # Each thread's dated replies, newest first: a cycle asks for them once per row.
        self._threads: dict[str, list[int]] = {}
        for index, reply in enumerate(self.replies):
            if reply.thread is not None and reply.at is not None:
                self._threads.setdefault(reply.thread, []).append(index)
        for indices in self._threads.values():
            indices.sort(key=lambda i: (self.replies[i].at, i), reverse=True)

    def __len__(self) -> int:
        return len(self.replies)

    def ranked(self, query: str) -> list[int]:
        """Indices of the replies whose prompt shares a word with `query`, best match first."""
        if self._bm25 is None:
            return []
        ids = self._bm25.get_tokens_ids(_tokens([query])[0])
        if not ids:
            return []
        import numpy as np

        scores = self._bm25.get_scores_from_ids(ids)
        hits = np.flatnonzero(scores > 0)
        return hits[np.lexsort((hits, -scores[hits]))].tolist()  # best first, ties in the given order

    def choose(self, conversation: Conversation, *, thread: str | None, at: datetime | None, similar: int,
               recent: int, max_chars: int, origin: Hashable = None,
               exclude_texts: Iterable[str] = ()) -> tuple[str, ...]:
        """The examples for a prompt: up to `similar` replies to the most similar past messages (best
        first), then up to `recent` of the newest earlier replies in the same `thread` (newest first),
        each text once and clipped to `max_chars`.

        `at` is when the reply to this prompt was (or is being) written; `origin` the example the
        prompt belongs to; `exclude_texts` texts that must not appear (the reply itself, held-out texts).
        """
        banned = {_key(text) for text in exclude_texts if text}
        banned |= {_key(turn.text) for turn in conversation.context}

        def usable(reply: PastReply) -> bool:
            if origin is not None and reply.origin == origin:
                return False
            if _key(reply.text) in banned:
                return False
            # The same conversation at or after this moment is the future; undated, it may be.
            return not (thread is not None and reply.thread == thread
                        and (at is None or reply.at is None or reply.at >= at))

        chosen: list[str] = []
        seen: set[str] = set()

        def take(indices: Iterable[int], limit: int) -> None:
            taken = 0
            for index in indices:
                if taken >= limit:
                    return
                reply = self.replies[index]
                key = _key(reply.text)
                if key in seen or not usable(reply):
                    continue
                seen.add(key)
                chosen.append(clip(reply.text, max_chars))
                taken += 1

        if similar > 0:
            take(self.ranked(conversation.incoming), similar)
        if recent > 0 and thread is not None and at is not None:
            take((i for i in self._threads.get(thread, ()) if self.replies[i].at < at), recent)  # type: ignore[operator]
        return tuple(chosen)


@dataclass(frozen=True)
class Budget:
    """How many examples of each kind a prompt gets, and how long each may be (generation.* settings)."""

    similar: int = 0
    recent: int = 0
    max_chars: int = 200

    @property
    def enabled(self) -> bool:
        return self.similar > 0 or self.recent > 0

    @classmethod
    def of(cls, generation: Any) -> "Budget":
        return cls(similar=generation.retrieved_examples, recent=generation.contact_examples,
                   max_chars=generation.retrieved_max_chars)


def _with(conversation: Conversation, examples: tuple[str, ...]) -> Conversation:
    return dataclasses.replace(conversation, examples=examples)


@dataclass
class Split:
    """A cycle's examples, train and held out, as `loop.cycle` splits them."""

    train_feedback: list[FeedbackExample]
    train_writing: list[WritingExample]
    heldout_feedback: list[FeedbackExample]
    heldout_writing: list[WritingExample]


def attach_examples(split: Split, budget: Budget) -> Split:
    """Every prompt of a cycle with its examples, retrieved from the training items only.

    A training row leaves out itself, its own text and its conversation's later replies; a held-out
    item also every held-out text, so neither training nor evaluation sees what is held out.
    Monologues keep their prompt (an instruction, not a message). Budget off: `split` unchanged.
    """
    if not budget.enabled:
        return split
    index = ReplyIndex(past_replies(split.train_feedback, split.train_writing))
    heldout_texts = [text for text in (kept_text(item) for item in split.heldout_feedback) if text]
    heldout_texts += [item.text for item in split.heldout_writing]

    def feedback(items: list[FeedbackExample], train: bool) -> list[FeedbackExample]:
        return [dataclasses.replace(item, conversation=_with(item.conversation, index.choose(
            item.conversation, thread=item.thread, at=item.created_at, similar=budget.similar, recent=budget.recent,
            max_chars=budget.max_chars, origin=("feedback", position) if train else None,
            exclude_texts=[kept_text(item) or ""] + ([] if train else heldout_texts))))
            for position, item in enumerate(items)]

    def writing(items: list[WritingExample], train: bool) -> list[WritingExample]:
        result = []
        for position, item in enumerate(items):
            if item.kind == "reply" and item.conversation is not None:
                item = dataclasses.replace(item, conversation=_with(item.conversation, index.choose(
                    item.conversation, thread=item.thread, at=item.written_at, similar=budget.similar,
                    recent=budget.recent, max_chars=budget.max_chars, origin=("writing", position) if train else None,
                    exclude_texts=[item.text] + ([] if train else heldout_texts))))
            result.append(item)
        return result

    return Split(train_feedback=feedback(split.train_feedback, True), train_writing=writing(split.train_writing, True),
                 heldout_feedback=feedback(split.heldout_feedback, False),
                 heldout_writing=writing(split.heldout_writing, False))
