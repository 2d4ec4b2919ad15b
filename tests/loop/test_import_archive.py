"""Zip archives: a phone's WhatsApp export, a zipped Telegram export folder, and broken archives."""

from __future__ import annotations

import zipfile
from datetime import timezone
from pathlib import Path

import pytest

from loop.importing import ImportFormatError, OwnerIdentity, OwnerUnknownError, detect_format, parse_file, run_import
from storage.db import session_scope
from storage.repo import get_or_create_owner, writing_samples

FIXTURES = Path(__file__).parents[1] / "fixtures"
OWNER = OwnerIdentity(telegram_ids=[1001], names=["Sam Carter"])


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_whatsapp_ios_zip(tmp_path: Path):
    path = _zip(tmp_path / "WhatsApp Chat - Alice Nguyen.zip", {
        "_chat.txt": (FIXTURES / "whatsapp" / "_chat.txt").read_bytes(),
        "00000012-PHOTO-2024-03-02-21-16-05.jpg": b"\xff\xd8\xff",
    })
    assert detect_format(path) == "whatsapp"
    parsed = parse_file(path, owner=OWNER, tz=timezone.utc)
    assert parsed.format == "whatsapp" and parsed.messages == 11
    assert [s.text for s in parsed.samples] == ["obviously\nthat last goal!!", "night!", "nerd 😂"]


def test_zipped_telegram_folder_with_notes(tmp_path: Path):
    path = _zip(tmp_path / "export.zip", {
        "ChatExport_2024-03-05/result.json": (FIXTURES / "telegram_single" / "result.json").read_bytes(),
        "ChatExport_2024-03-05/photos/photo_1.jpg": b"\xff\xd8\xff",
        "__MACOSX/ChatExport_2024-03-05/._result.json": b"\x00\x05\x16\x07",
        "notes/idea.md": b"# Idea\n\nA bench that tells the time by its shadow.\n",
    })
    parsed = parse_file(path, owner=OWNER)
    assert parsed.format == "telegram+text"
    assert [s.kind.value for s in parsed.samples] == ["reply"] * 4 + ["monologue"]


def test_member_paths_never_leave_the_temporary_folder(tmp_path: Path):
    path = _zip(tmp_path / "sneaky.zip", {"../../evil.txt": b"climbing out\n",
                                         f"{tmp_path}/elsewhere/note.txt": b"just a note\n"})
    (sample,) = parse_file(path, owner=OWNER).samples  # ".." members are passed over, absolute ones kept by name
    assert sample.text == "just a note"
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_bad_member_fails_the_whole_archive_and_stores_nothing(engine, tmp_path: Path):
    path = _zip(tmp_path / "mixed.zip", {
        "a/good.jsonl": b'{"text": "a good row"}\n',
        "b/bad.jsonl": b'{"text": "fine"}\n{"text": 3}\n',
    })
    with pytest.raises(ImportFormatError) as caught:
        parse_file(path, owner=OWNER)
    assert str(caught.value) == "mixed.zip, b/bad.jsonl, line 2: 'text' must be a string"
    with session_scope(engine) as session:
        owner_id = get_or_create_owner(session=session, telegram_id=1001).id
    report = run_import(engine=engine, owner_db_id=owner_id, paths=[tmp_path], owner=OWNER, format=None, mask=True)
    assert [f.path.name for f in report.failed] == ["mixed.zip"]
    with session_scope(engine) as session:
        assert writing_samples(session=session, owner_id=owner_id) == []


def test_unknown_owner_names_the_archive(tmp_path: Path):
    path = _zip(tmp_path / "chat.zip", {"_chat.txt": (FIXTURES / "whatsapp" / "_chat.txt").read_bytes()})
    with pytest.raises(OwnerUnknownError) as caught:
        parse_file(path, owner=OwnerIdentity())
    assert str(caught.value).startswith("chat.zip: which sender is you?")


@pytest.mark.parametrize("members, content, words", [
    (None, b"PK\x03\x04 not really a zip", "not a readable zip archive"),
    ({"photo.jpg": b"\xff\xd8"}, None, "holds no chat export"),
])
def test_broken_or_empty_archives(tmp_path: Path, members, content, words):
    path = tmp_path / "upload.zip"
    if members is None:
        path.write_bytes(content)
    else:
        _zip(path, members)
    for call in (lambda: parse_file(path, owner=OWNER), lambda: detect_format(path)):
        with pytest.raises(ImportFormatError) as caught:
            call()
        assert words in str(caught.value) and str(caught.value).startswith("upload.zip: ")
