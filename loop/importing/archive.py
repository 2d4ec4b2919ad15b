"""Zip archives: what a phone's "Export chat" shares (WhatsApp on iOS always zips `_chat.txt`),
and how a Telegram export folder travels as one upload to the bot.

The supported members are unpacked (by base name only, with a size cap) into a temporary
folder and parsed like files; their samples and counts add up to one `ParsedFile`. A member that
fails makes the whole archive fail, so nothing of it is stored.
"""

from __future__ import annotations

import logging
import shutil
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable

from loop.importing.base import ImporterError, ImportFormatError, OwnerUnknownError, ParsedFile

logger = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"
MAX_MEMBER_BYTES = 1 << 30  # an export's text is far smaller; more is a zip bomb or not a chat
# What zipfile raises on corrupt, truncated, encrypted or exotic archives.
_ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, struct.error, NotImplementedError, RuntimeError, EOFError,
                   OSError, ValueError, OverflowError)


def is_zip(path: Path, head: bytes) -> bool:
    return path.suffix.lower() == ".zip" or head.startswith(ZIP_MAGIC)


def _relocated(error: ImporterError, archive: Path, member: str) -> ImporterError:
    """The member's error told against the archive the owner gave, with the member named."""
    if isinstance(error, ImportFormatError):
        where = f"{member}, {error.location}" if error.location else member
        return ImportFormatError(archive, where, error.message)
    if isinstance(error, OwnerUnknownError):
        return OwnerUnknownError(archive, senders=error.senders, hint=error.hint)
    return ImportFormatError(archive, member, str(error))


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    copied = 0
    with archive.open(info) as source, open(target, "wb") as sink:
        while chunk := source.read(1 << 20):
            copied += len(chunk)
            if copied > MAX_MEMBER_BYTES:
                raise ValueError(f"larger than {MAX_MEMBER_BYTES >> 20} MiB unpacked")
            sink.write(chunk)


def parse_archive(path: Path, *, wanted: Callable[[str], bool],
                  parse_member: Callable[[Path], ParsedFile]) -> ParsedFile:
    """Parse the members of a zip whose names `wanted` accepts; one ParsedFile for the whole archive."""
    merged = ParsedFile(path=path, format="")
    formats: list[str] = []
    try:
        archive = zipfile.ZipFile(path)
    except _ARCHIVE_ERRORS as error:
        raise ImportFormatError(path, None, f"not a readable zip archive ({error})") from None
    folder = Path(tempfile.mkdtemp(prefix="twin-import-"))
    try:
        with archive:
            members = wanted_members(archive, wanted)
            if not members:
                raise ImportFormatError(path, None, "the archive holds no chat export, text, mail or JSON Lines file")
            for number, info in enumerate(members):
                # Only the base name is used: a member path can never leave the temporary folder.
                target = folder / str(number) / PurePosixPath(info.filename).name
                target.parent.mkdir()
                try:
                    _extract(archive, info, target)
                except _ARCHIVE_ERRORS as error:
                    raise ImportFormatError(path, info.filename, f"cannot be unpacked ({error})") from None
                try:
                    parsed = parse_member(target)
                except ImporterError as error:
                    raise _relocated(error, path, info.filename) from None
                merged.samples.extend(parsed.samples)
                merged.skipped.update(parsed.skipped)
                merged.messages += parsed.messages
                if parsed.format not in formats:
                    formats.append(parsed.format)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    merged.format = "+".join(formats)
    return merged


def wanted_members(archive: zipfile.ZipFile, wanted: Callable[[str], bool]) -> list[zipfile.ZipInfo]:
    """Files of the archive worth parsing: not folders, not hidden or macOS metadata, names `wanted` takes."""
    return [info for info in archive.infolist() if not info.is_dir()
            and not any(part.startswith((".", "__MACOSX")) for part in PurePosixPath(info.filename).parts)
            and wanted(PurePosixPath(info.filename).name)]


def first_member_head(path: Path, wanted: Callable[[str], bool], size: int) -> tuple[str, bytes] | None:
    """Name and first bytes of the archive's first wanted member, to tell its format; None if there is none."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = wanted_members(archive, wanted)
            if not members:
                return None
            with archive.open(members[0]) as member:
                return PurePosixPath(members[0].filename).name, member.read(size)
    except _ARCHIVE_ERRORS as error:
        raise ImportFormatError(path, None, f"not a readable zip archive ({error})") from None
