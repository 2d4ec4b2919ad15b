"""The owner's style profile from everything they wrote: imported writing and kept texts.

Used by `twin style` and `/style`; the profile itself is computed by `training.style`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from loop.collect import kept_by_row
from storage import repo
from storage.db import session_scope


def owner_texts(engine: Engine, *, telegram_id: int) -> list[str]:
    """The owner's own words: imported samples plus drafts they accepted, edits and replacements."""
    with session_scope(engine) as session:
        owner = repo.find_owner(session=session, telegram_id=telegram_id)
        if owner is None:
            return []
        texts = [sample.text for sample in repo.writing_samples(session=session, owner_id=owner.id)]
        for feedback, draft in repo.feedback_rows(session=session, owner_id=owner.id):
            kept = kept_by_row(feedback, draft)
            if kept:
                texts.append(kept)
    return [text for text in texts if text.strip()]


def owner_profile(engine: Engine, *, telegram_id: int) -> Any | None:
    """The owner's StyleProfile, or None when nothing of theirs is stored yet."""
    from training.style import style_profile

    texts = owner_texts(engine, telegram_id=telegram_id)
    return style_profile(texts) if texts else None


def owner_style_rows(engine: Engine, *, telegram_id: int) -> list[tuple[str, str]]:
    from training.charts import style_table_rows

    profile = owner_profile(engine, telegram_id=telegram_id)
    return style_table_rows(profile) if profile is not None else []


def owner_style_text(engine: Engine, *, telegram_id: int) -> str:
    """The profile as plain lines, for a chat message."""
    rows = owner_style_rows(engine, telegram_id=telegram_id)
    if not rows:
        return "Nothing of yours is stored yet: import your writing or answer a few drafts first."
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


def owner_style_chart(engine: Engine, *, telegram_id: int, path: Path) -> Path | None:
    from training.charts import plot_style

    profile = owner_profile(engine, telegram_id=telegram_id)
    return plot_style(profile, path) if profile is not None else None
