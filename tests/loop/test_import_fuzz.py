"""Fuzzing the importers: random, mutated, truncated, re-encoded and oversized inputs.

Whatever the bytes, a parser either returns samples or raises one of the importers' own errors
(ImportFormatError, or OwnerUnknownError when the file is fine but the owner is not in it);
never another exception. Through `run_import`, a file that fails stores nothing.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from datetime import timezone
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loop.importing import KNOWN_FORMATS, ImporterError, OwnerIdentity, parse_file, run_import
from storage.db import session_scope
from storage.repo import get_or_create_owner, writing_samples

FIXTURES = Path(__file__).parents[1] / "fixtures"
FIXTURE_FILES = sorted(p for p in FIXTURES.rglob("*") if p.is_file() and p.suffix != ".jpg"
                       and not p.name.startswith("."))
OWNER = OwnerIdentity(telegram_ids=[1001], names=["Sam Carter", "Me"], emails=["sam@example.org"])
FUZZ = settings(max_examples=80, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def mutations(draw, original: bytes) -> bytes:
    """`original` with one to three random edits: cuts, insertions, replacements, re-encodings, huge lines."""
    data = original
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["truncate", "delete", "insert", "replace", "duplicate", "huge", "encode"]))
        if kind == "truncate":
            data = data[:at]
        elif kind == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 200)):]
        elif kind == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=40)) + data[at:]
        elif kind == "replace" and data:
            at = min(at, len(data) - 1)
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
        elif kind == "duplicate":
            data = data[:at] + data[max(0, at - 300):at] + data[at:]
        elif kind == "huge":
            unit = draw(st.sampled_from([b"a", b"ab ", b"9", b"[", b"{", b"> ", b"\xe2\x80\x8e", b"a@b.c ", b"0 "]))
            data = data[:at] + unit * draw(st.integers(1000, 60_000)) + data[at:]
        elif kind == "encode":
            encoding = draw(st.sampled_from(["latin-1", "utf-16-le", "utf-16", "cp1251", "utf-32"]))
            data = data.decode("utf-8", "replace").encode(encoding, "replace")
    return data


def _parse_bytes(data: bytes, name: str, format: str | None):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        return parse_file(path, owner=OWNER, format=format, tz=timezone.utc)


def _only_importer_errors(data: bytes, name: str, format: str | None) -> None:
    try:
        parsed = _parse_bytes(data, name, format)
    except ImporterError as error:
        assert str(error)  # a message the CLI can print
        return
    for sample in parsed.samples:
        assert sample.text.strip()
        assert sample.written_at is None or sample.written_at.tzinfo is not None


@FUZZ
@given(data=st.data(), index=st.integers(0, len(FIXTURE_FILES) - 1),
       format=st.sampled_from([None, *KNOWN_FORMATS]))
def test_mutated_fixtures_raise_only_importer_errors(data, index, format):
    original = FIXTURE_FILES[index]
    _only_importer_errors(data.draw(mutations(original.read_bytes())), original.name, format)


@FUZZ
@given(raw=st.binary(max_size=3000) | st.text(max_size=2000).map(lambda t: t.encode("utf-8", "surrogatepass")),
       name=st.sampled_from(["result.json", "chat.txt", "notes.md", "box.mbox", "mail.eml", "rows.jsonl", "blob"]),
       format=st.sampled_from([None, *KNOWN_FORMATS]))
def test_random_bytes_raise_only_importer_errors(raw, name, format):
    _only_importer_errors(raw, name, format)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
ENTITY = st.fixed_dictionaries({"type": st.sampled_from(["bold", "link", "text_link", "mention"]),
                                "text": st.text(max_size=10)}) | JSON_VALUES


def _field(plausible):
    return st.one_of(plausible, JSON_VALUES)


TELEGRAM_MESSAGE = st.fixed_dictionaries({}, optional={
    "id": _field(st.integers(-5, 10**6)),
    "type": _field(st.sampled_from(["message", "service"])),
    "date": _field(st.sampled_from(["2024-01-01T10:00:00", "2024-13-01T10:00:00", "0001-01-01T00:00:00"])),
    "date_unixtime": _field(st.integers(-10**12, 10**12).map(str)),
    "from": _field(st.sampled_from(["Sam Carter", "Alice"])),
    "from_id": _field(st.sampled_from(["user1001", "user2002", "channel1"])),
    "text": _field(st.lists(st.text(max_size=10) | ENTITY, max_size=4)),
    "forwarded_from": JSON_VALUES,
    "media_type": JSON_VALUES,
})
TELEGRAM_CHAT = st.fixed_dictionaries({"messages": _field(st.lists(TELEGRAM_MESSAGE, max_size=8))}, optional={
    "type": _field(st.sampled_from(["personal_chat", "private_group", "saved_messages", "public_channel"])),
    "id": JSON_VALUES,
})
TELEGRAM_EXPORT = TELEGRAM_CHAT | st.fixed_dictionaries({"chats": _field(st.fixed_dictionaries(
    {"list": _field(st.lists(TELEGRAM_CHAT | JSON_VALUES, max_size=3))}))}, optional={
    "personal_information": _field(st.fixed_dictionaries({"user_id": _field(st.integers())})),
    "left_chats": JSON_VALUES,
}) | JSON_VALUES


@FUZZ
@given(export=TELEGRAM_EXPORT)
def test_generated_telegram_exports_raise_only_importer_errors(export):
    _only_importer_errors(json.dumps(export).encode("utf-8"), "result.json", None)


WHATSAPP_LINE = st.one_of(
    st.builds(
        "{open}{d1}{sep}{d2}{sep}{d3}, {h}:{m:02d}{ampm}{close}{name}{text}".format_map,
        st.fixed_dictionaries({
            "open": st.sampled_from(["", "[", "\u200e["]),
            "d1": st.integers(0, 40), "d2": st.integers(0, 40), "d3": st.sampled_from([0, 24, 2024, 999, 12345]),
            "sep": st.sampled_from(["/", ".", "-"]), "h": st.integers(0, 30), "m": st.integers(0, 99),
            "ampm": st.sampled_from(["", " PM", "\u202fAM", " p.m."]),
            "close": st.sampled_from(["] ", " - ", " "]),
            "name": st.sampled_from(["Me: ", "Ann: ", "Ann changed the subject", "Me:", ""]),
            "text": st.text(max_size=30) | st.sampled_from(["<Media omitted>", "\u200eimage omitted",
                                                            "This message was deleted"]),
        })),
    st.text(max_size=40),
)


@FUZZ
@given(lines=st.lists(WHATSAPP_LINE, max_size=12))
def test_generated_whatsapp_chats_raise_only_importer_errors(lines):
    _only_importer_errors("\n".join(lines).encode("utf-8", "surrogatepass"), "chat.txt", "whatsapp")


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), index=st.integers(0, len(FIXTURE_FILES) - 1))
def test_run_import_never_stores_part_of_a_failed_file(engine, data, index):
    original = FIXTURE_FILES[index]
    mutated = data.draw(mutations(original.read_bytes()))
    with session_scope(engine) as session:
        owner_id = get_or_create_owner(session=session, telegram_id=1001).id
        before = len(writing_samples(session=session, owner_id=owner_id))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / original.name
        path.write_bytes(mutated)
        report = run_import(engine=engine, owner_db_id=owner_id, paths=[path], owner=OWNER, format=None, mask=True)
    with session_scope(engine) as session:
        after = len(writing_samples(session=session, owner_id=owner_id))
    (entry,) = report.files
    if entry.error:
        assert after == before and entry.added == 0
    else:
        assert after - before == entry.added and entry.added + entry.duplicates == entry.parsed


HEADER_VALUES = st.sampled_from([
    "=?utf-8?q?=E2?=", "=?x-unknown?b?AAAA?=", "Mon, 99 Foo 99999 99:99:99", "Tue, 05 Mar 2024 10:00:00 +9999",
    "multipart/mixed", 'multipart/alternative; boundary=""', "text/html; charset=unknown-8bit",
    'text/plain; charset="utf-8"; charset=x', '"unterminated', "<<<<", "a@b@c", "Sam <sam@example.org>", "<a1@x>",
    "base64", "quoted-printable", "x-uuencode", "", "=?utf-8?b?" + "A" * 50, "(comment", "message/rfc822", "Sent",
]) | st.text(max_size=30)
MAIL_HEADER = st.tuples(st.sampled_from(["From", "To", "Date", "Message-ID", "In-Reply-To", "References",
                                         "Content-Type", "Content-Transfer-Encoding", "X-Gmail-Labels"]),
                        HEADER_VALUES)
MAIL_BODY = st.sampled_from(["hello\n", "--\n", "=C3=\n", "SGVsbG8=\n", "<p>x</p><blockquote>q",
                             "--b\nContent-Type: text/plain\n\nhi\n--b--\n", "<!x><![CDATA[ <?x <a b='"]) \
    | st.text(max_size=100)


@FUZZ
@given(mails=st.lists(st.tuples(st.lists(MAIL_HEADER, max_size=8), MAIL_BODY), min_size=1, max_size=4),
       mbox=st.booleans())
def test_generated_mails_raise_only_importer_errors(mails, mbox):
    texts = ["".join(f"{key}: {value}\n" for key, value in headers) + "\n" + body for headers, body in mails]
    if mbox:
        data = "".join(f"From x@y Mon Jan  1 00:00:00 2024\n{text}\n" for text in texts)
    else:
        data = texts[0]
    _only_importer_errors(data.encode("utf-8", "surrogatepass"), "box.mbox" if mbox else "mail.eml", "email")


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("_chat.txt", (FIXTURES / "whatsapp" / "_chat.txt").read_bytes())
        archive.writestr("export/result.json", (FIXTURES / "telegram_full" / "result.json").read_bytes())
    return buffer.getvalue()


ZIP_BYTES = _zip_bytes()


@FUZZ
@given(data=st.data(), format=st.sampled_from([None, *KNOWN_FORMATS]))
def test_mutated_archives_raise_only_importer_errors(data, format):
    _only_importer_errors(data.draw(mutations(ZIP_BYTES)), "chat.zip", format)
