"""Parsing a file in a child process with a memory limit, both sides: `prepare_in_child` (the
parent, the bot's /import) and `main` (the child, `python -m loop.importing.child`).

An upload is whatever someone sent: a zip bomb, a line of megabytes, JSON that swells to
gigabytes in memory. The limits of `importing` refuse the shapes we know; this is for the ones we
do not. The child parses and masks one file (`prepare_file`) under `RLIMIT_AS` =
`importing.child_memory_mb` and is stopped after `importing.child_timeout_s`; if it runs out of
memory, crashes or hangs, the import of that file fails with a message that names the limit, and
the bot goes on. The child never sees the database or the bot token: the job comes on its stdin
(plain JSON), the samples go back on its stdout, and the parent stores them (runner.run_import),
so "saved" is said only after the parent's commit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import resource
import signal
import subprocess
import sys
import time
from datetime import timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

from loop.child import child_environment, die_with_parent, peak_rss_mb
from loop.config import ImportSettings
from loop.importing.base import ImporterError, OwnerIdentity, ParsedFile
from storage.models import WritingSampleCreate

logger = logging.getLogger("loop.importing.child")  # not __name__: run with -m, that is "__main__"

EXIT_OUT_OF_MEMORY = 3
STDERR_TAIL_CHARS = 600


def _tz_to_json(tz: tzinfo | None) -> dict[str, Any] | None:
    if tz is None:
        return None
    key = getattr(tz, "key", None)  # a ZoneInfo
    if isinstance(key, str):
        return {"zone": key}
    offset = tz.utcoffset(None)
    return {"offset_s": offset.total_seconds() if offset is not None else 0.0}


def _tz_from_json(data: dict[str, Any] | None) -> tzinfo | None:
    if data is None:
        return None
    if "zone" in data:
        from zoneinfo import ZoneInfo

        return ZoneInfo(data["zone"])
    return timezone(timedelta(seconds=data["offset_s"]))


def _memory_message(path: Path, limits: ImportSettings) -> str:
    return (f"{path.name}: parsing it needed more than the {limits.child_memory_mb} MB of memory an import may use "
            "(importing.child_memory_mb in config.toml)")


def prepare_in_child(path: Path, *, owner: OwnerIdentity, format: str | None, max_gap: timedelta,
                     tz: tzinfo | None, limits: ImportSettings, mask: bool) -> ParsedFile:
    """`runner.prepare_file` run in a child process; raises ImporterError when the child refuses
    the file, or runs out of memory or time, or dies."""
    path = Path(path)
    job = {"path": str(path.resolve()), "owner": dataclasses.asdict(owner), "format": format,
           "max_gap_s": max_gap.total_seconds(), "tz": _tz_to_json(tz), "limits": dataclasses.asdict(limits),
           "mask": mask}
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "loop.importing.child"], input=json.dumps(job).encode(),
                              capture_output=True, env=child_environment(), timeout=limits.child_timeout_s)
    except subprocess.TimeoutExpired:  # subprocess.run has killed it
        raise ImporterError(path, f"{path.name}: parsing it took longer than {limits.child_timeout_s} s "
                                  "(importing.child_timeout_s in config.toml)") from None
    result = _result(done.stdout)
    stderr = done.stderr.decode("utf-8", "replace")
    if result is None or done.returncode not in (0, EXIT_OUT_OF_MEMORY):
        logger.warning("import child for %s ended with %s; stderr: %s", path, done.returncode,
                       stderr[-STDERR_TAIL_CHARS:])
        if done.returncode in (EXIT_OUT_OF_MEMORY, -signal.SIGKILL, -signal.SIGABRT) or "MemoryError" in stderr \
                or "Cannot allocate memory" in stderr:
            raise ImporterError(path, _memory_message(path, limits))
        last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
        raise ImporterError(path, f"{path.name}: the import process failed (exit status {done.returncode})"
                                  + (f": {last[-200:]}" if last else ""))
    logger.info("import child for %s: %.1f s, peak memory %s MB", path, time.perf_counter() - started,
                result.get("peak_rss_mb"))
    if "error" in result:
        error = ImporterError(path, result["error"])
        error.format = result.get("format")
        raise error
    parsed = ParsedFile(path=path, format=result["format"], messages=result["messages"],
                        samples=[WritingSampleCreate.model_validate(s) for s in result["samples"]])
    parsed.skipped.update(result["skipped"])
    return parsed


def _result(stdout: bytes) -> dict[str, Any] | None:
    try:
        result = json.loads(stdout)
    except ValueError:
        return None
    return result if isinstance(result, dict) else None


def _limit_memory(megabytes: int) -> None:
    """Cap this process's address space; a hard limit already lower is kept."""
    wanted = megabytes << 20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))
    except (ValueError, OSError) as error:  # e.g. macOS refuses RLIMIT_AS: parse without the cap
        logger.warning("cannot limit the import's memory (%s)", error)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Parse and mask the job's file; the result as plain JSON (samples as dicts, or the error)."""
    from loop.importing.runner import prepare_file

    path = Path(job["path"])
    limits = ImportSettings(**job["limits"])
    try:
        parsed = prepare_file(path, owner=OwnerIdentity(**job["owner"]), format=job["format"],
                              max_gap=timedelta(seconds=job["max_gap_s"]), tz=_tz_from_json(job["tz"]),
                              limits=limits, mask=job["mask"])
    except ImporterError as error:
        return {"error": str(error), "format": error.format}
    return {"format": parsed.format, "messages": parsed.messages, "skipped": dict(parsed.skipped),
            "samples": [s.model_dump(mode="json") for s in parsed.samples]}


def main() -> int:
    die_with_parent()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    job = json.loads(sys.stdin.buffer.read())
    limits = ImportSettings(**job["limits"])
    _limit_memory(limits.child_memory_mb)  # the address space mapped already (interpreter, imports) counts too
    try:
        result = run_job(job)
    except MemoryError:
        result, status = {"error": _memory_message(Path(job["path"]), limits)}, EXIT_OUT_OF_MEMORY
    else:
        status = 0
    result["peak_rss_mb"] = peak_rss_mb()
    sys.stdout.buffer.write(json.dumps(result).encode("ascii"))  # ASCII: whatever the locale of the pipe
    sys.stdout.flush()
    return status


if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses
    sys.exit(main())
