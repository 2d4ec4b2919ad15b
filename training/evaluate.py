"""Evaluation of adapters on held-out data: the numbers the promotion gate and the report use.

For each named adapter (e.g. {"base": None, "active": path, "candidate": path}) on one base model
loaded once: likelihood of the owner's held-out text, preference accuracy on held-out
(owner's text, rejected draft) pairs, drafts sampled with fixed seeds on the held-out prompts
and what they look like (edit distance to the kept text, attribution, style distance,
caricature flags). The metric definitions live in training.metrics / style / attribution
(design.md, "Metrics"); this module only feeds them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from training.config import EvaluationSettings, GenerationSettings, ModelSettings
from training.datasets import FeedbackExample, WritingExample, kept_text, make_renderer, preference_pair
from training.prompt import Conversation

if TYPE_CHECKING:  # pragma: no cover
    from training.engine import Engine

logger = logging.getLogger(__name__)

SAMPLES_KEPT = 5  # example drafts recorded per adapter for the owner's report


@dataclass(frozen=True)
class EvalItem:
    conversation: Conversation
    kept: str  # what the owner actually wrote


def eval_items(heldout_feedback: Sequence[FeedbackExample], heldout_writing: Sequence[WritingExample]) -> list[EvalItem]:
    """Held-out prompts with the owner's text: kept texts of feedback, then held-out replies."""
    items: list[EvalItem] = []
    for feedback in heldout_feedback:
        text = kept_text(feedback)
        if text:
            items.append(EvalItem(feedback.conversation, text))
    for sample in heldout_writing:
        if sample.kind == "reply" and sample.conversation is not None and sample.text.strip():
            items.append(EvalItem(sample.conversation, sample.text.strip()))
    return items


def _attribution(owner_lines: Sequence[str], other_lines: Sequence[str], seed: int) -> tuple[Any, dict[str, Any]]:
    """A classifier trained on part of the owner's and others' lines, and its held-out ceiling/floor."""
    from training.attribution import AttributionClassifier, NotEnoughData, attribution_report, holdout_split

    owner_train, owner_held = holdout_split(owner_lines, seed=seed)
    other_train, other_held = holdout_split(other_lines, seed=seed)
    try:
        classifier = AttributionClassifier().fit(owner_train, other_train, seed=seed)
    except NotEnoughData as error:
        logger.info("attribution skipped: %s", error)
        return None, {"attribution_ceiling": None, "attribution_floor": None, "attribution_note": str(error)}
    bounds = attribution_report(classifier, [], owner_held, other_held)
    return classifier, {"attribution_ceiling": bounds["ceiling"], "attribution_floor": bounds["floor"]}


def standard_error(values: list[float]) -> float | None:
    """Standard error of a mean (None below two values)."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return math.sqrt(variance / len(values))


def proportion_standard_error(share: float | None, count: int) -> float | None:
    """Standard error of a share measured on `count` items (None when not measured)."""
    if share is None or count < 1:
        return None
    return math.sqrt(max(share * (1 - share), 0.25 / count) / count)  # never 0 at 0% or 100%


def evaluate(*, model_settings: ModelSettings, generation: GenerationSettings, models_dir: Path,
             adapters: dict[str, Path | None], heldout_feedback: list[FeedbackExample],
             heldout_writing: list[WritingExample], owner_lines: list[str], other_lines: list[str],
             eval_settings: EvaluationSettings, seed: int, engine: "Engine | None" = None) -> dict[str, dict[str, Any]]:
    """Metrics per adapter name, plus "baselines" (edit distance of an empty/echo draft, attribution bounds).

    Pass `engine` to reuse a loaded model; otherwise the base model is loaded once here.
    """
    from training.engine import Engine
    from training.likelihood import mean_nll, preference_accuracy
    from training.metrics import edit_distance, edit_distance_baselines, mean_edit_distance
    from training.style import caricature_flags, habit_rates, style_distance, style_profile

    engine = engine or Engine.load(model_settings, Path(models_dir), max_adapters=max(1, len(adapters)))
    render = make_renderer(engine.tokenizer, model_settings)
    items = eval_items(heldout_feedback, heldout_writing)
    prompts = [render(item.conversation) for item in items]
    # Paired across models (the same items for each), so a few hundred items judge a difference well;
    # all of a long chat history's held-out replies would cost minutes per model (0.66 s an item, 2 cores).
    nll_pairs = [(prompt, item.kept) for prompt, item in zip(prompts, items)][:eval_settings.max_likelihood_items]
    triples = []
    for feedback in heldout_feedback:
        pair = preference_pair(feedback)
        if pair is not None:
            triples.append((render(feedback.conversation), pair[0], pair[1]))
    sampled = list(zip(prompts, items))[:eval_settings.max_eval_items]

    classifier, attribution_bounds = _attribution(owner_lines, other_lines, seed)
    owner_texts = list(owner_lines) or [item.kept for item in items]
    owner_profile = style_profile(owner_texts, other_texts=other_lines or None)
    baselines = edit_distance_baselines((item.conversation.incoming, item.kept) for _, item in sampled)
    results: dict[str, dict[str, Any]] = {
        "baselines": {"edit_distance_empty": baselines.get("empty", 1.0),
                      "edit_distance_echo": baselines.get("echo"),
                      **attribution_bounds,
                      "items": len(items), "likelihood_items": len(nll_pairs), "sampled_items": len(sampled),
                      "preference_pairs": len(triples)},
    }
    for name, path in adapters.items():
        started = time.perf_counter()
        spec = (f"eval-{name}", Path(path)) if path is not None else None
        with engine.using(spec) as model:
            nll = mean_nll(model, engine.tokenizer, nll_pairs)
            accuracy = preference_accuracy(model, engine.tokenizer, triples)
        drafts = [output.text for output in engine.generate_many([prompt for prompt, _ in sampled],
                                                                 settings=generation, seed=seed, adapter=spec)]
        draft_profile = style_profile(drafts, phrases=owner_profile.phrases.keys())
        distances = [edit_distance(draft, item.kept) for draft, (_, item) in zip(drafts, sampled)]
        written = [d for d in drafts if d.strip()]
        attribution = classifier.score(written) if classifier and written else None
        results[name] = {
            "likelihood": nll,
            "preference_accuracy": accuracy,
            "edit_distance": mean_edit_distance((draft, item.kept) for draft, (_, item) in zip(drafts, sampled)),
            "attribution": attribution,
            # How much each sampled or counted metric would move by chance alone: the gate does
            # not call a candidate worse for a drop within this noise (a handful of held-out items).
            "standard_errors": {"edit_distance": standard_error(distances),
                                "attribution": proportion_standard_error(attribution, len(written)),
                                "preference_accuracy": proportion_standard_error(accuracy, len(triples))},
            "style_distance": style_distance(owner_profile, draft_profile) if drafts else {},
            "caricature_flags": caricature_flags(owner_profile, draft_profile, ratio=eval_settings.caricature_ratio)
            if drafts else [],
            "habit_rates": habit_rates(owner_profile, draft_profile) if drafts else {},
            "empty_drafts": sum(1 for d in drafts if not d.strip()),
            "samples": [{"incoming": item.conversation.incoming, "draft": draft, "kept": item.kept,
                         "edit_distance": edit_distance(draft, item.kept)}
                        for draft, (_, item) in list(zip(drafts, sampled))[:SAMPLES_KEPT]],
            "seconds": round(time.perf_counter() - started, 2),
        }
        logger.info("evaluated %s: likelihood %s, preference %s, edit distance %s, attribution %s", name,
                    results[name]["likelihood"], accuracy, results[name]["edit_distance"],
                    results[name]["attribution"])
    return results
