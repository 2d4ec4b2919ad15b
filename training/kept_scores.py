"""Held-out scores kept from one night to the next (issue 20's night).

Every evaluation scores the base model and the active adapter beside the candidate. Neither changes
between nights (tonight's active adapter is a candidate an earlier night evaluated and promoted),
and many held-out items do not either (the newest held-out replies of an import stay held out), so
scoring them again each night repeats up to two thirds of the evaluation (the chat owner's third
round: base 119 s and active 125 s of 396 s). This file keeps, per model and held-out item, what the
model gave: the log-probability of the owner's text, of a preference pair, and its seeded draft.
A model is the base ("base") or an adapter by the checksum of its weights (training.artifacts); an
item is looked up by its rendered prompt and texts. Anything not found is computed as before, in
one call, and kept.

What every score depends on besides the model and the item is the file's identity (`identity`):
the model settings, the base model's files, the generation settings and the seed. A different
identity starts the file afresh. A kept draft is one seeded sample of its model for its prompt, as
a fresh one is; it may differ from what a fresh batch would sample (drafts are seeded per batch), not
in kind. Only the scores used by the latest evaluation are written back, so the file stays the size
of one evaluation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from training.artifacts import CorruptAdapter, atomic_file, read_manifest
from training.config import GenerationSettings, ModelSettings

logger = logging.getLogger(__name__)

KEPT_SCORES_FILE = "kept-scores.json"  # in the owner's folder (loop.cycle names it in the child's job)
FORMAT = 1  # bump when what a score means changes, so old files are not read as new ones
KINDS = ("likelihood", "pairs", "drafts")
BASE = "base"

Item = TypeVar("Item")
Score = TypeVar("Score")


def identity(model: ModelSettings, base_path: Path, generation: GenerationSettings, seed: int) -> str:
    """What every model's scores depend on besides the model and the items: a change starts afresh."""
    files = sorted((path.name, path.stat().st_size, path.stat().st_mtime_ns)
                   for path in Path(base_path).iterdir() if path.is_file()) if Path(base_path).is_dir() else []
    described = {"format": FORMAT, "model": asdict(model), "base_path": str(base_path), "files": files,
                 "generation": asdict(generation), "seed": seed}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def model_key(adapter: Path | None) -> str | None:
    """The base model, or an adapter by its weights' checksum; None for a folder without a manifest (not kept)."""
    if adapter is None:
        return BASE
    try:
        return f"adapter:{read_manifest(Path(adapter))['checksum']}"
    except (CorruptAdapter, KeyError):
        return None


def item_key(*texts: str) -> str:
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()


@dataclass
class KeptScores:
    """Per-model, per-item scores, read from and written back to `path`."""

    path: Path
    identity: str
    kept: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # model -> kind -> item -> score
    used: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    hits: int = 0
    computed: int = 0

    @classmethod
    def load(cls, path: Path, identity: str) -> "KeptScores":
        """The scores kept at `path` for this identity; none when the file is missing, unreadable or another's."""
        scores = cls(Path(path), identity)
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return scores
        except (OSError, ValueError) as error:  # a damaged file costs one evaluation, never the cycle
            logger.warning("kept held-out scores at %s unreadable, scoring afresh: %s", path, error)
            return scores
        if isinstance(data, dict) and data.get("identity") == identity and isinstance(data.get("models"), dict):
            scores.kept = data["models"]
        return scores

    def lookup(self, model: str, kind: str, items: Sequence[Item], keys: Sequence[str],
               compute: Callable[[list[Item]], Sequence[Score]]) -> list[Any]:
        """The score of each item under `model`, kept ones looked up, the others computed in one `compute` call."""
        kept = self.kept.setdefault(model, {}).setdefault(kind, {})
        missing = [index for index, key in enumerate(keys) if key not in kept]
        fresh = list(compute([items[index] for index in missing])) if missing else []
        for index, score in zip(missing, fresh, strict=True):
            kept[keys[index]] = score
        self.hits += len(keys) - len(missing)
        self.computed += len(missing)
        used = self.used.setdefault(model, {}).setdefault(kind, {})
        for key in keys:
            used[key] = kept[key]
        return [kept[key] for key in keys]

    def save(self) -> None:
        """Write back the scores used since loading (atomically); a failure is only logged."""
        try:
            with atomic_file(self.path) as staging:
                staging.write_text(json.dumps({"identity": self.identity, "models": self.used}), encoding="utf-8")
        except OSError as error:
            logger.warning("could not keep the held-out scores at %s: %s", self.path, error)
