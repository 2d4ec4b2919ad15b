"""run_import end to end on a real database: storing, re-importing, masking, failed files, the report."""

from __future__ import annotations

import json
import shutil
from datetime import timezone
from pathlib import Path

import pytest
from rich.console import Console

from loop.config import Config
from loop.importing import (
    KNOWN_FORMATS,
    ImportFormatError,
    OwnerIdentity,
    detect_format,
    iter_input_files,
    render_report,
    run_import,
)
from loop.importing.runner import mask_sample
from storage.db import session_scope
from storage.models import WritingSampleCreate
from storage.repo import get_or_create_owner, writing_samples

FIXTURES = Path(__file__).parents[1] / "fixtures"
OWNER = OwnerIdentity(telegram_ids=[1001], names=["Sam Carter"], emails=["sam@example.org"])


@pytest.fixture
def owner_db_id(engine) -> int:
    with session_scope(engine) as session:
        return get_or_create_owner(session=session, telegram_id=1001, name="Sam").id


def _stored(engine, owner_db_id: int):
    with session_scope(engine) as session:
        return writing_samples(session=session, owner_id=owner_db_id)


def _import(engine, owner_db_id, paths, **kwargs):
    options = {"owner": OWNER, "format": None, "mask": True, "tz": timezone.utc, **kwargs}
    return run_import(engine=engine, owner_db_id=owner_db_id, paths=paths, **options)


def test_import_everything_then_reimport_adds_nothing(engine, owner_db_id):
    calls: list[tuple[int, int]] = []
    report = _import(engine, owner_db_id, [FIXTURES], progress=lambda done, total: calls.append((done, total)))
    assert report.ok
    counts = {f.path.relative_to(FIXTURES).as_posix(): (f.format, f.parsed, f.added) for f in report.files}
    assert counts == {
        "email/inbox.mbox": ("email", 4, 4),
        "email/reply.eml": ("email", 1, 1),
        "samples.jsonl": ("jsonl", 4, 4),
        "telegram_full/result.json": ("telegram", 5, 5),
        "telegram_single/result.json": ("telegram", 4, 4),
        "whatsapp/WhatsApp Chat with Alice Nguyen.txt": ("whatsapp", 3, 3),
        "whatsapp/_chat.txt": ("whatsapp", 3, 3),
        "writing/journal.txt": ("text", 2, 2),
        "writing/posts/first-post.md": ("text", 1, 1),
    }
    assert report.added == 27 and report.duplicates == 0
    assert len(_stored(engine, owner_db_id)) == 27
    total = calls[0][1]
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)

    again = _import(engine, owner_db_id, [FIXTURES])
    assert again.ok and again.added == 0 and again.duplicates == 27
    assert len(_stored(engine, owner_db_id)) == 27


def test_personal_data_is_masked_unless_switched_off(engine, owner_db_id):
    single = FIXTURES / "telegram_single" / "result.json"
    _import(engine, owner_db_id, [single])
    prompts = {s.prompt for s in _stored(engine, owner_db_id)}
    assert "my new number is [phone] and email [email]" in prompts
    assert not any("alice@example.com" in (p or "") for p in prompts)

    report = _import(engine, owner_db_id, [single], mask=False)
    assert report.added == 1  # only the sample whose text differs unmasked
    prompts = {s.prompt for s in _stored(engine, owner_db_id)}
    assert "my new number is +44 7700 900123 and email alice@example.com" in prompts


def test_masking_reaches_context_and_jsonl_replies(engine, owner_db_id):
    _import(engine, owner_db_id, [FIXTURES / "samples.jsonl", FIXTURES / "whatsapp"])
    stored = _stored(engine, owner_db_id)
    texts = {s.text for s in stored}
    assert "yes that one, call me on [phone]" in texts
    assert "ok great\ncall me at [phone] if anything" in {s.prompt for s in stored}


def test_mask_sample_covers_every_field():
    sample = WritingSampleCreate(kind="reply", text="mine: +44 7700 900123", prompt="yours: a@b.example",
                                 sender="+1 415 555 0132",
                                 context=[{"role": "other", "text": "card 4111 1111 1111 1111", "sender": "x@y.example"}])
    masked = mask_sample(sample)
    assert (masked.text, masked.prompt, masked.sender) == ("mine: [phone]", "yours: [email]", "[phone]")
    assert masked.context == [{"role": "other", "text": "card [card]", "sender": "[email]"}]
    assert sample.text == "mine: +44 7700 900123"  # the original is not changed


def _broken_telegram(tmp_path: Path) -> Path:
    """A valid export whose last message is malformed: all earlier messages parse fine."""
    data = json.loads((FIXTURES / "telegram_single" / "result.json").read_text(encoding="utf-8"))
    data["messages"][-1]["text"] = {"oops": True}
    path = tmp_path / "broken" / "result.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_failed_file_stores_nothing_and_others_still_import(engine, owner_db_id, tmp_path: Path):
    broken = _broken_telegram(tmp_path)
    bad_jsonl = tmp_path / "rows.jsonl"
    bad_jsonl.write_text('{"text": "first row is fine"}\n{"text": \n', encoding="utf-8")
    report = _import(engine, owner_db_id, [broken, FIXTURES / "whatsapp" / "_chat.txt", bad_jsonl,
                                           tmp_path / "missing.txt"])
    assert not report.ok
    failed = {f.path.name: f.error for f in report.failed}
    assert failed == {
        "result.json": "result.json, message 122: 'text' must be a string or a list of entities",
        "rows.jsonl": "rows.jsonl, line 2, column 10: not valid JSON (Expecting value)",
        "missing.txt": "missing.txt: no such file",
    }
    stored = _stored(engine, owner_db_id)
    assert {s.source for s in stored} == {"whatsapp:_chat.txt"} and len(stored) == 3
    assert report.added == 3


def test_unknown_owner_is_a_failed_file(engine, owner_db_id):
    report = _import(engine, owner_db_id, [FIXTURES / "whatsapp" / "_chat.txt"], owner=OwnerIdentity())
    (entry,) = report.files
    assert not report.ok and "--me NAME" in entry.error and entry.format == "whatsapp"
    assert _stored(engine, owner_db_id) == []


def test_forced_format_that_does_not_fit(engine, owner_db_id):
    report = _import(engine, owner_db_id, [FIXTURES / "telegram_single" / "result.json"], format="whatsapp")
    assert report.files[0].error.startswith("result.json, line 1: not a WhatsApp message line")


def test_render_report_names_files_reasons_and_errors(engine, owner_db_id, tmp_path: Path):
    report = _import(engine, owner_db_id, [FIXTURES / "telegram_single", _broken_telegram(tmp_path)])
    console = Console(record=True, width=250)
    console.print(render_report(report))
    out = console.export_text()
    assert "telegram_single/result.json" in out and "2 service message" in out and "4 sticker or media" in out
    assert "error: result.json, message 122" in out
    assert "total" in out


def test_render_report_shows_brackets_as_written(engine, owner_db_id, tmp_path: Path):
    path = tmp_path / "[old] chat.txt"
    path.write_text("not a chat line\n", encoding="utf-8")
    report = _import(engine, owner_db_id, [path], format="whatsapp")
    console = Console(record=True, width=400)
    console.print(render_report(report))
    out = console.export_text()
    assert "[old] chat.txt" in out and "'[31/12/2023, 23:59:59] Name: text'" in out


@pytest.mark.parametrize("relative, expected", [
    ("telegram_single/result.json", "telegram"),
    ("whatsapp/_chat.txt", "whatsapp"),
    ("whatsapp/WhatsApp Chat with Alice Nguyen.txt", "whatsapp"),
    ("writing/journal.txt", "text"),
    ("writing/posts/first-post.md", "text"),
    ("email/inbox.mbox", "email"),
    ("email/reply.eml", "email"),
    ("samples.jsonl", "jsonl"),
])
def test_detect_by_extension_and_content(tmp_path: Path, relative: str, expected: str):
    assert detect_format(FIXTURES / relative) == expected
    # Without a telling extension the content decides (text is never guessed).
    if expected != "text":
        bare = tmp_path / "upload.bin"
        shutil.copy(FIXTURES / relative, bare)
        assert detect_format(bare) == expected


def test_detect_refuses_unknown_content(tmp_path: Path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 binary")
    with pytest.raises(ImportFormatError) as caught:
        detect_format(path)
    assert str(caught.value) == f"photo.jpg: unknown format; name it with --format, one of {', '.join(KNOWN_FORMATS)}"


def test_iter_input_files_walks_folders(tmp_path: Path):
    mbox = tmp_path / "Mail" / "Sent"
    mbox.parent.mkdir()
    mbox.write_bytes(b"From x@y Mon Jan  1 00:00:00 2024\nFrom: x@y\n\nhi\n")
    (tmp_path / "Mail" / "index").write_bytes(b"\x00\x01")
    files = iter_input_files([FIXTURES / "writing", FIXTURES / "writing" / "journal.txt", tmp_path / "Mail",
                              tmp_path / "nope.txt"])
    names = [f.name for f in files]
    assert names == ["journal.txt", "first-post.md", "Sent", "nope.txt"]  # no hidden draft, no cover.jpg


def test_owner_identity_from_config():
    config = Config(owners=[1001], owner_names=["Sam Carter"], owner_emails=["sam@work.example"])
    identity = OwnerIdentity.from_config(config, names=["Sam"], emails=["sam@example.org"])
    assert identity == OwnerIdentity(telegram_ids=[1001], names=["Sam Carter", "Sam"],
                                     emails=["sam@work.example", "sam@example.org"])
