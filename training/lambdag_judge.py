"""A second, independent judge of "does it read as the owner?": LambdaG authorship verification.

LambdaG (Nini et al.; PyPI `lambdag`, MIT) compares how likely a text is under a Kneser-Ney
token n-gram model of the owner's writing with how likely it is under models of the same size
fitted on other people's writing (the reference population): the log-likelihood ratio λ, positive
when the text reads more like the owner. It shares nothing with the character n-gram classifier
of `training.attribution` but the data: no TF-IDF, no logistic regression, no training problems.

It is reported beside the classifier (training.evaluate, the cycle report, the benchmarks), each
with its ceiling (the owner's own held-out lines) and floor (the other people's); the promotion
gate keeps judging by the classifier (training/gate.py says why).

How it is used here, measured on the benchmarks' owners (bench/judges.py, bench/RESULTS.md):

- One chat line (8 words on average) is too little evidence: on the chitchat owner's held-out
  lines one at a time the ceiling was 0.78 and the floor 0.23 (the classifier: 0.85 and 0.17).
  Consecutive texts are grouped into documents of at least `MIN_WORDS` (20) words, 19 documents
  from 60 chat lines (an e-mail reply of 40 words stays a document of its own); then the ceiling
  was 0.92 and the floor 0.14. At 40 words it was 0.98 and 0.06, but 60 drafts make only 10
  documents, a tenth of the share each. The score is the share of documents judged to be the
  owner's (probability at least 0.5).
- Bigrams (`ORDER` 2) separated as well as trigrams and fit in half the time; 3 reference models
  as well as 5 or 10 (each is drawn from the same others' lines); case is kept.
- The library's `fit`/`predict_proba` fits the owner's model and every reference model again for
  each document (0.3 s a document with 5 references on the 62-line mail owner, minutes for a real
  one). The judge fits them once in `fit` with the library's own preprocessing, Kneser-Ney models
  and reference sampling (in the library's order: the λ of a document equals
  `LambdaGMethod.lambdag`'s for one problem with the same seed, tests/test_lambdag_judge.py), and
  scores documents against them.
  Those helpers are private to the library, which is why pyproject.toml pins it exactly.
- Calibration "square_root" (the library's, no training problems): p = 1 / (1 + 2^(-λ/√N)) for a
  document of N tokens. The share at 0.5 is the share with λ ≥ 0 under any of the library's
  calibrations that need no training; the probability only says how sure.
- The owner's model sees at most `MAX_SENTENCES` sentences (and no more than the reference
  population has, which the reference sampling needs): on the chitchat owner (8,206 lines) the fit
  took 1.0–1.6 s, the ceiling and floor 0.2–0.4 s and 60 drafts 0.02 s on 2 shared cores.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Sequence

from training.attribution import NotEnoughData, _clean, require_both_sides
from training.errors import LambdaGUnavailable

logger = logging.getLogger(__name__)

ORDER = 2
REFERENCES = 3  # reference models, each on as many sampled sentences of the others as the owner's has
MIN_WORDS = 20
MAX_SENTENCES = 5000
CALIBRATION = "square_root"

# The Kneser-Ney model gives its start-of-sentence pad a probability of 0: a text with that token would
# score -inf under every model (and λ NaN). It is only a word here, so it is written differently.
_PAD = re.compile(r"(?<!\S)<s>(?!\S)")


def _texts(texts: Sequence[str]) -> list[str]:
    return [_PAD.sub("<s >", text) for text in _clean(texts)]


def lambdag_method(*, order: int = ORDER, references: int = REFERENCES, seed: int = 0) -> Any:
    """The library's method object with the judge's settings (tokens, Kneser-Ney, case kept, sentences)."""
    try:
        from lambdag import LambdaGMethod
    except ImportError as error:
        raise LambdaGUnavailable(f"LambdaG is not installed ({error}): pip install 'lambdag==0.2.0'") from error

    return LambdaGMethod(basis="tokens", order=order, smoothing="kneser_ney", lowercasing=False, sentenize=True,
                         num_references=references, calibration=CALIBRATION, random_seed=seed)


def group_documents(texts: Sequence[str], min_words: int = MIN_WORDS) -> list[str]:
    """Consecutive texts joined (one per line) until a document has `min_words` words.

    A remainder under half of `min_words` joins the last document rather than being judged on
    its own; a single short text is still one document.
    """
    documents: list[list[str]] = []
    current: list[str] = []
    words = 0
    for text in _texts(texts):
        current.append(text)
        words += len(text.split())
        if words >= min_words:
            documents.append(current)
            current, words = [], 0
    if current:
        if documents and words < min_words / 2:
            documents[-1].extend(current)
        else:
            documents.append(current)
    return ["\n".join(lines) for lines in documents]


class LambdaGJudge:
    """LambdaG with the owner's model and the reference models fitted once; class 1 is the owner."""

    def __init__(self, *, order: int = ORDER, references: int = REFERENCES, min_words: int = MIN_WORDS,
                 max_sentences: int = MAX_SENTENCES) -> None:
        self.order, self.references, self.min_words, self.max_sentences = order, references, min_words, max_sentences
        self.method: Any = None
        self.owner_model: Any = None
        self.reference_models: list[Any] = []
        self.counts: dict[str, int] = {}

    def fit(self, owner_texts: Sequence[str], other_texts: Sequence[str], seed: int = 0) -> "LambdaGJudge":
        """Fit on both sides; raises NotEnoughData when a side has fewer than 5 non-empty texts."""
        owner, other = _texts(owner_texts), _texts(other_texts)
        require_both_sides(owner, other, "LambdaG")
        method = lambdag_method(order=self.order, references=self.references, seed=seed)
        # As LambdaGMethod.lambdag reads a problem: the known text is one document, the reference
        # sentences are every sentence of the other authors' texts.
        known = method._preprocess_text("\n".join(owner))
        pool = [sentence for text in other for sentence in method._preprocess_text(text)]
        limit = min(len(pool), self.max_sentences)
        if len(known) > limit:
            # Each reference model is fitted on as many sentences as the owner's, drawn without replacement.
            keep = sorted(method.random_gen.choice(len(known), size=limit, replace=False))
            known = [known[i] for i in keep]
        self.owner_model = method._fit_new_language_model(known)
        self.reference_models = [
            method._fit_new_language_model([pool[i] for i in method.random_gen.choice(len(pool), size=len(known),
                                                                                        replace=False)])
            for _ in range(method.num_references)]
        self.method = method
        self.counts = {"owner": len(owner), "other": len(other), "owner_sentences": len(known),
                       "reference_sentences": len(pool)}
        logger.info("LambdaG fitted on %d owner sentences (of %d messages) against %d references of %d others' "
                    "messages", len(known), len(owner), len(self.reference_models), len(other))
        return self

    def _require_fitted(self) -> None:
        if self.method is None:
            raise NotEnoughData("the LambdaG judge has not been fitted")

    def _sentences(self, document: str) -> list[Any]:
        return self.method._preprocess_text(_PAD.sub("<s >", document.strip()))

    def _lambda(self, sentences: list[Any]) -> float:
        import numpy as np

        def log_likelihood(model: Any) -> float:
            return sum(float(np.sum(np.log10(model.probabilities(sentence)))) for sentence in sentences)

        known = log_likelihood(self.owner_model)
        return float(np.mean([known - log_likelihood(model) for model in self.reference_models]))

    def lambdas(self, documents: Sequence[str]) -> list[float]:
        """λ of each document: log10 likelihood under the owner's model minus the references', averaged."""
        self._require_fitted()
        return [self._lambda(self._sentences(document)) for document in documents]

    def predict_proba(self, documents: Sequence[str]) -> list[float]:
        """The calibrated probability that each document is the owner's."""
        import numpy as np

        self._require_fitted()
        if not documents:
            return []
        sentences = [self._sentences(document) for document in documents]
        scores = np.array([self._lambda(document) for document in sentences])
        return [float(p) for p in self.method.calibration_model.predict_proba(scores, sentences)[:, 1]]

    def documents(self, texts: Sequence[str]) -> list[str]:
        """The documents `score` judges for these texts."""
        return group_documents(texts, self.min_words)

    def score(self, texts: Sequence[str]) -> float:
        """The share of the texts' documents judged to be the owner's (probability at least 0.5)."""
        documents = self.documents(texts)
        if not documents:
            raise NotEnoughData("no texts to score")
        return sum(p >= 0.5 for p in self.predict_proba(documents)) / len(documents)
