"""Evaluation of adapters on held-out data: the numbers the promotion gate and the report use.

For each named adapter (e.g. {"base": None, "active": path, "candidate": path}) on one base model
loaded once: likelihood of the owner's held-out text, preference accuracy on held-out
(owner's text, rejected draft) pairs (as a reward model: DPO's implicit reward against the base
model; the raw likelihood comparison beside it as `preference_accuracy_raw`), drafts sampled with
fixed seeds on the held-out prompts and what they look like (edit distance to the kept text,
attribution by the n-gram classifier and by LambdaG, style distance, caricature flags). Both judges learn,
against the other people's lines, from the owner's lines no evaluated model was trained on where there are
enough of them (`judge_lines`), else from all of the owner's lines but the sampled items' texts. The
metric definitions live in training.metrics / style / attribution / lambdag_judge (docs/architecture.md,
"Metrics"); this module only feeds them.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from training.config import EvaluationSettings, GenerationSettings, ModelSettings
from training.datasets import make_renderer, preference_pair
from training.examples import FeedbackExample, WritingExample, kept_text
from training.prompt import Conversation

if TYPE_CHECKING:  # pragma: no cover
    from training.kept_scores import KeptScores
    from training.inference.engine import Engine

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


JUDGES = ("attribution", "lambdag")  # the n-gram classifier the gate uses, and LambdaG reported beside it


# Held-out lines the judges need before they learn from those alone: a real import holds hundreds
# beyond the sampled items (the chat owner's import cycle: about 490), a night of verdicts a few dozen,
# too few for a classifier whose ceiling and floor are themselves measured on a fifth of them.
MIN_UNSEEN_LINES = 200


@dataclass(frozen=True)
class JudgeLines:
    lines: list[str]
    unseen: bool  # True: no evaluated model was trained on any of them


def judge_lines(owner_lines: Sequence[str], items: Sequence[EvalItem], sampled: int,
                unseen_owner_lines: Sequence[str] = ()) -> JudgeLines:
    """The owner's lines the judges learn from, never the sampled items' own texts.

    The drafts are compared with those texts (edit distance, the owner's report), so a judge that
    had learnt them would recognise a draft for being close to its item's answer, not for style.
    Likewise a judge that learnt the lines a model was trained on rewards that model for repeating
    them: so it learns from held-out lines beyond the sampled items (no model trains on held-out
    data) and the caller's `unseen_owner_lines`, when there are `MIN_UNSEEN_LINES` of them, and
    from every owner's line but the sampled items' otherwise (a small history has no spare ones).
    """
    held = {item.kept.strip() for item in items[:sampled]}
    unseen = list(dict.fromkeys(text.strip() for text in [*(item.kept for item in items[sampled:]), *unseen_owner_lines]
                                if text.strip() and text.strip() not in held))
    if len(unseen) >= MIN_UNSEEN_LINES:
        return JudgeLines(unseen, unseen=True)
    return JudgeLines([line for line in owner_lines if line.strip() not in held], unseen=False)


def _fit_judge(name: str, owner: Sequence[str], other: Sequence[str], seed: int) -> Any:
    from training.attribution import AttributionClassifier
    from training.lambdag_judge import LambdaGJudge

    return (AttributionClassifier() if name == "attribution" else LambdaGJudge()).fit(owner, other, seed=seed)


def _judges(owner_lines: Sequence[str], other_lines: Sequence[str], seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both judges trained on one split of the owner's and others' lines, and their held-out ceiling/floor.

    A judge that could not be trained (too few lines, LambdaG not installed) is left out and
    its bounds are None, with a note saying why.
    """
    from training.attribution import NotEnoughData, attribution_report, holdout_split
    from training.lambdag_judge import LambdaGUnavailable

    owner_train, owner_held = holdout_split(owner_lines, seed=seed)
    other_train, other_held = holdout_split(other_lines, seed=seed)
    judges: dict[str, Any] = {}
    bounds: dict[str, Any] = {"judges_trained_on": {"owner": len(owner_train), "other": len(other_train)}}
    for name in JUDGES:
        started = time.perf_counter()
        try:
            judge = _fit_judge(name, owner_train, other_train, seed)
        except (NotEnoughData, LambdaGUnavailable) as error:
            logger.info("%s skipped: %s", name, error)
            bounds.update({f"{name}_ceiling": None, f"{name}_floor": None, f"{name}_note": str(error)})
            continue
        judged = attribution_report(judge, [], owner_held, other_held)
        judges[name] = judge
        bounds.update({f"{name}_ceiling": judged["ceiling"], f"{name}_floor": judged["floor"],
                       f"{name}_seconds": round(time.perf_counter() - started, 2)})
    return judges, bounds


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
             eval_settings: EvaluationSettings, seed: int, engine: "Engine | None" = None,
             unseen_owner_lines: Sequence[str] = (),
             kept_scores: "KeptScores | None" = None) -> dict[str, dict[str, Any]]:
    """Metrics per adapter name, plus "baselines" (edit distance of an empty/echo draft, attribution bounds).

    Pass `engine` to reuse a loaded model; otherwise the base model is loaded once here.
    `unseen_owner_lines`: more of the owner's lines no evaluated model was trained on, for the
    judges (a benchmark's held-out replies beyond the ones it evaluates on). `kept_scores`: each
    model's per-item scores kept from earlier evaluations (training.kept_scores); a model scores
    only the items it lacks there, and the caller saves them.
    """
    from training.inference.engine import Engine
    from training.kept_scores import item_key, model_key
    from training.likelihood import (completion_logprobs, nll_of_scored, pair_logprobs, raw_preference_accuracy,
                                     reward_preference_accuracy)
    from training.metrics import edit_distance, edit_distance_baselines, mean_edit_distance
    from training.style import caricature_flags, habit_rates, style_distance, style_profile

    engine = engine or Engine.load(model_settings, Path(models_dir), max_adapters=max(1, len(adapters)),
                                   llamacpp_weights=generation.llamacpp_weights)
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

    learnt_from = judge_lines(owner_lines, items, len(sampled), unseen_owner_lines)
    judges, judge_bounds = _judges(learnt_from.lines, other_lines, seed)
    judge_bounds["judges_learnt_from_unseen"] = learnt_from.unseen
    owner_texts = list(owner_lines) or [item.kept for item in items]
    owner_profile = style_profile(owner_texts, other_texts=other_lines or None)
    baselines = edit_distance_baselines((item.conversation.incoming, item.kept) for _, item in sampled)
    results: dict[str, dict[str, Any]] = {
        "baselines": {"edit_distance_empty": baselines.get("empty", 1.0),
                      "edit_distance_echo": baselines.get("echo"),
                      **judge_bounds,
                      # The owner's reply length beside each model's drafts' (DPO made drafts shorter once).
                      "median_kept_words": statistics.median(len(item.kept.split()) for _, item in sampled)
                      if sampled else None,
                      "items": len(items), "likelihood_items": len(nll_pairs), "sampled_items": len(sampled),
                      "preference_pairs": len(triples)},
    }

    def scored(kind: str, spec: Any, kept_as: str | None, items: list[Any], keys: list[str],
               compute: Any = None) -> list[Any]:
        """`compute(model, items)` under `spec`'s adapter (None: the base model; drafts: sampled), the
        scores kept for model `kept_as` first (None: nothing kept)."""
        def under_model(missing: list[Any]) -> Any:
            if kind == "drafts":  # generate_many holds the engine itself
                return [output.text for output in engine.generate_many(missing, settings=generation, seed=seed,
                                                                       adapter=spec)]
            with engine.using(spec) as model:
                return compute(model, missing)

        if kept_scores is None or kept_as is None:
            return list(under_model(items)) if items else []
        return kept_scores.lookup(kept_as, kind, items, keys, under_model)

    nll_keys = [item_key(prompt, text) for prompt, text in nll_pairs]
    pair_keys = [item_key(*triple) for triple in triples]
    sampled_prompts = [prompt for prompt, _ in sampled]

    def pair_scores(model: Any, missing: list[Any]) -> Any:
        return pair_logprobs(model, engine.tokenizer, missing)

    def text_scores(model: Any, missing: list[Any]) -> Any:
        return completion_logprobs(model, engine.tokenizer, missing)

    # Preference accuracy is DPO's implicit reward, relative to the base model: scored once here.
    base_pairs = scored("pairs", None, model_key(None), triples, pair_keys, pair_scores)
    for name, path in adapters.items():
        started = time.perf_counter()
        spec = (f"eval-{name}", Path(path)) if path is not None else None
        kept_as = model_key(spec[1] if spec is not None else None) if kept_scores is not None else None
        nll, nll_error = nll_of_scored(scored("likelihood", spec, kept_as, nll_pairs, nll_keys, text_scores)) \
            if nll_pairs else (None, None)
        pairs = scored("pairs", spec, kept_as, triples, pair_keys, pair_scores) if spec is not None else base_pairs
        accuracy = reward_preference_accuracy(pairs, base_pairs)
        raw_accuracy = raw_preference_accuracy(pairs)
        drafts = scored("drafts", spec, kept_as, sampled_prompts, [item_key(prompt) for prompt in sampled_prompts])
        draft_profile = style_profile(drafts, phrases=owner_profile.phrases.keys())
        distances = [edit_distance(draft, item.kept) for draft, (_, item) in zip(drafts, sampled)]
        written = [d for d in drafts if d.strip()]
        # The share each judge gives the owner, and on how many documents (drafts; LambdaG groups them).
        shares = {name: (judges[name].score(written), len(judges[name].documents(written)))
                  if name in judges and written else (None, 0) for name in JUDGES}
        # Per sampled item, for the gate's paired differences (the same items and seeds for every
        # model): the classifier's verdict on each draft, None for an empty one. LambdaG judges
        # groups of drafts, not single ones, so it has none.
        attributed = judges["attribution"].draft_verdicts(drafts) if "attribution" in judges else []
        results[name] = {
            "likelihood": nll,
            "preference_accuracy": accuracy,
            "preference_accuracy_raw": raw_accuracy,
            "edit_distance": mean_edit_distance((draft, item.kept) for draft, (_, item) in zip(drafts, sampled)),
            "attribution": shares["attribution"][0],
            "lambdag": shares["lambdag"][0],
            # How much each sampled or counted metric would move by chance alone: the gate does
            # not call a candidate worse for a drop within this noise (a handful of held-out items).
            "standard_errors": {"likelihood": nll_error, "edit_distance": standard_error(distances),
                                **{name: proportion_standard_error(*shares[name]) for name in JUDGES},
                                "preference_accuracy": proportion_standard_error(accuracy, len(triples)),
                                "preference_accuracy_raw": proportion_standard_error(raw_accuracy, len(triples))},
            "per_item": {"edit_distance": distances, "attribution": attributed},
            "style_distance": style_distance(owner_profile, draft_profile) if drafts else {},
            "caricature_flags": caricature_flags(owner_profile, draft_profile, ratio=eval_settings.caricature_ratio)
            if drafts else [],
            "habit_rates": habit_rates(owner_profile, draft_profile) if drafts else {},
            "empty_drafts": sum(1 for d in drafts if not d.strip()),
            "median_draft_words": statistics.median(len(d.split()) for d in drafts) if drafts else None,
            "samples": [{"incoming": item.conversation.incoming, "draft": draft, "kept": item.kept,
                         "edit_distance": edit_distance(draft, item.kept)}
                        for draft, (_, item) in list(zip(drafts, sampled))[:SAMPLES_KEPT]],
            "seconds": round(time.perf_counter() - started, 2),
        }
        logger.info("evaluated %s: likelihood %s, preference %s, edit distance %s, attribution %s, LambdaG %s",
                    name, results[name]["likelihood"], accuracy, results[name]["edit_distance"],
                    results[name]["attribution"], results[name]["lambdag"])
    if kept_scores is not None:  # so far this night, every evaluate call of it
        results["baselines"]["scores_kept"] = kept_scores.hits
        results["baselines"]["scores_computed"] = kept_scores.computed
    return results
