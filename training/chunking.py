"""The one text chunker: the owner's prose cut at paragraph boundaries into pieces of at most a limit.

The limit is in whatever unit `measure` counts: characters for the importers (`len`), model tokens
for the monologue rows of SFT. A chunk holds whole paragraphs joined by a blank line; only a
paragraph longer than the limit is cut, at sentence ends (its sentences re-joined by a space, so it
stays one paragraph), then between words, and a single word longer than the limit within the word.

`measure` must be monotone: a piece of a text never measures more than the text. A tokenizer's
count is close enough (a prefix cut mid-word may count one token more; the cut then falls back to
the space before that word).
"""

from __future__ import annotations

import re
from typing import Callable

Measure = Callable[[str], int]

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
_SPACES = re.compile(r"\s*")


def _furthest_fit(text: str, start: int, limit: int, measure: Measure) -> int:
    """The largest end such that `text[start:end]` measures at most `limit` (at least start + 1).

    It measures windows that grow from `limit` characters (doubling, then a binary search between
    the last that fitted and the first that did not), never the rest of `text`: the rest of a
    megabyte line, sliced for every cut, would make the cut quadratic (a 50 MB line took minutes).
    With `len` it costs a dozen slices of at most 2 × `limit` characters per cut.
    """
    fits, width = 1, max(limit, 1)
    while True:
        end = min(start + width, len(text))
        if measure(text[start:end]) > limit:
            break
        fits = end - start
        if end == len(text):
            return end
        width *= 2
    too_long = end - start
    while too_long - fits > 1:
        middle = (fits + too_long) // 2
        if measure(text[start:start + middle]) <= limit:
            fits = middle
        else:
            too_long = middle
    return start + fits


def _packed(done: list[str], current: str, piece: str, separator: str, limit: int, measure: Measure) -> str:
    """The piece being filled after adding `piece`; `current` goes to `done` when `piece` does not fit."""
    joined = f"{current}{separator}{piece}" if current else piece
    if current and measure(joined) > limit:
        done.append(current)
        return piece
    return joined


def _split_long(paragraph: str, limit: int, measure: Measure) -> list[str]:
    """Pieces of one over-long paragraph: whole sentences joined by a space where possible, else cut."""
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(paragraph):
        # An offset into the sentence, not the rest sliced off after each cut: slicing copies the
        # rest every time, quadratic in a sentence of megabytes.
        start = 0
        while (end := _furthest_fit(sentence, start, limit, measure)) < len(sentence):
            # At the last space, unless that leaves less than half a piece: then within the word.
            cut = sentence.rfind(" ", start, end)
            cut = cut if cut > start + (end - start) // 2 else end
            if current:
                pieces.append(current)
                current = ""
            pieces.append(sentence[start:cut].strip())
            start = _SPACES.match(sentence, cut).end()
        sentence = sentence[start:]  # no trailing space: the split and the paragraph's rstrip took it
        current = _packed(pieces, current, sentence, " ", limit, measure)
    if current:
        pieces.append(current)
    return [p for p in pieces if p]


def chunk_text(text: str, *, limit: int, measure: Measure = len) -> list[str]:
    """Chunks of whole paragraphs (joined by a blank line), each measuring at most `limit`."""
    chunks: list[str] = []
    current = ""
    for block in _PARAGRAPH_BREAK.split(text):
        paragraph = block.strip("\n").rstrip()
        if not paragraph.strip():
            continue
        pieces = [paragraph] if measure(paragraph) <= limit else _split_long(paragraph, limit, measure)
        for piece in pieces:
            current = _packed(chunks, current, piece, "\n\n", limit, measure)
    if current:
        chunks.append(current)
    return chunks
