"""The owner's own words in an e-mail body: quoted replies, attributions, forwarded parts and
signatures cut away; HTML bodies turned into plain text first.

Bottom-posted and interleaved replies keep the owner's lines between the quotes; a quote that is
not marked with ">" (what Outlook and many webmails send) ends the owner's part at its header.
"""

from __future__ import annotations

import logging
import re
from html.parser import HTMLParser

logger = logging.getLogger(__name__)

_ATTRIBUTION = re.compile(
    r"^(?:On\b.{0,300}\bwrote|Le\b.{0,300}\ba écrit|Am\b.{0,300}\bschrieb.{0,200}|El\b.{0,300}\bescribió"
    r"|Il\b.{0,300}\bha scritto|Op\b.{0,300}\bschreef.{0,200})\s?:\s*$", re.IGNORECASE)
_ORIGINAL = re.compile(r"^(?:-{2,}\s*(?:Original Message|Forwarded message|Ursprüngliche Nachricht|Message d'origine)"
                       r"\s*-{2,}|_{10,})\s*$", re.IGNORECASE)
_HEADER_BLOCK_NEXT = re.compile(r"^(?:Sent|Date|Gesendet|Envoyé|To):", re.IGNORECASE)
_SENT_FROM = re.compile(r"^(?:Sent from my \w[\w ]{0,40}|Get Outlook for \w+|Sent from Mail for Windows)\s*$",
                        re.IGNORECASE)
_BLANK_RUNS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


def _next_nonblank(lines: list[str], start: int) -> str:
    for line in lines[start:]:
        if line.strip():
            return line
    return ""


def _attribution_lines(lines: list[str], index: int) -> int:
    """How many lines (1 or 2, when wrapped) an "On ... wrote:" line takes at `index`; 0 if none."""
    line = lines[index].strip()
    if len(line) > 400:
        return 0
    if _ATTRIBUTION.match(line):
        return 1
    if index + 1 < len(lines) and len(lines[index + 1]) < 200 and _ATTRIBUTION.match(f"{line} {lines[index + 1].strip()}"):
        return 2
    return 0


def strip_quotes_and_signature(body: str) -> str:
    """The owner's part of a plain-text mail body."""
    lines = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        if line.rstrip() == "--" or _ORIGINAL.match(stripped):
            break  # a signature, or an original/forwarded mail below: nothing after is the owner's
        if stripped.startswith("From:") and _HEADER_BLOCK_NEXT.match(_next_nonblank(lines, index + 1).strip()):
            break  # an unmarked quote under a header block (Outlook)
        if _SENT_FROM.match(stripped):
            index += 1
            continue
        taken = _attribution_lines(lines, index)
        if taken:
            if not _next_nonblank(lines, index + taken).lstrip().startswith(">"):
                break  # an unmarked quote follows the attribution
            index += taken
            continue
        if not line.lstrip().startswith(">"):
            kept.append(line.rstrip())
        index += 1
    return _BLANK_RUNS.sub("\n\n", "\n".join(kept)).strip()


class _TextExtractor(HTMLParser):
    """Visible text of an HTML mail, without quoted parts (blockquote, gmail_quote) or styles."""

    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "pre", "hr"}
    HIDDEN = {"script", "style", "head", "title", "blockquote"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_tag: str | None = None
        self.skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.skip_tag is not None:
            self.skip_depth += tag == self.skip_tag
            return
        classes = " ".join(value or "" for name, value in attrs if name == "class")
        if tag in self.HIDDEN or "gmail_quote" in classes or "moz-cite-prefix" in classes:
            self.skip_tag, self.skip_depth = tag, 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth <= 0:
                    self.skip_tag = None
            return
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skip_tag is None:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    extractor = _TextExtractor()
    try:
        extractor.feed(html)
        extractor.close()
    except AssertionError:  # html.parser asserts on some broken declarations; fall back to dropping tags
        return re.sub(r"<[^>]{0,2000}>", " ", html)
    lines = [" ".join(line.split()) for line in "".join(extractor.parts).split("\n")]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()
