"""Does it read as the owner? A stylometric classifier: owner's messages against other people's.

Character 2–4-grams (within word boundaries, TF-IDF with sublinear counts) and a
class-balanced logistic regression, trained on the owner's lines against the other people's
lines of the imported chats (docs/architecture.md, "Metrics": attribution). The score of a set of texts
is the share attributed to the owner, shown beside the ceiling (the owner's own held-out
lines) and the floor (the other people's held-out lines).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Sequence

from training.artifacts import atomic_file
from training.errors import NotEnoughData

logger = logging.getLogger(__name__)

MIN_TEXTS_PER_SIDE = 5
_FORMAT_VERSION = 1


def _clean(texts: Sequence[str]) -> list[str]:
    return [t.strip() for t in texts if t and t.strip()]


def holdout_split(texts: Sequence[str], *, fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """A seeded shuffle split into (train, held-out); at least one text is held out when there are two or more."""
    shuffled = _clean(texts)
    random.Random(seed).shuffle(shuffled)
    n_heldout = min(max(round(len(shuffled) * fraction), 1 if len(shuffled) > 1 else 0), len(shuffled))
    return shuffled[n_heldout:], shuffled[:n_heldout]


def require_both_sides(owner: Sequence[str], other: Sequence[str], judge: str) -> None:
    """Raise NotEnoughData naming the side with fewer than 5 texts (the judges learn from both)."""
    for side, texts in (("owner", owner), ("other people", other)):
        if len(texts) < MIN_TEXTS_PER_SIDE:
            raise NotEnoughData(f"{judge} needs at least {MIN_TEXTS_PER_SIDE} messages of the {side}, got {len(texts)}")


class AttributionClassifier:
    """TF-IDF character n-grams + logistic regression; class 1 is the owner."""

    def __init__(self) -> None:
        self.pipeline: Any = None
        self.counts: dict[str, int] = {}

    def fit(self, owner_texts: Sequence[str], other_texts: Sequence[str], seed: int = 0) -> "AttributionClassifier":
        """Train on both sides; raises NotEnoughData when a side has fewer than 5 non-empty texts."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        owner, other = _clean(owner_texts), _clean(other_texts)
        require_both_sides(owner, other, "attribution")
        self.pipeline = make_pipeline(
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, lowercase=False),
            LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed),
        )
        # Case stays in the features (lowercase=False): lower-case "i" and sentence starts are habits.
        self.pipeline.fit(owner + other, [1] * len(owner) + [0] * len(other))
        self.counts = {"owner": len(owner), "other": len(other)}
        logger.info("attribution classifier trained on %d owner and %d other messages", len(owner), len(other))
        return self

    def _require_fitted(self) -> None:
        if self.pipeline is None:
            raise NotEnoughData("the attribution classifier has not been trained")

    def predict_proba(self, texts: Sequence[str]) -> list[float]:
        """The probability that each text is the owner's (empty texts get the prior of an empty string)."""
        self._require_fitted()
        if not texts:
            return []
        owner_column = list(self.pipeline.classes_).index(1)
        return [float(row[owner_column]) for row in self.pipeline.predict_proba([t.strip() for t in texts])]

    def documents(self, texts: Sequence[str]) -> list[str]:
        """What `score` judges one by one: every non-empty text (LambdaG groups short ones instead)."""
        return _clean(texts)

    def draft_verdicts(self, drafts: Sequence[str]) -> list[float | None]:
        """Per draft: 1.0 when it is attributed to the owner (probability at least 0.5), 0.0 when not, None
        for an empty draft (nothing to judge), so paired comparisons keep each draft's place."""
        probabilities = iter(self.predict_proba([d for d in drafts if d.strip()]))
        return [float(next(probabilities) >= 0.5) if draft.strip() else None for draft in drafts]

    def score(self, texts: Sequence[str]) -> float:
        """The share of texts attributed to the owner (probability at least 0.5)."""
        probabilities = self.predict_proba(texts)
        if not probabilities:
            raise NotEnoughData("no texts to score")
        return sum(p >= 0.5 for p in probabilities) / len(probabilities)

    def save(self, path: str | Path) -> Path:
        """Write the trained classifier (joblib) atomically; our own file, so pickle is fine."""
        import joblib

        self._require_fitted()
        path = Path(path)
        with atomic_file(path) as temporary:
            joblib.dump({"version": _FORMAT_VERSION, "pipeline": self.pipeline, "counts": self.counts}, temporary)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "AttributionClassifier":
        """Read a classifier written by `save`."""
        import joblib

        data = joblib.load(Path(path))
        if not isinstance(data, dict) or data.get("version") != _FORMAT_VERSION:
            raise ValueError(f"{path} is not an attribution classifier of format {_FORMAT_VERSION}")
        classifier = cls()
        classifier.pipeline, classifier.counts = data["pipeline"], dict(data["counts"])
        return classifier


def attribution_report(classifier: Any, drafts: Sequence[str], owner_heldout: Sequence[str],
                       other_heldout: Sequence[str]) -> dict[str, float | int | None]:
    """The drafts' score beside the ceiling (owner's held-out lines) and floor (others'); None for an empty side.

    `classifier` is an AttributionClassifier or any judge with its `score` (training.lambdag_judge).
    """

    def share(texts: Sequence[str]) -> float | None:
        texts = _clean(texts)
        return classifier.score(texts) if texts else None

    return {
        "score": share(drafts),
        "ceiling": share(owner_heldout),
        "floor": share(other_heldout),
        "n_drafts": len(_clean(drafts)),
    }
