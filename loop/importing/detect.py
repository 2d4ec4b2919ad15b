"""Which importer reads a file (by extension, then by content), which files a folder holds, and
`parse_file`, the one entry point that dispatches to the parsers (zip archives are unpacked first)
after holding the file to the size and line-length limits (`importing` in config.toml).
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta, tzinfo
from pathlib import Path
from typing import Iterable

from loop.config import ImportSettings
from loop.importing.archive import ZIP_MAGIC, first_member_head, is_zip, parse_archive
from loop.importing.base import (
    KNOWN_FORMATS,
    ImportFormatError,
    OwnerIdentity,
    ParsedFile,
    check_file_size,
    check_line_length,
    reading,
)
from loop.importing.email import parse_email
from loop.importing.jsonl import parse_jsonl
from loop.importing.telegram import parse_telegram
from loop.importing.text import MARKDOWN_SUFFIXES, parse_text
from loop.importing.whatsapp import looks_like_whatsapp, parse_whatsapp

logger = logging.getLogger(__name__)

SNIFF_BYTES = 64 * 1024
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
TEXT_SUFFIXES = {".txt", ".text"} | MARKDOWN_SUFFIXES
EMAIL_SUFFIXES = {".mbox", ".eml", ".mbx"}
FOLDER_SUFFIXES = {".json"} | JSONL_SUFFIXES | TEXT_SUFFIXES | EMAIL_SUFFIXES
ARCHIVE_SUFFIXES = {".zip"}
# Formats whose parsers work line by line, so a line of megabytes is no chat, text or mail; a
# Telegram export may be JSON written on one line.
LINE_FORMATS = {"whatsapp", "text", "email", "jsonl"}
_TELEGRAM_KEYS = re.compile(rb'"(?:messages|chats|personal_information)"\s*:')
_EML_HEADER = re.compile(rb"^(?:From|Received|Return-Path|Message-ID|MIME-Version|Date|Subject|To|Delivered-To):",
                         re.IGNORECASE)


def _head(path: Path) -> bytes:
    with reading(path), open(path, "rb") as handle:
        return handle.read(SNIFF_BYTES)


def _sniff(head: bytes) -> str | None:
    """The format the first bytes of a file show, if any."""
    body = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if body.startswith(b"{"):
        if _TELEGRAM_KEYS.search(body):
            return "telegram"
        # JSON Lines: the first line is a whole object on its own.
        return "jsonl" if body.split(b"\n", 1)[0].rstrip().endswith(b"}") else None
    if body.startswith(b"From "):
        return "email"
    if _EML_HEADER.match(body):
        return "email"
    return "whatsapp" if looks_like_whatsapp(body.decode("utf-8", "ignore")) else None


def _by_name_and_content(name: str, head: bytes) -> str | None:
    suffix = Path(name).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in EMAIL_SUFFIXES:
        return "email"
    if suffix in MARKDOWN_SUFFIXES:
        return "text"
    if suffix == ".json":
        return "telegram"  # the parser says precisely what is wrong if it is not an export
    if suffix in TEXT_SUFFIXES:
        return "whatsapp" if looks_like_whatsapp(head.decode("utf-8", "ignore").lstrip("\ufeff")) else "text"
    return _sniff(head)


def _wanted_in_archive(name: str) -> bool:
    return Path(name).suffix.lower() in FOLDER_SUFFIXES


def detect_format(path: Path, limits: ImportSettings | None = None) -> str:
    """One of KNOWN_FORMATS, from the extension and the content; raises ImportFormatError if none fits.

    For a zip archive it is the format of the first supported file inside.
    """
    path = Path(path)
    head = _head(path)
    name = path.name
    if is_zip(path, head):
        first = first_member_head(path, _wanted_in_archive, SNIFF_BYTES, limits or ImportSettings())
        if first is None:
            raise ImportFormatError(path, None, "the archive holds no chat export, text, mail or JSON Lines file")
        name, head = first
    found = _by_name_and_content(name, head)
    if found is None:
        raise ImportFormatError(path, None, f"unknown format; name it with --format, one of {', '.join(KNOWN_FORMATS)}")
    return found


def iter_input_files(paths: Iterable[Path | str]) -> list[Path]:
    """The files to import: files as given, folders searched recursively for the known kinds.

    In a folder, hidden entries and files of other kinds (photos and stickers of a Telegram
    export) are passed over; a file without extension is kept when it is an mbox. A path that
    does not exist is kept, so the import reports it.
    """
    files: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append(path)

    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            add(path)
            continue
        for found in sorted(path.rglob("*")):
            relative = found.relative_to(path)
            if any(part.startswith(".") for part in relative.parts) or not found.is_file():
                continue
            suffix = found.suffix.lower()
            if suffix in FOLDER_SUFFIXES | ARCHIVE_SUFFIXES or (not suffix and _is_mbox(found)):
                add(found)
    return files


def _is_mbox(path: Path) -> bool:
    try:
        return _head(path)[:5] == b"From "
    except ImportFormatError:
        return False


def parse_file(path: Path, *, owner: OwnerIdentity, format: str | None = None,
               max_gap: timedelta = timedelta(hours=12), tz: tzinfo | None = None,
               limits: ImportSettings | None = None) -> ParsedFile:
    """Parse one file into writing samples; `format` forces a parser, `tz` reads naive times (default: local),
    `limits` bound the file (default: `ImportSettings()`)."""
    path, limits = Path(path), limits or ImportSettings()
    if format is not None and format not in KNOWN_FORMATS:
        raise ImportFormatError(path, None, f"unknown format {format!r}; one of {', '.join(KNOWN_FORMATS)}")
    if is_zip(path, _head(path)):
        # The archive's own size is not held to max_file_mb: a chat exported with its photos is
        # large, and only the members worth parsing are unpacked, within the archive limits.
        return parse_archive(path, wanted=_wanted_in_archive, limits=limits, parse_member=lambda member: _parse_one(
            member, owner=owner, format=format, max_gap=max_gap, tz=tz, limits=limits))
    check_file_size(path, limits)
    return _parse_one(path, owner=owner, format=format, max_gap=max_gap, tz=tz, limits=limits)


def _parse_one(path: Path, *, owner: OwnerIdentity, format: str | None, max_gap: timedelta, tz: tzinfo | None,
               limits: ImportSettings) -> ParsedFile:
    """A file within max_file_mb that is not an archive (a member is refused if it is one: each
    level of a zip in a zip would start the unpacked-size budget afresh)."""
    if _head(path).startswith(ZIP_MAGIC):
        raise ImportFormatError(path, None, "a zip archive inside an archive; unzip it and import what it holds")
    chosen = format or detect_format(path, limits)
    if chosen in LINE_FORMATS:
        check_line_length(path, limits)
    logger.info("importing %s as %s", path, chosen)
    if chosen == "telegram":
        return parse_telegram(path, owner=owner, max_gap=max_gap, tz=tz)
    if chosen == "whatsapp":
        return parse_whatsapp(path, owner=owner, max_gap=max_gap, tz=tz)
    if chosen == "email":
        return parse_email(path, owner=owner)
    if chosen == "jsonl":
        return parse_jsonl(path, tz=tz)
    return parse_text(path)
