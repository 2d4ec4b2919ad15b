"""Edit distance between a draft and the text the owner kept, with its two sanity baselines.

One definition, used by the promotion gate, the nightly report and the benchmarks
(docs/architecture.md, "Metrics"):

* Texts are split into **tokens**: words (letters and digits, with inner apostrophes, so
  "don't" and "dont" are one word each) and runs of other non-space characters
  (punctuation, emoji, emoticons: "!!", "...", ":)", "😂"). Case is kept: changing "I" to
  "i" is an edit the owner made. Punctuation runs count as tokens so that a draft that only
  misses a full stop costs one insertion instead of a whole substituted word.
* The distance is the Levenshtein distance between the two token lists divided by the
  number of tokens of the kept text, capped at `MAX_EDIT_DISTANCE` (3.0) per row so that one
  rambling draft cannot swamp a mean.
* Identical texts score 0; an empty draft scores exactly 1.0 (every kept token inserted);
  echoing the incoming message back lands around 1.25 on casual chat.
* An empty kept text (the owner sent nothing) divides by one instead of zero: a draft of
  two tokens then scores 2.0, a longer one the cap.
"""

from __future__ import annotations

import logging
import re
from typing import Iterable, Sequence

logger = logging.getLogger(__name__)

MAX_EDIT_DISTANCE = 3.0

# A word is a run of letters/digits, optionally joined by apostrophes ("don't", "rock'n'roll");
# anything else that is not a space forms its own token, runs kept together ("?!", "...").
_TOKEN_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|[^\w\s]+|_+")
_WORD_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


def tokens(text: str) -> list[str]:
    """The tokens edit distance is measured on: words and runs of punctuation or emoji, case kept."""
    return _TOKEN_RE.findall(text)


def words(text: str) -> list[str]:
    """The words of a text (no punctuation), case kept; shared with the style features."""
    return _WORD_RE.findall(text)


def levenshtein(a: Sequence[str], b: Sequence[str]) -> int:
    """The number of insertions, deletions and substitutions turning sequence `a` into `b`."""
    if len(a) < len(b):
        a, b = b, a  # keep the row as short as possible
    if not b:
        return len(a)
    previous = list(range(len(b) + 1))
    for i, item_a in enumerate(a, start=1):
        current = [i]
        for j, item_b in enumerate(b, start=1):
            current.append(min(
                previous[j] + 1,  # delete item_a
                current[j - 1] + 1,  # insert item_b
                previous[j - 1] + (item_a != item_b),  # substitute (free when equal)
            ))
        previous = current
    return previous[-1]


def edit_distance(draft: str, kept: str) -> float:
    """Token-level Levenshtein distance from `draft` to `kept`, per kept token, capped at 3.0."""
    draft_tokens, kept_tokens = tokens(draft), tokens(kept)
    distance = levenshtein(draft_tokens, kept_tokens)
    return min(distance / max(len(kept_tokens), 1), MAX_EDIT_DISTANCE)


def mean_edit_distance(pairs: Iterable[tuple[str, str]]) -> float | None:
    """Mean `edit_distance` over (draft, kept) pairs; None when there are none."""
    scores = [edit_distance(draft, kept) for draft, kept in pairs]
    return sum(scores) / len(scores) if scores else None


def edit_distance_baselines(items: Iterable[tuple[str, str]]) -> dict[str, float]:
    """The two sanity baselines printed beside edit distance, from (incoming, kept) pairs.

    "empty": an empty draft (1.0 whenever the kept texts are non-empty); "echo": the incoming
    message sent back as the draft. Empty dict when there are no items.
    """
    items = list(items)
    if not items:
        return {}
    empty = mean_edit_distance(("", kept) for _, kept in items)
    echo = mean_edit_distance((incoming, kept) for incoming, kept in items)
    assert empty is not None and echo is not None
    return {"empty": empty, "echo": echo}
