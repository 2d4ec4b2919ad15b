"""Zip archives: what a phone's "Export chat" shares (WhatsApp on iOS always zips `_chat.txt`),
and how a Telegram export folder travels as one upload to the bot.

The supported members are unpacked (by base name only) into a temporary folder and parsed like
files; their samples and counts add up to one `ParsedFile`. A member that fails makes the whole
archive fail, so nothing of it is stored.

A zip bomb (a small archive that unpacks to gigabytes) is refused, naming the limit it broke
(`importing` in config.toml): the entries listed (from the end record, before zipfile reads the
index), each supported member's size and their total (from the index, before anything is
unpacked), and the same sizes again while unpacking, counting the bytes actually produced, so a
member whose header lies about its size is stopped too. Only stored and deflated members are
read: deflate unpacks in bounded steps, bzip2 and LZMA would produce a whole block at once.
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

from loop.config import ImportSettings
from loop.importing.base import ImporterError, ImportFormatError, OwnerUnknownError, ParsedFile, megabytes

logger = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"
CHUNK_BYTES = 1 << 20
READABLE_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
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


def _too_many_entries(path: Path, count: int, limits: ImportSettings) -> ImportFormatError:
    return ImportFormatError(path, None, f"lists {count} entries; archives of more than {limits.max_entries} are "
                                         "refused (importing.max_entries in config.toml); unzip it and import "
                                         "the folder")


def _listed_entries(path: Path) -> int | None:
    """The entry count the archive's end record states, or None if it cannot be read (zipfile then says why)."""
    try:
        with open(path, "rb") as handle:
            # zipfile's own first step; private, but the only reader of the record before the index,
            # where zipfile makes an object per entry (a small upload can list millions).
            record = zipfile._EndRecData(handle)  # type: ignore[attr-defined]
    except (AttributeError, *_ARCHIVE_ERRORS):
        return None
    return None if record is None else int(record[zipfile._ECD_ENTRIES_TOTAL])  # type: ignore[attr-defined]


def open_archive(path: Path, limits: ImportSettings) -> zipfile.ZipFile:
    """The opened archive, once its entry count is within `importing.max_entries`."""
    listed = _listed_entries(path)
    if listed is not None and listed > limits.max_entries:
        raise _too_many_entries(path, listed, limits)
    try:
        archive = zipfile.ZipFile(path)
    except _ARCHIVE_ERRORS as error:
        raise ImportFormatError(path, None, f"not a readable zip archive ({error})") from None
    if len(archive.infolist()) > limits.max_entries:  # the end record understated the index
        archive.close()
        raise _too_many_entries(path, len(archive.infolist()), limits)
    return archive


def _check_declared(path: Path, members: list[zipfile.ZipInfo], limits: ImportSettings) -> None:
    """Refuse, from the index alone, members too large or too many bytes in all, and exotic compression."""
    for info in members:
        if info.compress_type not in READABLE_METHODS:
            raise ImportFormatError(path, info.filename, f"compressed with method {info.compress_type}; only stored "
                                                         "and deflated members are read (re-zip it)")
        if info.file_size > limits.max_file_mb << 20:
            raise ImportFormatError(path, info.filename, _member_too_big(info.file_size, limits))
    total = sum(info.file_size for info in members)
    if total > limits.max_unpacked_mb << 20:
        raise ImportFormatError(path, None, _unpacks_to_too_much(total, limits))


def _member_too_big(size: int, limits: ImportSettings) -> str:
    return (f"unpacks to {megabytes(size)} MB; files over {limits.max_file_mb} MB are refused "
            "(importing.max_file_mb in config.toml)")


def _unpacks_to_too_much(size: int, limits: ImportSettings) -> str:
    return (f"unpacks to {megabytes(size)} MB; archives unpacking to over {limits.max_unpacked_mb} MB are refused "
            "(importing.max_unpacked_mb in config.toml)")


def _extract(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, *,
             unpacked: int, limits: ImportSettings) -> int:
    """Unpack one member in chunks, counting what comes out; returns the archive's bytes unpacked so far."""
    copied = 0
    try:
        with archive.open(info) as source, open(target, "wb") as sink:
            while chunk := source.read(CHUNK_BYTES):
                copied += len(chunk)
                if copied > limits.max_file_mb << 20:
                    raise ImportFormatError(path, info.filename, _member_too_big(copied, limits) + " (more than its "
                                                                                                   "header says)")
                if unpacked + copied > limits.max_unpacked_mb << 20:
                    raise ImportFormatError(path, None, _unpacks_to_too_much(unpacked + copied, limits)
                                            + " (more than its headers say)")
                sink.write(chunk)
    except _ARCHIVE_ERRORS as error:
        raise ImportFormatError(path, info.filename, f"cannot be unpacked ({error})") from None
    return unpacked + copied


def parse_archive(path: Path, *, wanted: Callable[[str], bool], parse_member: Callable[[Path], ParsedFile],
                  limits: ImportSettings) -> ParsedFile:
    """Parse the members of a zip whose names `wanted` accepts; one ParsedFile for the whole archive."""
    merged = ParsedFile(path=path, format="")
    formats: list[str] = []
    archive = open_archive(path, limits)
    folder = Path(tempfile.mkdtemp(prefix="twin-import-"))
    try:
        with archive:
            members = wanted_members(archive, wanted)
            if not members:
                raise ImportFormatError(path, None, "the archive holds no chat export, text, mail or JSON Lines file")
            _check_declared(path, members, limits)
            unpacked = 0
            for number, info in enumerate(members):
                # Only the base name is used: a member path can never leave the temporary folder.
                target = folder / str(number) / PurePosixPath(info.filename).name
                target.parent.mkdir()
                unpacked = _extract(path, archive, info, target, unpacked=unpacked, limits=limits)
                try:
                    parsed = parse_member(target)
                except ImporterError as error:
                    raise _relocated(error, path, info.filename) from None
                target.unlink()  # parsed: its disk space counts no more
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


def first_member_head(path: Path, wanted: Callable[[str], bool], size: int,
                      limits: ImportSettings) -> tuple[str, bytes] | None:
    """Name and first bytes of the archive's first wanted member, to tell its format; None if there is none."""
    with open_archive(path, limits) as archive:
        members = wanted_members(archive, wanted)
        if not members:
            return None
        _check_declared(path, members[:1], limits)
        try:
            with archive.open(members[0]) as member:
                return PurePosixPath(members[0].filename).name, member.read(size)
        except _ARCHIVE_ERRORS as error:
            raise ImportFormatError(path, members[0].filename, f"cannot be unpacked ({error})") from None
