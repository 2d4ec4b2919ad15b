"""Plain text and Markdown: the owner's prose, cut at paragraph boundaries into monologue samples.

A chunk (training.chunking, in characters) holds whole paragraphs up to `MAX_CHUNK_CHARS` (a few
hundred tokens, the size the SFT builder continues); only a paragraph longer than that is cut, at
sentence ends, then at spaces.
Markdown front matter, fenced code and HTML comments are not the owner's prose and are left out.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from pathlib import Path

from loop.importing.base import ParsedFile, Skip, make_sample, read_text
from storage.models import SampleKind
from training.chunking import chunk_text

logger = logging.getLogger(__name__)

MAX_CHUNK_CHARS = 1500
MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdown", ".mkd"}

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n.*?\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_FENCE = re.compile(r"^[ \t]{0,3}(```|~~~)")


def chunk_paragraphs(text: str, max_chars: int = MAX_CHUNK_CHARS) -> list[str]:
    """Chunks of whole paragraphs (joined by a blank line), each at most `max_chars` characters.

    The shared chunker of training (`training.chunking.chunk_text`) measured in characters; the
    SFT builder cuts the same way in tokens.
    """
    return chunk_text(text, limit=max_chars)


def _without_html_comments(text: str) -> str:
    # A loop rather than a lazy regex: many unclosed "<!--" would make the regex quadratic.
    parts: list[str] = []
    position = 0
    while (start := text.find("<!--", position)) >= 0:
        end = text.find("-->", start + 4)
        if end < 0:
            break
        parts.append(text[position:start])
        position = end + 3
    parts.append(text[position:])
    return "".join(parts)


def strip_markdown_extras(text: str, skipped: dict[str, int] | None = None) -> str:
    """Markdown without front matter, HTML comments and fenced code blocks (counted in `skipped`)."""
    text = _FRONT_MATTER.sub("", text, count=1)
    text = _without_html_comments(text)
    kept: list[str] = []
    fence: str | None = None
    for line in text.split("\n"):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            if skipped is not None:
                skipped[Skip.code] = skipped.get(Skip.code, 0) + 1
            kept.append("")  # a code block separates the paragraphs around it
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
        else:
            kept.append(line)
    return "\n".join(kept)


def parse_text(path: Path) -> ParsedFile:
    text = read_text(path)
    parsed = ParsedFile(path=path, format="text")
    if path.suffix.lower() in MARKDOWN_SUFFIXES:
        text = strip_markdown_extras(text, parsed.skipped)
    written_at = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    chunks = chunk_paragraphs(text)
    parsed.messages = len(chunks)
    if not chunks:
        parsed.skipped[Skip.empty] += 1
    source = f"text:{path.name}"
    parsed.samples = [make_sample(kind=SampleKind.monologue, text=chunk, written_at=written_at, source=source)
                      for chunk in chunks]
    return parsed
