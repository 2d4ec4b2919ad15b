"""Shared pieces of the importers: who the owner is, the errors, a parsed file, and text decoding.

Every parser turns one file into a `ParsedFile`: writing samples (docs/architecture.md: reply or monologue)
plus counts of what it left out and why. A file that cannot be read raises `ImportFormatError`
naming the file and the place it broke, before anything is stored; so does a file beyond the
size and line-length limits (`importing` in config.toml), checked before it is read.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from loop.config import ImportSettings
from loop.errors import ImportFormatError, ImporterError, OwnerUnknownError  # noqa: F401 - the importers take them from here
from storage.models import SampleKind, WritingSampleCreate

logger = logging.getLogger(__name__)

KNOWN_FORMATS = ("telegram", "whatsapp", "text", "email", "jsonl")
MAX_CONTEXT_TURNS = 6  # earlier turns kept with a reply sample (the renderer keeps at most this many)


class Skip:
    """Reasons a message or piece of a file did not become a sample (keys of `ParsedFile.skipped`)."""

    service = "service message"
    media = "sticker or media"
    empty = "empty"
    forwarded = "forwarded"
    deleted = "deleted message"
    unanswered = "others' messages with no reply right after"
    no_prompt = "your messages with nothing to answer"
    channel = "channel or bot chat"
    not_owner = "someone else's mail"
    code = "code block"


@dataclass
class OwnerIdentity:
    """How the owner appears in exports: Telegram user ids, display names (WhatsApp), e-mail addresses."""

    telegram_ids: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)

    def has_name(self, name: str | None) -> bool:
        key = _name_key(name)
        return bool(key) and any(_name_key(n) == key for n in self.names)

    def has_email(self, address: str | None) -> bool:
        key = (address or "").strip().casefold()
        return bool(key) and any(e.strip().casefold() == key for e in self.emails)

    @classmethod
    def from_config(cls, config: Any, *, names: Iterable[str] = (), emails: Iterable[str] = (),
                    telegram_ids: Iterable[int] = ()) -> "OwnerIdentity":
        """The configured identity (owners, owner_names, owner_emails) plus command-line additions."""
        return cls(
            telegram_ids=[*getattr(config, "owners", []), *telegram_ids],
            names=[*getattr(config, "owner_names", []), *names],
            emails=[*getattr(config, "owner_emails", []), *emails],
        )


def _name_key(name: str | None) -> str:
    # WhatsApp wraps names in direction marks and no-break spaces; compare what a person reads.
    cleaned = (name or "").replace("\u200e", "").replace("\u200f", "").replace("\u202a", "").replace("\u202c", "")
    return " ".join(cleaned.split()).casefold()


@dataclass
class ParsedFile:
    """What one file yields: samples ready to store and the counts of what was left out."""

    path: Path
    format: str
    samples: list[WritingSampleCreate] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    messages: int = 0  # messages, mails, rows or paragraphs read


def clean_text(text: str) -> str:
    """Text safe to store: no NUL characters (PostgreSQL refuses them), no lone surrogates."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def make_sample(*, kind: SampleKind, text: str, source: str, prompt: str | None = None,
                context: Sequence[dict[str, Any]] = (), sender: str | None = None,
                written_at: datetime | None = None) -> WritingSampleCreate:
    """A writing sample with every string cleaned for storage."""
    turns = [{"role": t["role"], "text": clean_text(t["text"]),
              "sender": clean_text(t["sender"]) if t.get("sender") else None} for t in context]
    return WritingSampleCreate(kind=kind, text=clean_text(text), prompt=clean_text(prompt) if prompt else None,
                               context=turns, sender=clean_text(sender) if sender else None,
                               written_at=written_at, source=source)


def megabytes(size: int) -> str:
    return f"{size / (1 << 20):.1f}".removesuffix(".0")


def check_file_size(path: Path, limits: ImportSettings) -> None:
    """Refuse a file over `importing.max_file_mb` before reading it: each parser holds a file whole."""
    try:
        size = Path(path).stat().st_size
    except OSError:
        return  # the parser's read says what is wrong
    if size > limits.max_file_mb << 20:
        raise ImportFormatError(path, None, f"is {megabytes(size)} MB; files over {limits.max_file_mb} MB are "
                                            "refused (importing.max_file_mb in config.toml)")


def check_line_length(path: Path, limits: ImportSettings) -> None:
    """Refuse a file with a line over `importing.max_line_kb`, reading it in chunks (memory stays small)."""
    limit = limits.max_line_kb << 10
    line, run = 1, 0  # the current line's number and its bytes so far
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                if chunk.endswith(b"\r"):
                    chunk += handle.read(1)  # a CRLF cut in two is still one line end
                # decode_text reads CRLF and a lone CR as line ends too.
                chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
                lengths = [len(piece) for piece in chunk.split(b"\n")]
                lengths[0] += run
                if max(lengths) > limit:
                    too_long = line + next(i for i, length in enumerate(lengths) if length > limit)
                    raise ImportFormatError(path, f"line {too_long}", f"a line of over {limits.max_line_kb} KB; "
                                            "longer lines are refused (importing.max_line_kb in config.toml)")
                line += len(lengths) - 1
                run = lengths[-1]
    except OSError:
        return  # the parser's read says what is wrong


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn the operating system's errors of reading `path` into the importer's one error, with the place."""
    try:
        yield
    except IsADirectoryError:
        raise ImportFormatError(path, None, "is a folder, not a file") from None
    except FileNotFoundError:
        raise ImportFormatError(path, None, "no such file") from None
    except OSError as error:
        raise ImportFormatError(path, None, f"cannot be read: {error.strerror or error}") from None


def read_bytes(path: Path) -> bytes:
    with reading(path):
        return Path(path).read_bytes()


def decode_text(path: Path, data: bytes) -> str:
    """UTF-8 (with or without a BOM) or BOM-marked UTF-16 text, with newlines made plain "\\n"."""
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            text = data.decode("utf-16")
        else:
            text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ImportFormatError(path, f"byte {error.start}",
                                "not UTF-8 text; save the file as UTF-8 and import it again") from None
    nul = text.find("\x00")
    if nul >= 0:
        raise ImportFormatError(path, f"character {nul}", "binary data (a NUL character), not text")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text(path: Path) -> str:
    return decode_text(path, read_bytes(path))


def aware(moment: datetime, tz: tzinfo | None) -> datetime:
    """A timezone-aware datetime: a naive wall-clock time is read in `tz`, or this machine's zone."""
    if moment.tzinfo is not None:
        return moment
    if tz is not None:
        return moment.replace(tzinfo=tz)
    return moment.astimezone()
