"""Figures measured by the reliability tests, gathered for RELIABILITY.md.

Tests call `record(name, value)`: the figure is printed (visible with `pytest -s`) and, when
$TWIN_RELIABILITY_FIGURES names a file, appended to it as a JSON line. Nothing here asserts
timings; the figures describe a run. `python -m tests.reliability.figures` runs the reliability
tests once and prints the table that RELIABILITY.md shows.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FIGURES_ENV = "TWIN_RELIABILITY_FIGURES"


def record(name: str, value: Any, *, test: str = "") -> None:
    """Print a measured figure and append it to $TWIN_RELIABILITY_FIGURES when set."""
    print(f"\nRELIABILITY {name}: {value}")
    target = os.environ.get(FIGURES_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"name": name, "value": value, "test": test}, default=str) + "\n")


def collect(extra_args: list[str]) -> list[dict[str, Any]]:
    """Run the reliability tests with figures switched on; returns the recorded figures."""
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "figures.jsonl"
        env = {**os.environ, FIGURES_ENV: str(target)}
        tests = sorted(str(p.relative_to(root)) for p in (root / "tests" / "reliability").glob("test_reliability_*.py"))
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests,
                                 *extra_args], cwd=root, env=env)
        if result.returncode != 0:
            print(f"pytest exited with {result.returncode}", file=sys.stderr)
        if not target.exists():
            return []
        return [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    figures = collect(list(sys.argv[1:] if argv is None else argv))
    print("\n| figure | value |\n|---|---|")
    for item in figures:
        print(f"| {item['name']} | {item['value']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
