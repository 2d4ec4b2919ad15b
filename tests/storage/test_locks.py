"""Named locks (storage.locks): the row on SQLite, an advisory lock on PostgreSQL that the server
frees when its holder dies."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage import locks
from storage.db import open_database

ROOT = Path(__file__).resolve().parents[2]


def test_a_held_lock_refuses_a_second_holder_until_released(engine):
    first = locks.try_lock(engine, "cycle:1", "here:1:a")
    assert first is not None
    assert locks.try_lock(engine, "cycle:1", "here:2:b", holder_alive=lambda holder: True) is None
    assert locks.try_lock(engine, "cycle:2", "here:2:b") is not None  # another name is another lock
    assert locks.describe(engine, "cycle:1").holder == "here:1:a"
    locks.release(engine, first)
    assert locks.describe(engine, "cycle:1") is None
    again = locks.try_lock(engine, "cycle:1", "here:2:b")
    assert again is not None
    locks.release(engine, again)


def test_on_sqlite_the_row_of_a_dead_holder_is_taken_over(tmp_path):
    engine = open_database(f"sqlite:///{tmp_path / 'twin.db'}")
    assert locks.try_lock(engine, "cycle", "here:1:a") is not None
    assert locks.try_lock(engine, "cycle", "here:2:b", holder_alive=lambda holder: holder != "here:1:a") is not None
    assert locks.describe(engine, "cycle").holder == "here:2:b"


HOLDER = """
import sys, time
from storage import locks
from storage.db import create_db_engine
engine = create_db_engine(sys.argv[1])
assert locks.try_lock(engine, "cycle:9", "elsewhere:1:x") is not None
print("held", flush=True)
time.sleep(120)
"""


def test_on_postgresql_a_killed_holder_frees_the_lock_at_once(engine, database_url):
    if engine.dialect.name != "postgresql":
        pytest.skip("advisory locks are PostgreSQL's")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, database_url], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        # Its row says "another host": on SQLite that would wait hours; here the advisory lock decides.
        assert locks.try_lock(engine, "cycle:9", "here:1:a") is None
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    taken = None
    while taken is None and time.monotonic() < deadline:
        taken = locks.try_lock(engine, "cycle:9", "here:1:a")
        time.sleep(0.1)
    assert taken is not None and locks.describe(engine, "cycle:9").holder == "here:1:a"
    locks.release(engine, taken)
