"""Likelihood metrics and the evaluation of adapters on held-out data, on the tiny model."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from training.artifacts import read_manifest
from training.datasets import FeedbackExample, WritingExample, make_renderer
from training.inference.engine import Engine
from training.evaluate import MIN_UNSEEN_LINES, SAMPLES_KEPT, EvalItem, eval_items, evaluate, judge_lines
from training.likelihood import (
    completion_logprobs,
    mean_nll,
    nll_of_scored,
    preference_accuracy,
    raw_preference_accuracy,
    reward_preference_accuracy,
)
from training.prompt import Conversation
from tests.tiny import build_random_adapter, tiny_evaluation_settings, tiny_generation_settings, tiny_model_settings

T0 = datetime(2026, 2, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    return Engine.load(tiny_model_settings(tiny_model_dir), Path("unused"))


@pytest.fixture(scope="module")
def adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "a", seed=5)


def prompts(engine: Engine, n: int) -> list[str]:
    render = make_renderer(engine.tokenizer, tiny_model_settings(Path("x")))
    return [render(Conversation.of(f"question number {i}?")) for i in range(n)]


def test_nll_is_the_mean_over_completion_tokens_including_the_end_of_turn(engine: Engine) -> None:
    import torch

    prompt = prompts(engine, 1)[0]
    text = "sure, see you there"
    ids = engine.tokenizer(prompt + text + "<|im_end|>")["input_ids"]
    start = len(engine.tokenizer(prompt)["input_ids"])
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0]
    logps = torch.log_softmax(logits[start - 1:-1], dim=-1).gather(-1, torch.tensor(ids[start:]).unsqueeze(-1))
    expected = -float(logps.mean())
    assert ids[-1] == engine.tokenizer.eos_token_id
    assert mean_nll(engine.model, engine.tokenizer, [(prompt, text)]) == pytest.approx(expected, rel=1e-4)
    assert mean_nll(engine.model, engine.tokenizer, []) is None


def test_the_nll_s_standard_error_counts_texts_not_tokens() -> None:
    # Two texts: 10 tokens at NLL 1 and 30 tokens at NLL 3: token-weighted mean 2.5.
    mean, error = nll_of_scored([(-10.0, 10), (-90.0, 30)])
    assert mean == pytest.approx(2.5)
    # Ratio estimator: residuals (10 - 25) and (90 - 75), sqrt(450 / 2) / mean length 20.
    assert error == pytest.approx(15 / 20)
    # The same per-token rates in every text: no spread, however many tokens.
    assert nll_of_scored([(-20.0, 10), (-60.0, 30), (-2.0, 1)])[1] == pytest.approx(0.0)
    # One text has no spread to measure; the mean is still its own.
    assert nll_of_scored([(-7.0, 7)]) == (1.0, None)


def test_batching_and_padding_do_not_change_scores(engine: Engine) -> None:
    items = [(p, "ok" + " and more" * i) for i, p in enumerate(prompts(engine, 5))]
    one_by_one = completion_logprobs(engine.model, engine.tokenizer, items, batch_size=1)
    batched = completion_logprobs(engine.model, engine.tokenizer, items, batch_size=4)
    for (a, n), (b, m) in zip(one_by_one, batched):
        assert n == m and a == pytest.approx(b, abs=1e-3)


def test_only_completion_positions_are_projected_and_scores_match_full_logits(engine: Engine) -> None:
    import torch

    render = make_renderer(engine.tokenizer, tiny_model_settings(Path("x")))
    items = [(render(Conversation.of("short?")), "yes"),
             (render(Conversation.of("a much longer question, " * 6 + "right?")), "no, not at all " * 3),
             (render(Conversation.of("medium length question here?")), "maybe")]
    projected: list[int] = []
    hook = engine.model.get_output_embeddings().register_forward_hook(
        lambda module, inputs, output: projected.append(inputs[0].shape[0] * inputs[0].shape[1]))
    try:
        scored = completion_logprobs(engine.model, engine.tokenizer, items, batch_size=3)
    finally:
        hook.remove()
    full = []
    for prompt, text in items:
        ids = engine.tokenizer(prompt + text + "<|im_end|>")["input_ids"]
        start = len(engine.tokenizer(prompt)["input_ids"])
        with torch.inference_mode():
            logits = engine.model(input_ids=torch.tensor([ids])).logits[0]
        logps = torch.log_softmax(logits[start - 1:-1], dim=-1).gather(-1, torch.tensor(ids[start:]).unsqueeze(-1))
        full.append((float(logps.sum()), len(ids) - start))
    for (a, n), (b, m) in zip(scored, full):
        assert n == m and a == pytest.approx(b, abs=1e-4)
    width = max(len(engine.tokenizer(p + t + "<|im_end|>")["input_ids"]) for p, t in items)
    first_needed = min(len(engine.tokenizer(p)["input_ids"]) for p, _ in items) - 1
    # From the shortest prompt's last token on: the positions before it predict only prompt tokens.
    assert projected == [3 * (width - 1 - first_needed)]
    assert first_needed > (width - 1) / 3


def test_preference_accuracy_counts_where_the_chosen_text_wins(engine: Engine) -> None:
    triples = [(p, f"reply {i} lol", f"A much more formal answer, number {i}.") for i, p in enumerate(prompts(engine, 6))]
    forward = preference_accuracy(engine.model, engine.tokenizer, triples)
    backward = preference_accuracy(engine.model, engine.tokenizer, [(p, r, c) for p, c, r in triples])
    assert forward is not None and 0 <= forward <= 1
    assert forward + backward == pytest.approx(1.0)  # swapping chosen and rejected flips every comparison
    assert preference_accuracy(engine.model, engine.tokenizer, []) is None


def test_reward_preference_accuracy_is_the_implicit_reward_against_the_base_model() -> None:
    # ((chosen log-prob, tokens), (rejected log-prob, tokens)) per pair.
    base = [((-30.0, 10), (-12.0, 10)), ((-25.0, 10), (-14.0, 10))]
    assert reward_preference_accuracy(base, base) == 0.5  # the base model against itself: all ties
    # The chosen texts rose more than the rejected drafts in the first pair only.
    tuned = [((-20.0, 10), (-11.0, 10)), ((-25.0, 10), (-13.0, 10))]
    assert reward_preference_accuracy(tuned, base) == 0.5
    assert raw_preference_accuracy(tuned) == 0.0  # still less likely than the fluent drafts: raw says 0
    learnt = [((-15.0, 10), (-13.0, 10)), ((-20.0, 10), (-15.0, 10))]
    assert reward_preference_accuracy(learnt, base) == 1.0
    assert reward_preference_accuracy([], []) is None and raw_preference_accuracy([]) is None


def heldout() -> tuple[list[FeedbackExample], list[WritingExample]]:
    feedback = [
        FeedbackExample("edit", Conversation.of("dinner at 8?"), "Yes, that works for me.", "yep ~", None, T0),
        FeedbackExample("accept", Conversation.of("u ok?"), "fine ~", None, None, T0 + timedelta(hours=1)),
        FeedbackExample("reject", Conversation.of("call me"), "I am unable to call.", None, None, T0),
        FeedbackExample("regenerate", Conversation.of("movie?"), "Sure, which one?", None, "ya which ~", T0),
    ]
    writing = [WritingExample("reply", "lol no ~", Conversation.of("did you win?"), T0),
               WritingExample("monologue", "my diary entry", None, T0)]
    return feedback, writing


OWNER_LINES = [f"lol yeah {w} ~" for w in "abcdefghij"]
OTHER_LINES = [f"Indeed, I agree about {w}." for w in "abcdefghij"]


def test_evaluate_reports_every_metric_per_adapter(engine: Engine, adapter: Path, tiny_model_dir: Path) -> None:
    feedback, writing = heldout()
    assert [i.kept for i in eval_items(feedback, writing)] == ["yep ~", "fine ~", "ya which ~", "lol no ~"]
    kwargs = dict(model_settings=tiny_model_settings(tiny_model_dir), generation=tiny_generation_settings(),
                  models_dir=Path("unused"), adapters={"base": None, "candidate": adapter},
                  heldout_feedback=feedback, heldout_writing=writing, owner_lines=OWNER_LINES,
                  other_lines=OTHER_LINES, eval_settings=tiny_evaluation_settings(max_eval_items=3), seed=1,
                  engine=engine)
    results = evaluate(**kwargs)
    assert set(results) == {"base", "candidate", "baselines"}
    baselines = results["baselines"]
    assert baselines["edit_distance_empty"] == 1.0 and baselines["edit_distance_echo"] > 0
    assert baselines["items"] == 4 and baselines["sampled_items"] == 3 and baselines["preference_pairs"] == 2
    assert baselines["attribution_ceiling"] > baselines["attribution_floor"]  # the classifier separates the two
    assert baselines["lambdag_ceiling"] > baselines["lambdag_floor"]  # and so does the second judge
    assert baselines["judges_trained_on"] == {"owner": 8, "other": 8}  # 80% of each side, 20% for the bounds
    for name in ("base", "candidate"):
        metrics = results[name]
        assert metrics["likelihood"] > 0
        assert metrics["preference_accuracy"] in (0.0, 0.5, 1.0)
        assert 0 <= metrics["edit_distance"] <= 3
        assert metrics["attribution"] is None or 0 <= metrics["attribution"] <= 1
        assert "lambdag" in metrics and (metrics["lambdag"] is None or 0 <= metrics["lambdag"] <= 1)
        assert isinstance(metrics["style_distance"], dict) and isinstance(metrics["caricature_flags"], list)
        assert len(metrics["samples"]) == min(3, SAMPLES_KEPT)
        errors = metrics["standard_errors"]  # what the gate treats as sampling noise
        assert errors["preference_accuracy"] > 0 and errors["edit_distance"] is not None
        assert errors["likelihood"] > 0  # four held-out texts of different likelihoods
        assert (errors["lambdag"] is None) == (metrics["lambdag"] is None)
        # One value per sampled item, in the same order for every model: the gate pairs them.
        per_item = metrics["per_item"]
        assert len(per_item["edit_distance"]) == len(per_item["attribution"]) == 3
        assert per_item["edit_distance"] == [sample["edit_distance"] for sample in metrics["samples"]]
        judged = [value for value in per_item["attribution"] if value is not None]
        assert set(judged) <= {0.0, 1.0}
        assert metrics["attribution"] == (sum(judged) / len(judged) if judged else None)
    assert results["base"]["likelihood"] != results["candidate"]["likelihood"]  # the adapter was applied
    assert results["base"]["preference_accuracy"] == 0.5  # as a reward model, the base ties with itself
    assert results["candidate"]["preference_accuracy_raw"] in (0.0, 0.5, 1.0)
    again = evaluate(**kwargs)
    for name in ("base", "candidate"):  # fixed seeds: the same numbers and drafts every time
        assert again[name]["likelihood"] == pytest.approx(results[name]["likelihood"])
        assert again[name]["samples"] == results[name]["samples"]
        assert again[name]["lambdag"] == results[name]["lambdag"]


def test_the_judges_do_not_learn_the_sampled_items_texts(engine: Engine, tiny_model_dir: Path) -> None:
    # The owner's lines of a cycle hold every imported reply and kept text, the held-out ones too.
    feedback, writing = heldout()
    kept = [item.kept for item in eval_items(feedback, writing)]
    kwargs = dict(model_settings=tiny_model_settings(tiny_model_dir), generation=tiny_generation_settings(),
                  models_dir=Path("unused"), adapters={}, heldout_feedback=feedback, heldout_writing=writing,
                  other_lines=OTHER_LINES, eval_settings=tiny_evaluation_settings(max_eval_items=len(kept)), seed=1,
                  engine=engine)
    without = evaluate(owner_lines=OWNER_LINES, **kwargs)["baselines"]
    with_kept = evaluate(owner_lines=OWNER_LINES + [f" {text} " for text in kept], **kwargs)["baselines"]
    assert with_kept["judges_trained_on"] == without["judges_trained_on"] == {"owner": 8, "other": 8}
    assert with_kept["lambdag_ceiling"] == without["lambdag_ceiling"]
    assert without["judges_learnt_from_unseen"] is False  # four held-out items leave none spare


def test_with_enough_held_out_lines_the_judges_never_learn_what_a_model_trained_on() -> None:
    items = [EvalItem(Conversation.of(f"q {i}?"), f"held out reply {i}") for i in range(MIN_UNSEEN_LINES + 10)]
    trained_on = ["a reply the adapter was trained on", "another one"]
    learnt = judge_lines(trained_on + [item.kept for item in items], items, sampled=10)
    assert learnt.unseen and learnt.lines == [item.kept for item in items[10:]]  # not the sampled ten either
    # A benchmark's spare held-out replies count too; one of the sampled texts among them still does not.
    spare = judge_lines(trained_on, items[:MIN_UNSEEN_LINES - 5], sampled=10,
                        unseen_owner_lines=[f"spare {i}" for i in range(20)] + [items[0].kept])
    assert spare.unseen and items[0].kept not in spare.lines and "spare 19" in spare.lines
    assert not set(trained_on) & set(spare.lines)
    # Too few spare lines: every owner's line but the sampled items' texts, the trained-on ones included.
    few = judge_lines(trained_on + [items[0].kept, items[50].kept], items[:60], sampled=10)
    assert not few.unseen and few.lines == trained_on + [items[50].kept]


def test_evaluate_without_pairs_or_lines_reports_none(engine: Engine, tiny_model_dir: Path) -> None:
    feedback = [FeedbackExample("accept", Conversation.of("hi"), "hey ~", None, None, T0)]
    results = evaluate(model_settings=tiny_model_settings(tiny_model_dir), generation=tiny_generation_settings(),
                       models_dir=Path("unused"), adapters={"base": None}, heldout_feedback=feedback,
                       heldout_writing=[], owner_lines=[], other_lines=[],
                       eval_settings=tiny_evaluation_settings(), seed=0, engine=engine)
    assert results["base"]["preference_accuracy"] is None and results["base"]["attribution"] is None
    assert results["baselines"]["attribution_ceiling"] is None and "attribution_note" in results["baselines"]
    assert results["base"]["lambdag"] is None and results["baselines"]["lambdag_ceiling"] is None
    assert "at least 5 messages" in results["baselines"]["lambdag_note"]


def test_the_held_out_likelihood_scores_at_most_max_likelihood_items_the_same_for_every_model(
        engine: Engine, adapter: Path, tiny_model_dir: Path) -> None:
    feedback, writing = heldout()
    settings = tiny_model_settings(tiny_model_dir)
    kwargs = dict(model_settings=settings, generation=tiny_generation_settings(), models_dir=Path("unused"),
                  adapters={"base": None}, heldout_feedback=feedback, heldout_writing=writing,
                  owner_lines=OWNER_LINES, other_lines=OTHER_LINES, seed=1, engine=engine)
    capped = evaluate(**kwargs, eval_settings=tiny_evaluation_settings(max_likelihood_items=2))
    assert capped["baselines"]["likelihood_items"] == 2 and capped["baselines"]["items"] == 4
    render = make_renderer(engine.tokenizer, settings)
    first_two = [(render(item.conversation), item.kept) for item in eval_items(feedback, writing)[:2]]
    with engine.using(None) as model:  # the base model, whatever adapter an earlier test left active
        assert capped["base"]["likelihood"] == pytest.approx(mean_nll(model, engine.tokenizer, first_two))


def test_a_model_scores_only_the_held_out_items_an_earlier_night_did_not_keep(
        engine: Engine, adapter: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from training.kept_scores import KeptScores

    feedback, writing = heldout()
    kwargs = dict(model_settings=tiny_model_settings(tiny_model_dir), generation=tiny_generation_settings(),
                  models_dir=Path("unused"), owner_lines=OWNER_LINES, other_lines=OTHER_LINES, seed=1, engine=engine,
                  eval_settings=tiny_evaluation_settings(max_eval_items=3))
    kept_at = tmp_path / "kept-scores.json"
    tonight = {"base": None, "candidate": adapter}
    fresh = evaluate(heldout_feedback=feedback, heldout_writing=writing, adapters=tonight, **kwargs)
    first = KeptScores.load(kept_at, "the base, v1")
    scored = evaluate(heldout_feedback=feedback, heldout_writing=writing, adapters=tonight, kept_scores=first, **kwargs)
    first.save()
    # Per model: 4 texts, 3 drafts; the preference pairs (2) are scored under both.
    assert first.hits == 0 and first.computed == 2 * (4 + 2 + 3)
    for name in tonight:
        for metric in ("likelihood", "preference_accuracy", "samples", "attribution"):
            assert scored[name][metric] == fresh[name][metric]  # what is kept is what is computed

    # The next night the candidate is the active adapter: one held-out item fewer, one new, a new
    # candidate. The base model and the active adapter score only the new item; the candidate all.
    newer = [*feedback[1:], FeedbackExample("edit", Conversation.of("new one?"), "hm ~", "sure ~", None, T0)]
    candidate = build_random_adapter(tiny_model_dir, tmp_path / "next", seed=6)
    next_night = {"base": None, "active": adapter, "candidate": candidate}
    second = KeptScores.load(kept_at, "the base, v1")
    again = evaluate(heldout_feedback=newer, heldout_writing=writing, adapters=next_night, kept_scores=second, **kwargs)
    assert second.computed == 2 * (1 + 1 + 1) + (4 + 2 + 3) and second.hits == 2 * (3 + 1 + 2)
    assert again["baselines"]["scores_kept"] == second.hits
    same_items = evaluate(heldout_feedback=newer, heldout_writing=writing, adapters=next_night, **kwargs)
    for name in ("base", "active"):
        assert again[name]["likelihood"] == pytest.approx(same_items[name]["likelihood"])
    assert again["candidate"] == {**same_items["candidate"], "seconds": again["candidate"]["seconds"]}
    second.save()
    assert set(json.loads(kept_at.read_text())["models"]) == {"base", f"adapter:{read_manifest(adapter)['checksum']}",
                                                             f"adapter:{read_manifest(candidate)['checksum']}"}

    # Another base model (or settings, or seed) starts afresh; so does a damaged file.
    assert KeptScores.load(kept_at, "another base").kept == {}
    kept_at.write_text("{not json", encoding="utf-8")
    assert KeptScores.load(kept_at, "the base, v1").kept == {}
