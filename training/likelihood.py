"""Likelihood metrics: how probable the owner's own text is under a model (docs/architecture.md, "Metrics").

Texts are scored as completions of their rendered prompt, tokenised exactly as trl tokenises
training rows (prompt + completion, the completion starting where the two token sequences part),
and always with the end-of-turn token: a twin that does not know when to stop is scored for it.
Deterministic and cheap: no sampling, one forward pass per small batch, the vocabulary projection
only where a completion token is predicted.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

from training.datasets import END_OF_TURN

logger = logging.getLogger(__name__)

BATCH_SIZE = 4  # logits are (batch × length × 49152) floats: keep batches small on CPU


def encode_completion(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], int]:
    """Token ids of prompt+completion and where the completion starts (as trl computes it)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    full_ids = tokenizer(prompt + completion)["input_ids"]
    start = 0
    for a, b in zip(prompt_ids, full_ids):
        if a != b:
            break
        start += 1
    return list(full_ids), start


_encode = encode_completion


def completion_logprobs(model: Any, tokenizer: Any, items: Sequence[tuple[str, str]], *,
                        end_of_turn: str = END_OF_TURN, batch_size: int = BATCH_SIZE) -> list[tuple[float, int]]:
    """(sum of token log-probs, token count) of each text given its prompt, end-of-turn included."""
    return [(sum(logps), len(logps)) for _, logps in
            completion_token_logprobs(model, tokenizer, items, end_of_turn=end_of_turn, batch_size=batch_size)]


def completion_token_logprobs(model: Any, tokenizer: Any, items: Sequence[tuple[str, str]], *,
                              end_of_turn: str = END_OF_TURN,
                              batch_size: int = BATCH_SIZE) -> list[tuple[list[int], list[float]]]:
    """(completion token ids, their log-probs) of each text given its prompt, end-of-turn included
    (training.insight compares them token by token between two models)."""
    import torch

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # Only the positions that predict a completion token need the vocabulary projection: the prompt
    # is most of a chat row, and the LM head is a fifth of a small model's forward pass.
    slices_logits = _supports_logits_to_keep(model)
    results: list[tuple[list[int], list[float]]] = []
    for offset in range(0, len(items), batch_size):
        encoded = [_encode(tokenizer, prompt, text + end_of_turn) for prompt, text in items[offset:offset + batch_size]]
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, (ids, _) in enumerate(encoded):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            attention[row, :len(ids)] = 1
        # Position t predicts token t+1: the completion tokens [start, len) are scored by [start-1, len-1).
        first_needed = min(max(start, 1) - 1 for _, start in encoded) if slices_logits else 0
        keep: dict[str, Any] = {"logits_to_keep": torch.arange(first_needed, width - 1, device=device)} \
            if slices_logits else {}
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), **keep).logits
        for row, (ids, start) in enumerate(encoded):
            first = max(start, 1)
            scores = torch.log_softmax(logits[row, first - 1 - first_needed:len(ids) - 1 - first_needed].float(), dim=-1)
            targets = torch.tensor(ids[first:], device=scores.device)
            token_logps = scores.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            results.append((ids[first:], [float(v) for v in token_logps]))
    return results


def _supports_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward takes `logits_to_keep` (every causal LM of transformers 5; a PeftModel asks its base)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    supports = getattr(base, "_supports_logits_to_keep", None)
    return bool(supports and supports())


def mean_nll(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> float | None:
    """Mean per-token negative log-likelihood of each text given its prompt (None for no pairs).

    Token-weighted over all pairs, so a long held-out text counts for its length.
    """
    return mean_nll_with_error(model, tokenizer, pairs)[0]


def mean_nll_with_error(model: Any, tokenizer: Any,
                        pairs: Sequence[tuple[str, str]]) -> tuple[float | None, float | None]:
    """`mean_nll` and its standard error over the texts (None for no pairs; the error None below two)."""
    if not pairs:
        return None, None
    return nll_of_scored(completion_logprobs(model, tokenizer, pairs))


def nll_of_scored(scored: Sequence[tuple[float, int]]) -> tuple[float, float | None]:
    """Token-weighted mean NLL of (log-prob sum, tokens) per text, and its standard error.

    The mean is a ratio (all log-probs over all tokens), so its error is the ratio estimator's:
    the spread of each text's log-prob sum around what the mean predicts for its length. Texts,
    not tokens, are the independent draws: the tokens of one reply are not.
    """
    count, tokens = len(scored), sum(n for _, n in scored)
    mean = -sum(logp for logp, _ in scored) / max(tokens, 1)
    if count < 2 or not tokens:
        return mean, None
    residuals = sum((-logp - mean * n) ** 2 for logp, n in scored)
    return mean, math.sqrt(residuals / (count * (count - 1))) / (tokens / count)


PairScores = list[tuple[tuple[float, int], tuple[float, int]]]


def pair_logprobs(model: Any, tokenizer: Any, triples: Sequence[tuple[str, str, str]]) -> PairScores:
    """((chosen log-prob sum, tokens), (rejected log-prob sum, tokens)) of each (prompt, chosen, rejected)."""
    items = [(prompt, text) for prompt, chosen, rejected in triples for text in (chosen, rejected)]
    scored = completion_logprobs(model, tokenizer, items) if items else []
    return [(scored[index], scored[index + 1]) for index in range(0, len(scored), 2)]


def raw_preference_accuracy(scores: PairScores) -> float | None:
    """Share of pairs whose chosen text has the higher mean token log-prob (None for no pairs).

    Length-normalised, so a short rejected draft does not win by being short. It can hardly reach
    high values: a model's own sampled draft is by construction likelier to it than a human's text.
    """
    if not scores:
        return None
    return sum(1 for (c, cn), (r, rn) in scores if c / max(cn, 1) > r / max(rn, 1)) / len(scores)


def reward_preference_accuracy(scores: PairScores, base_scores: PairScores) -> float | None:
    """Share of pairs the model ranks right as a reward model: β·(log π − log π_base), DPO's implicit reward.

    The chosen text wins when its log-prob rose over the base model's by more than the rejected
    text's did (β > 0 does not change the sign, so it is left out). A tie, as for the base model
    against itself, counts half: the base model scores exactly 0.5 and a twin that learnt nothing
    about what the owner prefers stays there. None for no pairs.
    """
    if not scores:
        return None
    wins = 0.0
    for ((c, _), (r, _)), ((base_c, _), (base_r, _)) in zip(scores, base_scores, strict=True):
        margin = (c - base_c) - (r - base_r)
        wins += 1.0 if margin > 1e-6 else 0.5 if abs(margin) <= 1e-6 else 0.0
    return wins / len(scores)


def preference_accuracy(model: Any, tokenizer: Any,
                        triples: Sequence[tuple[str, str, str]]) -> float | None:
    """The raw comparison (`raw_preference_accuracy`) of (prompt, chosen, rejected) triples under one model."""
    return raw_preference_accuracy(pair_logprobs(model, tokenizer, triples))
