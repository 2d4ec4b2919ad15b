"""Hostile files for the importers, beyond the random and mutated ones of tests/loop/test_import_fuzz.py:
nesting deep enough to break a recursive parser, single lines of megabytes, thousands of mails,
zip members that try to leave their folder; and odd text stored exactly in the database.

Whatever the file, an import either stores samples or refuses the file with an importer error
naming it; no other exception, and a refused file stores nothing. A zip bomb at the default limits
is refused from the archive's index, in a fraction of a second and without the memory growing;
a file parsed in the child process (the bot's /import) that hangs is stopped at the time limit.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from datetime import timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from loop.config import ImportSettings
from loop.importing import ImporterError, OwnerIdentity, parse_file, run_import
from loop.importing.child import prepare_in_child
from loop.importing.runner import prepare_file
from storage import repo
from storage.db import session_scope
from tests.reliability.figures import record
from tests.loop.test_import_limits import bomb

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]

OWNER = OwnerIdentity(telegram_ids=[1001], names=["Sam Carter", "Me"], emails=["sam@example.org"])
WA = "[01/02/2024, 10:{m:02d}:00] {who}: {text}\n"


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


HOSTILE = {
    "telegram export nested 200k deep": ("result.json", b'{"messages": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"),
    "JSON Lines row nested 100k deep": ("rows.jsonl", b'{"text": "a", "context": ' + b"[" * 100_000
                                       + b"]" * 100_000 + b"}\n"),
    "chat line of 5 MB": ("chat.txt", (WA.format(m=0, who="Ann", text="a" * 5_000_000)
                                       + WA.format(m=1, who="Me", text="ok")).encode()),
    "chat line of 200k colons": ("chat.txt", b"[01/02/2024, 10:00:00] " + b"a:" * 200_000 + b"\n"),
    "markdown of 1M hashes and backticks": ("notes.md", b"#" * 1_000_000 + b"\n" + b"`" * 1_000_000),
    "html mail of 200k open tags": ("mail.eml", b"From: Sam <sam@example.org>\nContent-Type: text/html\n\n"
                                    + b"<div>" * 200_000),
    "mbox of 3000 chained replies": ("box.mbox", b"".join(
        b"From x@y Mon Jan  1 00:00:00 2024\nFrom: %s\nMessage-ID: <%d@x>\nIn-Reply-To: <%d@x>\n\nhello %d\n\n"
        % (b"Sam <sam@example.org>" if i % 2 else b"Ann <ann@example.org>", i, i - 1, i) for i in range(3000))),
    "zip member climbing out of its folder": ("export.zip", zipped({
        "../../../../tmp/evil/_chat.txt": (WA.format(m=0, who="Ann", text="hi") + WA.format(m=1, who="Me", text="yo")).encode(),
        "/etc/cron.d/_chat.txt": WA.format(m=2, who="Me", text="x").encode()})),
    "zip inside a zip": ("nested.zip", zipped({"inner.zip": zipped({"_chat.txt": b"x" * 100})})),
    "UTF-16 text without BOM": ("notes.txt", "hello there, this is me".encode("utf-16-le")),
    "NUL bytes in a chat": ("chat.txt", (WA.format(m=0, who="Ann", text="a\x00b")
                                         + WA.format(m=1, who="Me", text="c\x00d")).encode()),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_files_are_parsed_or_refused_with_an_importer_error(case: str, tmp_path: Path) -> None:
    name, data = HOSTILE[case]
    path = tmp_path / "upload" / name
    path.parent.mkdir()
    path.write_bytes(data)
    before = {p for p in Path("/tmp").glob("evil")} if Path("/tmp").exists() else set()
    try:
        parsed = parse_file(path, owner=OWNER, tz=timezone.utc)
    except ImporterError as error:
        assert name in str(error)  # the message names the file
    else:
        assert all(s.text.strip() and "\x00" not in s.text for s in parsed.samples)
    assert {p for p in Path("/tmp").glob("evil")} == before, "an archive member left its folder"


ODD_SAMPLES = ["مرحبا 👋🏽 שלום", "e\u0301 z\u0336 \u200b\u2060", ("𝔘𝔫𝔦𝔠𝔬𝔡𝔢 " * 50).strip(), "tab\there\r\nnewline",
               "quote \" and ' and \\ backslash", "<b>markup</b> *bold* `code`", "x" * 20_000]


def test_odd_text_is_stored_exactly_through_an_import(engine: Engine, tmp_path: Path) -> None:
    lines = []
    for index, text in enumerate(ODD_SAMPLES):
        lines.append(json.dumps({"prompt": f"message {index}", "text": text}))
    lines.append('{"prompt": "with a NUL", "text": "before\\u0000after"}')
    path = tmp_path / "odd.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with session_scope(engine) as session:
        owner_id = repo.get_or_create_owner(session=session, telegram_id=1001).id
    report = run_import(engine=engine, owner_db_id=owner_id, paths=[path], owner=OWNER, format=None, mask=False)
    assert report.ok, report.failed
    with session_scope(engine) as session:
        stored = [s.text for s in repo.writing_samples(session=session, owner_id=owner_id)]
    assert sorted(stored) == sorted([*ODD_SAMPLES, "beforeafter"])  # NUL dropped: PostgreSQL refuses it
    record("bad input: hostile importer files tried (parsed or refused cleanly)", len(HOSTILE))


# Imports the file given in a fresh process and prints what it cost: the figures are this process's
# own (VmHWM), not the test runner's.
IMPORT_AND_MEASURE = """
import json, sys, time
from pathlib import Path
from loop.child import peak_rss_mb
from loop.importing import OwnerIdentity, run_import
from storage.db import open_database, session_scope
from storage.repo import get_or_create_owner, writing_samples

engine = open_database(sys.argv[1])
with session_scope(engine) as session:
    owner_id = get_or_create_owner(session=session, telegram_id=1001).id
before, started = peak_rss_mb(), time.perf_counter()
report = run_import(engine=engine, owner_db_id=owner_id, paths=[Path(sys.argv[2])], owner=OwnerIdentity(names=["Me"]))
seconds = time.perf_counter() - started
with session_scope(engine) as session:
    stored = len(writing_samples(session=session, owner_id=owner_id))
print(json.dumps({"error": report.failed[0].error if report.failed else None, "stored": stored,
                  "seconds": round(seconds, 2), "growth_mb": round(peak_rss_mb() - before, 1)}))
"""


def import_in_a_process(database_url: str, path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", IMPORT_AND_MEASURE, database_url, str(path)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_zip_bomb_at_the_default_limits_is_refused_at_once_and_in_bounded_memory(database_url: str,
                                                                                   tmp_path: Path) -> None:
    # 300 MB unpacked in two members of 150 MB (each within importing.max_file_mb), 300 KB packed.
    path = bomb(tmp_path / "WhatsApp Chat with Bob.zip", {"WhatsApp Chat with Bob.txt": 150 << 20,
                                                          "_chat.txt": 150 << 20})
    measured = import_in_a_process(database_url, path)
    assert measured["stored"] == 0
    assert "unpacks to 300 MB" in measured["error"] and "importing.max_unpacked_mb" in measured["error"]
    assert measured["growth_mb"] < 50, measured  # nothing of the 300 MB was held
    record("bad input: zip bomb at the default limits (300 MB unpacked, 300 KB packed)",
           f"refused from its index in {measured['seconds']} s, memory +{measured['growth_mb']} MB")


def test_the_child_gives_the_samples_parsing_here_gives() -> None:
    options = {"owner": OwnerIdentity(telegram_ids=[1001], names=["Sam Carter"], emails=["sam@example.org"]),
               "format": None, "max_gap": timedelta(hours=12), "tz": timezone.utc, "limits": ImportSettings(),
               "mask": True}
    for path in (FIXTURES / "telegram_full" / "result.json", FIXTURES / "email" / "inbox.mbox"):
        here, there = prepare_file(path, **options), prepare_in_child(path, **options)
        assert (there.format, there.messages, there.skipped) == (here.format, here.messages, here.skipped)
        assert [s.model_dump() for s in there.samples] == [s.model_dump() for s in here.samples]


def test_a_file_whose_parsing_hangs_is_stopped_at_the_time_limit(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "chat.txt"
    os.mkfifo(path)  # opening it for reading waits for a writer that never comes
    with session_scope(engine) as session:
        owner_id = repo.get_or_create_owner(session=session, telegram_id=1001).id
    report = run_import(engine=engine, owner_db_id=owner_id, paths=[path], owner=OWNER,
                        limits=ImportSettings(child_timeout_s=3), prepare=prepare_in_child)
    assert "took longer than 3 s" in report.failed[0].error and "importing.child_timeout_s" in report.failed[0].error
