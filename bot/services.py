"""What the bot asks of the rest of the twin, each behind one blocking function.

Handlers stay thin: they call these from a worker thread (`asyncio.to_thread`) and turn a
`ServiceError` into a sentence. The loop modules are imported inside each function, so the bot
starts (and its tests run) without loading training code it does not need yet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from sqlalchemy.engine import Engine

from bot import texts
from bot.errors import ServiceError, TrainingAlreadyRunning
from loop.config import Config
from loop.errors import DraftAlreadyDecided
from loop.twin import Twin, Verdict
from loop.views import DraftView, FeedbackKind, FeedbackView

logger = logging.getLogger(__name__)

# run_cycle(config, engine, *, telegram_id, force, trigger) -> CycleOutcome; the scheduler uses the same shape.
CycleRunner = Callable[..., Any]


# A verdict as stored, with the draft it is about and, for "another", the new draft: what the twin returns.
Decision = Verdict


@dataclass
class Services:
    """The twin, its config and the optional pieces (cycle runner) that the handlers use."""

    config: Config
    twin: Twin
    cycle_runner: CycleRunner | None = None

    @property
    def engine(self) -> Engine:
        return self.twin.engine

    # Drafts and verdicts -----------------------------------------------------------------
    def decide(self, *, telegram_id: int, draft_id: int, kind: FeedbackKind | str, text: str | None = None,
               reason: str | None = None, on_text: Callable[[str], None] | None = None) -> Decision:
        """Store a verdict (committed on return; "regenerate" also writes the new draft, which
        `on_text` follows as it is written)."""
        streaming = {"on_text": on_text} if on_text is not None else {}
        try:
            return self.twin.record_verdict(telegram_id=telegram_id, draft_id=draft_id, kind=kind, text=text,
                                            reason=reason, **streaming)
        except DraftAlreadyDecided:
            raise self._decided(telegram_id, draft_id) from None

    def draft_state(self, *, telegram_id: int, draft_id: int) -> tuple[DraftView, FeedbackView | None]:
        """The draft and its verdict so far (DraftNotFound if it is not this owner's)."""
        return self.twin.draft_state(telegram_id=telegram_id, draft_id=draft_id)

    def amend_reject(self, *, telegram_id: int, draft_id: int, text: str | None, reason: str | None) -> Decision:
        try:
            return self.twin.amend_reject(telegram_id=telegram_id, draft_id=draft_id, text=text, reason=reason)
        except DraftAlreadyDecided:
            raise self._decided(telegram_id, draft_id) from None

    def _decided(self, telegram_id: int, draft_id: int) -> DraftAlreadyDecided:
        # The error raised inside the failed transaction holds an expired row; read the verdict afresh.
        feedback = self.twin.verdict_of(telegram_id=telegram_id, draft_id=draft_id)
        assert feedback is not None
        return DraftAlreadyDecided(feedback)

    # Commands ----------------------------------------------------------------------------
    def import_file(self, *, telegram_id: int, path: Path, name: str | None = None) -> str:
        """Import one uploaded file with the CLI's importers; returns the summary to show.

        The file is parsed in a child process with a memory limit (loop.importing.child): an
        upload that eats the memory or hangs costs its import, never the bot."""
        from loop.importing import OwnerIdentity, run_import
        from loop.importing.child import prepare_in_child

        owner_db_id, owner_name = self.twin.owner_and_name(telegram_id)
        names = [n for n in (name, owner_name, self.config.model.owner_name) if n]
        identity = OwnerIdentity.from_config(self.config, names=names, telegram_ids=[telegram_id])
        # Errors of a file end up in the report (a failed file stores nothing), not as exceptions.
        report = run_import(engine=self.engine, owner_db_id=owner_db_id, paths=[path], owner=identity,
                            mask=self.config.mask_personal_data, limits=self.config.importing,
                            prepare=prepare_in_child)
        return texts.import_summary(report, path.name)

    def run_cycle(self, *, telegram_id: int) -> Any:
        """One training cycle now (blocking, minutes): forced, since the owner asked for it."""
        try:
            from loop.cycle import CycleAlreadyRunning, run_cycle
        except ImportError as error:  # the cycle module is optional until it lands
            raise ServiceError(f"training is not available in this installation ({error})") from None
        runner = self.cycle_runner or run_cycle
        try:
            return runner(self.config, self.engine, telegram_id=telegram_id, force=True, trigger="telegram")
        except CycleAlreadyRunning as error:
            raise TrainingAlreadyRunning(f"A training cycle is already running ({error}); no second one was started.") from None

    def queue_cycle(self, *, telegram_id: int) -> bool:
        """Queue a forced cycle for `twin worker` (schedule.train_in_bot = false); False when one was
        already waiting (the two are one request)."""
        from loop.worker import enqueue

        return enqueue(self.engine, telegram_id=telegram_id, trigger="telegram", force=True).new

    def finished_reports(self) -> list[tuple[int, int, str]]:
        """(request id, owner, report) of queued cycles that workers finished and nobody told yet."""
        from loop.worker import take_reports

        return take_reports(self.engine)

    def report_sent(self, request_id: int) -> None:
        from loop.worker import mark_reported

        mark_reported(self.engine, request_id)

    def rollback(self, *, telegram_id: int, version: int | None = None) -> int:
        from loop.adapters import RollbackError, rollback

        try:
            return rollback(self.config, self.engine, telegram_id=telegram_id, version=version)
        except RollbackError as error:
            raise ServiceError(f"Rollback refused: {error}") from None

    def stats(self, *, telegram_id: int, chart_path: Path) -> tuple[str, Path | None]:
        """The per-version table and a chart: the cycle history once there is one, else real use per version."""
        from loop.stats import owner_stats, stats_chart

        rows = owner_stats(self.engine, telegram_id=telegram_id)
        return texts.stats_text(rows), stats_chart(self.config, self.engine, telegram_id=telegram_id, rows=rows,
                                                   path=chart_path)

    def style(self, *, telegram_id: int, chart_path: Path) -> tuple[str, Path | None]:
        from loop.style import owner_style_chart, owner_style_text

        text = owner_style_text(self.engine, telegram_id=telegram_id)
        try:
            chart = owner_style_chart(self.engine, telegram_id=telegram_id, path=chart_path)
        except Exception:  # the text is the answer; a chart that fails to draw is only logged
            logger.exception("could not draw the style chart")
            chart = None
        return text, chart

    def insight(self, *, telegram_id: int, folder: Path, version: int | None = None,
                against: int | None = None) -> tuple[str, list[Path]]:
        """What a version learnt (loop.insight): a short text and the charts written into `folder`."""
        from loop.errors import InsightUnavailable
        from loop.insight import run_insight

        try:
            report = run_insight(self.config, self.engine, telegram_id=telegram_id, folder=folder, version=version,
                                 against=against)
        except InsightUnavailable as error:
            raise ServiceError(str(error)) from None
        return report.text, report.charts

    def forget(self, *, telegram_id: int) -> bool:
        from loop.forget import forget_owner

        return forget_owner(self.config, self.engine, telegram_id=telegram_id)

    def status(self, *, telegram_id: int, next_run: datetime | None) -> str:
        return texts.status_text(self.twin.status(telegram_id), next_run)

    def next_run(self, scheduler: Any = None, now: datetime | None = None) -> datetime | None:
        """When the nightly cycle runs next: the live job of a running `scheduler` (it knows about
        runs moved or missed), else from the config (the scheduler uses the same trigger)."""
        from loop.scheduler import next_run_time, upcoming_run

        if scheduler is not None:
            return next_run_time(scheduler)
        return upcoming_run(self.config, now)

    def uploads_dir(self) -> Path:
        folder = self.config.data_dir / "uploads"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return folder
