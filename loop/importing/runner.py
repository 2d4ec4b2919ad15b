"""`run_import`: parse each file, mask personal data, store its samples in a transaction of its own.

A file that fails to parse, or breaks a limit of `importing` in config.toml, stores nothing and
is marked in the report; the other files still import (the CLI then exits non-zero).
Re-importing adds nothing: storage skips samples whose content hash it already holds.
`prepare_file` is the part before storing (parse and mask); the bot has it done in a child
process (loop.importing.child). `render_report` is the summary table the CLI and the bot show.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta, tzinfo
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import Engine

from loop.config import ImportSettings
from loop.importing.base import ImporterError, OwnerIdentity, ParsedFile
from loop.importing.detect import detect_format, iter_input_files, parse_file
from loop.importing.masking import mask_personal_data
from storage.db import session_scope
from storage.models import WritingSampleCreate
from storage.repo import add_writing_samples

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


@dataclass
class FileReport:
    path: Path
    format: str | None = None
    parsed: int = 0  # samples the file yielded
    added: int = 0
    duplicates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ImportReport:
    files: list[FileReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)

    @property
    def failed(self) -> list[FileReport]:
        return [f for f in self.files if not f.ok]

    @property
    def added(self) -> int:
        return sum(f.added for f in self.files)

    @property
    def duplicates(self) -> int:
        return sum(f.duplicates for f in self.files)

    @property
    def parsed(self) -> int:
        return sum(f.parsed for f in self.files)

    @property
    def skipped(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for file in self.files:
            total.update(file.skipped)
        return dict(total)


def mask_sample(sample: WritingSampleCreate) -> WritingSampleCreate:
    """The sample with personal data masked in its text, prompt, context and sender."""
    return sample.model_copy(update={
        "text": mask_personal_data(sample.text),
        "prompt": mask_personal_data(sample.prompt) if sample.prompt else sample.prompt,
        "sender": mask_personal_data(sample.sender) if sample.sender else sample.sender,
        "context": [{**turn, "text": mask_personal_data(turn["text"]),
                     "sender": mask_personal_data(turn["sender"]) if turn.get("sender") else turn.get("sender")}
                    for turn in sample.context],
    })


def prepare_file(path: Path, *, owner: OwnerIdentity, format: str | None, max_gap: timedelta, tz: tzinfo | None,
                 limits: ImportSettings, mask: bool) -> ParsedFile:
    """Everything of importing one file but storing it: parsed, and masked when `mask`."""
    try:
        parsed = parse_file(path, owner=owner, format=format, max_gap=max_gap, tz=tz, limits=limits)
    except ImporterError as error:
        error.format = format or _format_or_none(path, limits)
        raise
    if mask:
        parsed.samples = [mask_sample(s) for s in parsed.samples]
    return parsed


class Prepare(Protocol):
    def __call__(self, path: Path, *, owner: OwnerIdentity, format: str | None, max_gap: timedelta,
                 tz: tzinfo | None, limits: ImportSettings, mask: bool) -> ParsedFile: ...


def _size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0


def _format_or_none(path: Path, limits: ImportSettings) -> str | None:
    try:
        return detect_format(path, limits)
    except ImporterError:
        return None


def run_import(*, engine: Engine, owner_db_id: int, paths: Sequence[Path], owner: OwnerIdentity,
               format: str | None = None, mask: bool = True, progress: ProgressCallback | None = None,
               max_gap: timedelta = timedelta(hours=12), tz: tzinfo | None = None,
               limits: ImportSettings | None = None, prepare: Prepare = prepare_file) -> ImportReport:
    """Import every file under `paths`; each file commits alone, a failed one stores nothing.

    `prepare` parses and masks one file (`prepare_file` here, or in a child process)."""
    limits = limits or ImportSettings()
    files = iter_input_files(paths)
    sizes = [_size(path) for path in files]
    total, done = sum(sizes), 0
    report = ImportReport()
    if progress:
        progress(0, total)
    for path, size in zip(files, sizes):
        entry = FileReport(path=path, format=format)
        report.files.append(entry)
        try:
            parsed = prepare(path, owner=owner, format=format, max_gap=max_gap, tz=tz, limits=limits, mask=mask)
        except ImporterError as error:
            entry.error, entry.format = str(error), error.format
            logger.warning("import of %s failed: %s", path, error)
        else:
            entry.format = parsed.format
            entry.parsed, entry.skipped = len(parsed.samples), dict(parsed.skipped)
            with session_scope(engine) as session:
                entry.added, entry.duplicates = add_writing_samples(session=session, owner_id=owner_db_id,
                                                                    samples=parsed.samples)
            logger.info("%s: %d samples, %d added, %d duplicates", path, entry.parsed, entry.added,
                        entry.duplicates)
        done += size
        if progress:
            progress(done, total)
    return report


def _skipped_text(skipped: dict[str, int]) -> str:
    return "\n".join(f"{count} {reason}" for reason, count in sorted(skipped.items(), key=lambda kv: -kv[1]))


def render_report(report: ImportReport) -> Table:
    """The summary table: per file what was found, added, already there, left out and why."""
    table = Table(title="Import", show_footer=len(report.files) > 1)
    table.add_column("File", footer="total", overflow="fold")
    table.add_column("Format")
    table.add_column("Samples", justify="right", footer=str(report.parsed))
    table.add_column("Added", justify="right", footer=str(report.added), style="green")
    table.add_column("Already there", justify="right", footer=str(report.duplicates))
    table.add_column("Left out (why)", footer=Text(_skipped_text(report.skipped)), overflow="fold")
    # Text objects, not strings: paths and messages hold brackets that rich would read as markup.
    for file in report.files:
        if file.error:
            table.add_row(Text(str(file.path)), file.format or "?", "-", "0", "-",
                          Text(f"error: {file.error}", style="red"))
        else:
            table.add_row(Text(str(file.path)), file.format or "?", str(file.parsed), str(file.added),
                          str(file.duplicates), Text(_skipped_text(file.skipped) or "-"))
    return table


@contextmanager
def progress_bar(console: Console | None = None, *, description: str = "importing") -> Iterator[ProgressCallback]:
    """A rich progress bar over the bytes of the input, as a callback for `run_import`."""
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
