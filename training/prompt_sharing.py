"""A DPO pair runs its prompt through the model once: chosen and rejected continue the same pass.

trl 1.16's DPOTrainer puts a pair's chosen and rejected sequences in one batch and runs both in
full, for the policy and again for the reference. Chat rows are mostly prompt (82% of the tokens
of the benchmark's DPO rows), so nearly half of that work computes the same prompt twice.

`prompts_computed_once(model)` wraps, while it lasts, the forward that trl's fused LM head put on
the model: for a batch whose rows all start with the same prompt (one pair per forward pass, as the
memory plan gives DPO on a CPU) it runs the prompt once as a batch of one, keeping its keys and
values, repeats them for every row and runs only the completions on top. Gradients flow back
through the repeated keys and values into the single prompt pass, so the log-probabilities and
their gradients are those of the full pass (tests/training/test_prompt_sharing.py compares the two). Any
other batch, and any pass that recomputes activations (checkpointing cannot replay a cache), goes
to trl's forward unchanged.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Any, Iterator

logger = logging.getLogger(__name__)

# Fields of trl's FusedCausalLMOutput that hold one value per next-token position.
PER_POSITION_FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")
PLAIN_KEYS = {"input_ids", "attention_mask", "use_cache"}


@contextlib.contextmanager
def prompts_computed_once(model: Any) -> Iterator[bool]:
    """While it lasts, fused-head passes over one shared prompt compute that prompt once.

    Yields whether the model could be wrapped: it needs the instance forward trl's
    `add_fused_lm_head` installs and a backbone that takes a key/value cache.
    """
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    fused = vars(causal_lm).get("forward")  # trl puts its fused forward on the instance
    backbone = getattr(causal_lm, "base_model", None)
    cache_keyword = _cache_keyword(backbone)
    if fused is None or cache_keyword is None:
        logger.info("prompts are computed per row: no fused forward or no cache argument on %s",
                    type(causal_lm).__name__)
        yield False
        return

    def forward(*args: Any, fused_lm_head: bool = False, labels: Any = None, **kwargs: Any) -> Any:
        prompt_length = _shared_prompt_length(kwargs, labels) if fused_lm_head and not args else 0
        if prompt_length < 2 or _replays_activations(causal_lm):
            return fused(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        return _forward_sharing_prompt(causal_lm, backbone, fused, cache_keyword, prompt_length, labels, kwargs)

    causal_lm.forward = forward
    try:
        yield True
    finally:
        causal_lm.forward = fused


def _cache_keyword(backbone: Any) -> str | None:
    """The backbone's key/value cache argument: `cache` in transformers 5.24, `past_key_values` before."""
    if backbone is None:
        return None
    parameters = inspect.signature(backbone.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    return None


def _shared_prompt_length(kwargs: dict[str, Any], labels: Any) -> int:
    """Tokens of the prompt every row of the batch starts with (0 when the batch is not that case).

    The prompt ends where the first label is; every row must have it at the same place, the same
    tokens before it and no padding inside it.
    """
    input_ids, attention_mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
    # peft passes inputs_embeds, output_attentions, ... as None: only a real value is something else
    if any(value is not None for key, value in kwargs.items() if key not in PLAIN_KEYS):
        return 0
    if input_ids is None or attention_mask is None or labels is None:
        return 0
    if input_ids.dim() != 2 or input_ids.shape[0] < 2 or labels.shape != input_ids.shape:
        return 0
    labelled = labels != -100
    if not bool(labelled.any(dim=1).all()):
        return 0
    starts = labelled.int().argmax(dim=1)
    length = int(starts[0])
    if not bool((starts == length).all()):
        return 0
    if not bool((input_ids[:, :length] == input_ids[:1, :length]).all()) or not bool(attention_mask[:, :length].all()):
        return 0
    return length


def _replays_activations(causal_lm: Any) -> bool:
    """Checkpointing recomputes each layer in the backward pass, which a filled cache cannot follow."""
    import torch

    if not torch.is_grad_enabled() or not causal_lm.training:
        return False
    flag = getattr(type(causal_lm), "is_activation_checkpointing", None)
    name = "is_activation_checkpointing" if flag is not None else "is_gradient_checkpointing"
    return bool(getattr(causal_lm, name, False))


def _forward_sharing_prompt(causal_lm: Any, backbone: Any, fused: Any, cache_keyword: str, prompt_length: int,
                            labels: Any, kwargs: dict[str, Any]) -> Any:
    import torch
    from transformers import DynamicCache

    input_ids, attention_mask = kwargs["input_ids"], kwargs["attention_mask"]
    rows = input_ids.shape[0]
    # The prompt's last token stays in the second pass: its hidden state predicts the first completion token.
    cut = prompt_length - 1
    cache = DynamicCache(config=causal_lm.config)
    backbone(input_ids=input_ids[:1, :cut], attention_mask=attention_mask[:1, :cut], use_cache=True,
             **{cache_keyword: cache})
    cache.batch_repeat_interleave(rows)
    outputs = fused(input_ids=input_ids[:, cut:], attention_mask=attention_mask, labels=labels[:, cut:],
                    fused_lm_head=True, **{cache_keyword: cache})
    # trl reads per-position outputs right-aligned to the full sequence: put back the prompt's
    # positions, which carry no label (zero, as trl's own output has them there).
    for name in PER_POSITION_FIELDS:
        value = getattr(outputs, name, None)
        if value is not None:
            outputs[name] = torch.cat([value.new_zeros((rows, cut)), value], dim=1)
    return outputs
