"""The limits of `importing` in config.toml: zip bombs, too many entries, exotic compression, zips in
zips, files and lines too large; each refused with the limit named and nothing stored. And the long
paragraph cut in linear time (no timings asserted: RELIABILITY.md has the figures).

The bombs are built here, small: a deflated run of one byte packs about a thousand to one.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from datetime import timezone
from pathlib import Path

import pytest

from loop.config import ImportSettings
from loop.importing import ImporterError, ImportFormatError, OwnerIdentity, parse_file, run_import
from loop.importing.text import MAX_CHUNK_CHARS, chunk_paragraphs
from storage.db import session_scope
from storage.repo import get_or_create_owner, writing_samples

OWNER = OwnerIdentity(telegram_ids=[1001], names=["Me"], emails=["me@example.org"])
WA_LINE = "[01/02/2024, 10:{m:02d}:00] {who}: {text}\n"
CHAT = (WA_LINE.format(m=0, who="Bob", text="hi") + WA_LINE.format(m=1, who="Me", text="hello")).encode()
SMALL = ImportSettings(max_file_mb=2, max_unpacked_mb=3, max_entries=10, max_line_kb=64)


def bomb(path: Path, members: dict[str, int], method: int = zipfile.ZIP_DEFLATED) -> Path:
    """A zip whose members are `size` bytes of "a" each, written in 1 MiB steps (the test's memory stays small)."""
    block = b"a" * (1 << 20)
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, size in members.items():
            with archive.open(name, "w", force_zip64=size > 1 << 30) as member:
                for start in range(0, size, len(block)):
                    member.write(block[:size - start])
    return path


@pytest.fixture
def owner_db_id(engine) -> int:
    with session_scope(engine) as session:
        return get_or_create_owner(session=session, telegram_id=1001).id


def import_refused(engine, owner_db_id: int, path: Path, limits: ImportSettings) -> str:
    """Import `path`; asserts it failed and stored nothing, returns the error."""
    report = run_import(engine=engine, owner_db_id=owner_db_id, paths=[path], owner=OWNER, tz=timezone.utc,
                        limits=limits)
    assert not report.ok and report.added == 0
    with session_scope(engine) as session:
        assert writing_samples(session=session, owner_id=owner_db_id) == []
    return report.failed[0].error or ""


def test_a_zip_bomb_is_refused_from_its_index_naming_the_limit(engine, owner_db_id, tmp_path: Path) -> None:
    # Two members within max_file_mb, 4 MB together: over max_unpacked_mb.
    path = bomb(tmp_path / "WhatsApp Chat with Bob.zip", {"WhatsApp Chat with Bob.txt": 2 << 20, "notes.txt": 2 << 20})
    assert path.stat().st_size < 50_000
    error = import_refused(engine, owner_db_id, path, SMALL)
    assert "unpacks to 4 MB" in error and "importing.max_unpacked_mb" in error, error
    assert "more than its headers say" not in error  # refused before unpacking, from the sizes the index states


def test_one_member_over_the_file_limit_is_refused(engine, owner_db_id, tmp_path: Path) -> None:
    path = bomb(tmp_path / "export.zip", {"WhatsApp Chat with Bob.txt": 3 << 20})
    error = import_refused(engine, owner_db_id, path, SMALL)
    assert "WhatsApp Chat with Bob.txt" in error and "importing.max_file_mb" in error, error


def lie_about_sizes(path: Path, size: int) -> Path:
    """Rewrite the central directory so that every member claims to unpack to `size` bytes."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        struct.pack_into("<I", data, at + 24, size)  # uncompressed size of the central directory entry
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))
    return path


def test_a_member_lying_about_its_size_is_stopped_while_unpacking(engine, owner_db_id, tmp_path: Path) -> None:
    path = lie_about_sizes(bomb(tmp_path / "liar.zip", {"chat.txt": 5 << 20}), 1000)
    assert zipfile.ZipFile(path).infolist()[0].file_size == 1000
    error = import_refused(engine, owner_db_id, path, SMALL)
    assert "chat.txt" in error and "cannot be unpacked" in error, error


def test_too_many_entries_are_refused_before_the_index_is_read(engine, owner_db_id, tmp_path: Path) -> None:
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(11):
            archive.writestr(f"photos/{index}.jpg", b"\xff\xd8\xff")
        archive.writestr("_chat.txt", CHAT)
    error = import_refused(engine, owner_db_id, path, SMALL)
    assert "lists 12 entries" in error and "importing.max_entries" in error, error
    assert run_import(engine=engine, owner_db_id=owner_db_id, paths=[path], owner=OWNER, tz=timezone.utc,
                      limits=ImportSettings(max_entries=12)).added == 1


def test_members_compressed_other_than_deflate_are_refused(tmp_path: Path) -> None:
    # bzip2 and LZMA unpack a whole block per call: a small read can produce gigabytes at once.
    path = tmp_path / "chat.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("_chat.txt", CHAT)
    with pytest.raises(ImportFormatError, match="only stored and deflated"):
        parse_file(path, owner=OWNER, tz=timezone.utc)


def test_a_zip_inside_a_zip_is_not_unpacked(tmp_path: Path) -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("_chat.txt", CHAT)
    path = tmp_path / "outer.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("_chat.txt", inner.getvalue())  # named like a chat: each level would unpack afresh
    with pytest.raises(ImportFormatError, match="a zip archive inside an archive"):
        parse_file(path, owner=OWNER, tz=timezone.utc)


def test_a_file_over_the_size_limit_is_refused_unread(engine, owner_db_id, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"word " * ((3 << 20) // 5) + b"word")  # 3 MB
    error = import_refused(engine, owner_db_id, path, SMALL)
    assert "is 3 MB" in error and "importing.max_file_mb" in error, error


@pytest.mark.parametrize(("name", "content", "line"), [
    ("notes.txt", b"first line\n\n" + b"a" * (65 << 10) + b"\n", 3),
    ("notes.md", b"# title\r\n" + b"a" * (65 << 10), 2),
    ("chat.txt", CHAT + WA_LINE.format(m=2, who="Bob", text="b" * (65 << 10)).encode(), 3),
    ("rows.jsonl", b'{"text": "ok"}\n' + json.dumps({"text": "c" * (65 << 10)}).encode() + b"\n", 2),
    ("mail.eml", b"From: Me <me@example.org>\n\n" + b"d" * (65 << 10) + b"\n", 3),
])
def test_a_line_over_the_limit_is_refused_with_its_number(name: str, content: bytes, line: int,
                                                           tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImportFormatError) as refused:
        parse_file(path, owner=OWNER, tz=timezone.utc, limits=SMALL)
    assert refused.value.location == f"line {line}" and "importing.max_line_kb" in str(refused.value)
    parse_file(path, owner=OWNER, tz=timezone.utc, limits=ImportSettings(max_line_kb=66))  # within: imported


def test_a_telegram_export_on_one_line_is_not_held_to_the_line_limit(tmp_path: Path) -> None:
    messages = [{"id": i, "type": "message", "date": "2024-01-01T10:00:00", "from": "Bob" if i % 2 else "Me",
                 "from_id": "user7" if i % 2 else "user1001", "text": f"message number {i} " * 20} for i in range(400)]
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"name": "Bob", "type": "personal_chat", "messages": messages}))  # one line, 170 KB
    assert len(parse_file(path, owner=OWNER, tz=timezone.utc, limits=SMALL).samples) == 199


@pytest.mark.parametrize("unit", ["a", "lorem ipsum dolor "])
def test_a_line_of_megabytes_is_cut_into_whole_chunks(unit: str) -> None:
    """The cut works through an offset (it sliced the rest off each time: quadratic, minutes for 50 MB)."""
    for megabytes in (1, 5):
        text = (unit * (megabytes * 1_000_000 // len(unit) + 1))[:megabytes * 1_000_000]
        chunks = chunk_paragraphs(text)
        assert all(0 < len(c) <= MAX_CHUNK_CHARS for c in chunks)
        assert "".join(chunks).replace(" ", "") == text.replace(" ", "")
        assert len(chunks) <= megabytes * 1_000_000 // (MAX_CHUNK_CHARS // 2) + 1


def test_a_line_of_megabytes_imports_when_the_limit_allows_it(tmp_path: Path) -> None:
    path = tmp_path / "one-line.txt"
    path.write_bytes(b"abcdefgh " * 600_000)  # 5.4 MB on one line
    with pytest.raises(ImporterError, match="importing.max_line_kb"):
        parse_file(path, owner=OWNER)
    parsed = parse_file(path, owner=OWNER, limits=ImportSettings(max_line_kb=8 << 10))
    assert all(MAX_CHUNK_CHARS - 10 <= len(s.text) <= MAX_CHUNK_CHARS for s in parsed.samples[:-1])
    assert sum(s.text.count("abcdefgh") for s in parsed.samples) == 600_000


def test_a_large_zip_is_read_when_its_chat_is_small(tmp_path: Path) -> None:
    """A chat exported with its media: the archive is over max_file_mb, the members parsed are not."""
    path = tmp_path / "WhatsApp Chat with Bob.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("_chat.txt", CHAT)
        archive.writestr("00000012-VIDEO-2024-03-02.mp4", bytes(3 << 20))
    assert path.stat().st_size > SMALL.max_file_mb << 20
    assert len(parse_file(path, owner=OWNER, tz=timezone.utc, limits=SMALL).samples) == 1
