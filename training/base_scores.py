"""The base model's held-out scores, kept from one cycle to the next (issue 20's night).

Every evaluation scores the base model beside the candidate and the active adapter: its figures
are the report's "(base …)" column and, before the first promotion, the active side of the gate.
The base model never changes between nights, and most held-out items do not either (the newest
held-out replies of an import stay held out), so scoring it again each night repeats a third of the
evaluation (the chat owner's third round: 119 of 396 s). This file keeps, per held-out item, what
the base model gave: the log-probability of the owner's text, of a preference pair, and its seeded
draft. An item is looked up by its rendered prompt and texts; anything not found is computed as
before, in one call, and kept.

Everything the scores depend on besides the item is the file's identity (`identity`): the model
settings, the base model's files, the generation settings and the seed. A different identity starts
the file afresh. A kept draft is one seeded sample of the base model for its prompt, as a fresh one
is; it may differ from what a fresh batch would sample (drafts are seeded per batch), not in kind.
Only the items of the latest evaluation are written back, so the file stays the size of one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from training.artifacts import atomic_file
from training.config import GenerationSettings, ModelSettings

logger = logging.getLogger(__name__)

BASE_SCORES_FILE = "base-scores.json"  # in the owner's folder (loop.cycle names it in the child's job)
FORMAT = 1  # bump when what a score means changes, so old files are not read as new ones
KINDS = ("likelihood", "pairs", "drafts")

Item = TypeVar("Item")
Score = TypeVar("Score")


def identity(model: ModelSettings, base_path: Path, generation: GenerationSettings, seed: int) -> str:
    """What the base model's scores depend on besides the items: a change in any starts afresh."""
    files = sorted((path.name, path.stat().st_size, path.stat().st_mtime_ns)
                   for path in Path(base_path).iterdir() if path.is_file()) if Path(base_path).is_dir() else []
    described = {"format": FORMAT, "model": asdict(model), "base_path": str(base_path), "files": files,
                 "generation": asdict(generation), "seed": seed}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def item_key(*texts: str) -> str:
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()


@dataclass
class BaseScores:
    """Per-item scores of the base model, read from and written back to `path`."""

    path: Path
    identity: str
    kept: dict[str, dict[str, Any]] = field(default_factory=lambda: {kind: {} for kind in KINDS})
    used: dict[str, dict[str, Any]] = field(default_factory=lambda: {kind: {} for kind in KINDS})
    hits: int = 0
    computed: int = 0

    @classmethod
    def load(cls, path: Path, identity: str) -> "BaseScores":
        """The scores kept at `path` for this identity; none when the file is missing, unreadable or another's."""
        scores = cls(Path(path), identity)
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return scores
        except (OSError, ValueError) as error:  # a damaged file costs one evaluation, never the cycle
            logger.warning("base model scores at %s unreadable, scoring afresh: %s", path, error)
            return scores
        if data.get("identity") == identity:
            scores.kept = {kind: dict(data.get(kind) or {}) for kind in KINDS}
        return scores

    def lookup(self, kind: str, items: Sequence[Item], keys: Sequence[str],
               compute: Callable[[list[Item]], Sequence[Score]]) -> list[Any]:
        """The score of each item, kept ones looked up, the others computed in one `compute` call."""
        missing = [index for index, key in enumerate(keys) if key not in self.kept[kind]]
        fresh = list(compute([items[index] for index in missing])) if missing else []
        for index, score in zip(missing, fresh, strict=True):
            self.kept[kind][keys[index]] = score
        self.hits += len(keys) - len(missing)
        self.computed += len(missing)
        for key in keys:
            self.used[kind][key] = self.kept[kind][key]
        return [self.kept[kind][key] for key in keys]

    def save(self) -> None:
        """Write back the scores of the items used since loading (atomically); a failure is only logged."""
        try:
            with atomic_file(self.path) as staging:
                staging.write_text(json.dumps({"identity": self.identity, **self.used}), encoding="utf-8")
        except OSError as error:
            logger.warning("could not keep the base model's scores at %s: %s", self.path, error)
