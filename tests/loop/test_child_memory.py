"""The training child reports its own peak memory, not the parent's that started it."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_a_child_does_not_inherit_the_parents_peak_memory() -> None:
    held = bytearray(800 * 2**20)
    for offset in range(0, len(held), 4096):  # touch every page: resident, not just reserved
        held[offset] = 1
    code = "from loop.child import peak_rss_mb; print(peak_rss_mb())"
    reported = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    timeout=120).stdout.strip())
    assert 0 < reported < 400, reported  # ru_maxrss would say 800+ MB here
    del held
