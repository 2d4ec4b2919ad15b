"""What an adapter changed in the model, measured: where, which words, how attention moved, what style.

Pure measurement (issue 19): it reads an adapter and the owner's held-out text, never trains and
never changes which adapter is active. Four parts, cheapest first, each comparing the adapter with
`against` (the base model, or an earlier adapter):

- **update sizes**: per layer and target module, ‖B·A·scale‖ / ‖W‖ (Frobenius norms) straight from
  the adapter's safetensors and the base weights; the same for a previous adapter when given.
- **word shifts**: per word and two-word phrase of the owner's held-out replies, the mean change of
  its tokens' log-probability (in nats per token) under the adapter; "fell" also looks at the
  `against` model's own drafts, where the base model's assistant phrasing lives. Each word comes
  with the share of the owner's messages, of the twin's drafts and of the base drafts using it.
- **attention shift**: per layer, the mean KL divergence from the `against` model's attention
  distribution to the adapter's (over heads and query positions), and the entropy change; for one
  example, how much more attention each context token receives from the reply. Eager attention
  is switched on for this part only (sdpa returns no attention weights) and switched back after.
- **style profile**: training.style's profile of the owner, of the `against` drafts and of the
  adapter's drafts, to the same held-out prompts with the same seed.

`measure_insight` takes a loaded `training.inference.engine.Engine`; the result is plain data that
survives JSON (`Insight.to_json` / `from_json`), so a cycle can store it and a report rebuild it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from training.config import GenerationSettings, InsightSettings
from training.errors import OverBudget

if TYPE_CHECKING:  # pragma: no cover
    from training.inference.engine import Engine

logger = logging.getLogger(__name__)

END_LABEL = "(end of message)"
# peft's target module names in words, for people.
MODULE_WORDS = {
    "q_proj": "query", "k_proj": "key", "v_proj": "value", "o_proj": "attention out",
    "gate_proj": "MLP gate", "up_proj": "MLP up", "down_proj": "MLP down",
}
_LAYER = re.compile(r"\.layers\.(\d+)\.")
_UNIT = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|[^\w\s]+")  # a word, or a run of punctuation ("~", "!!")


# The result --------------------------------------------------------------------------------------

@dataclass
class ModuleChange:
    """The size of one LoRA update: ‖ΔW‖ / ‖W‖ with ΔW = B·A·scale (Frobenius norms)."""

    layer: int  # -1 for a module outside the decoder layers
    module: str  # peft's name, e.g. "q_proj"
    ratio: float
    update_norm: float
    weight_norm: float


@dataclass
class PhraseShift:
    """A word or two-word phrase and how much likelier the adapter made it (nats per token)."""

    text: str
    words: int  # 1 or 2
    count: int  # occurrences scored
    shift: float  # mean Δ log-prob per token, adapter − against
    owner_rate: float | None = None  # share of the owner's messages that use it
    twin_rate: float | None = None  # share of the adapter's drafts that use it
    against_rate: float | None = None  # share of the `against` model's drafts that use it


@dataclass
class AttentionShift:
    """Per layer: mean KL(adapter ‖ against) of the attention rows, per head, and the entropy change."""

    kl: list[float]
    kl_per_head: list[list[float]]
    entropy_change: list[float]
    items: int


@dataclass
class AttentionExample:
    """One held-out example: the context tokens and the attention the reply pays each, both models."""

    tokens: list[str]
    adapter: list[float]
    against: list[float]
    reply: str

    @property
    def gain(self) -> list[float]:
        return [a - b for a, b in zip(self.adapter, self.against)]


@dataclass
class Insight:
    version: int
    against: int  # 0: the base model
    changes: list[ModuleChange]
    previous: int | None = None  # the adapter whose update sizes `previous_changes` holds
    previous_changes: list[ModuleChange] = field(default_factory=list)
    rose: list[PhraseShift] = field(default_factory=list)
    fell: list[PhraseShift] = field(default_factory=list)
    attention: AttentionShift | None = None
    example: AttentionExample | None = None
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # "owner", "against drafts", "twin drafts"
    items: int = 0  # held-out texts scored
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Insight":
        values = dict(data)
        values["changes"] = [ModuleChange(**c) for c in values.get("changes", [])]
        values["previous_changes"] = [ModuleChange(**c) for c in values.get("previous_changes", [])]
        values["rose"] = [PhraseShift(**p) for p in values.get("rose", [])]
        values["fell"] = [PhraseShift(**p) for p in values.get("fell", [])]
        if values.get("attention"):
            values["attention"] = AttentionShift(**values["attention"])
        if values.get("example"):
            values["example"] = AttentionExample(**values["example"])
        return cls(**values)


# Update sizes ------------------------------------------------------------------------------------

def base_weights(model: Any) -> dict[str, Any]:
    """Every linear weight of the base model by module path ("model.layers.0.self_attn.q_proj"),
    through peft's wrappers when the model carries adapters (their `base_layer`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    weights = {}
    for name, module in base.named_modules():
        inner = getattr(module, "base_layer", module)
        weight = getattr(inner, "weight", None)
        if weight is not None and getattr(weight, "ndim", 0) == 2 and ".base_layer" not in name:
            weights[name] = weight
    return weights


def _scale(config: dict[str, Any], module_path: str) -> float:
    """peft's LoRA scale for a module: alpha / r (alpha / √r with rsLoRA), honouring the per-module patterns."""
    short = module_path.rsplit(".", 1)[-1]
    r = next((v for k, v in (config.get("rank_pattern") or {}).items() if module_path.endswith(k) or k == short),
             config["r"])
    alpha = next((v for k, v in (config.get("alpha_pattern") or {}).items()
                  if module_path.endswith(k) or k == short), config["lora_alpha"])
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def update_sizes(adapter_dir: Path, weights: dict[str, Any]) -> list[ModuleChange]:
    """‖B·A·scale‖ / ‖W‖ of every LoRA module of the adapter folder, by layer then module."""
    import torch
    from safetensors.torch import load_file

    folder = Path(adapter_dir)
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    changes = []
    for name, a in tensors.items():
        if ".lora_A." not in name:
            continue
        b = tensors[name.replace(".lora_A.", ".lora_B.")]
        path = name.split(".lora_A.")[0].removeprefix("base_model.model.")
        weight = weights.get(path)
        if weight is None:
            logger.warning("no base weight for LoRA module %s; left out", path)
            continue
        with torch.no_grad():
            update = (b.float() @ a.float()) * _scale(config, path)
            update_norm, weight_norm = float(update.norm()), float(weight.detach().float().norm())
        layer = _LAYER.search(f".{path}.")
        changes.append(ModuleChange(layer=int(layer.group(1)) if layer else -1, module=path.rsplit(".", 1)[-1],
                                    ratio=update_norm / weight_norm if weight_norm else math.inf,
                                    update_norm=update_norm, weight_norm=weight_norm))
    return sorted(changes, key=lambda c: (c.layer, c.module))


def layer_bands(layers: int, bands: int) -> list[tuple[int, int]]:
    """Split layers 0..layers-1 into at most `bands` consecutive (first, last) groups, for a readable chart."""
    bands = max(1, min(bands, layers))
    size = math.ceil(layers / bands)
    return [(start, min(start + size, layers) - 1) for start in range(0, layers, size)]


def band_grid(changes: Sequence[ModuleChange], bands: int) -> tuple[list[str], list[str], list[list[float]]]:
    """(row labels "layers 1-5", module labels in words, mean ratio per band × module; NaN where none)."""
    in_layers = [c for c in changes if c.layer >= 0]
    if not in_layers:
        return [], [], []
    modules = sorted({c.module for c in in_layers}, key=lambda m: list(MODULE_WORDS).index(m)
                     if m in MODULE_WORDS else len(MODULE_WORDS))
    groups = layer_bands(max(c.layer for c in in_layers) + 1, bands)
    grid = []
    for first, last in groups:
        row = []
        for module in modules:
            values = [c.ratio for c in in_layers if c.module == module and first <= c.layer <= last]
            row.append(sum(values) / len(values) if values else math.nan)
        grid.append(row)
    labels = [f"layer {first + 1}" if first == last else f"layers {first + 1}-{last + 1}" for first, last in groups]
    return labels, [MODULE_WORDS.get(m, m) for m in modules], grid


# Word shifts -------------------------------------------------------------------------------------

def _is_punctuation(text: str) -> bool:
    stripped = text.strip()
    return bool(stripped) and not any(ch.isalnum() for ch in stripped)


def token_words(tokenizer: Any, ids: Sequence[int], values: Sequence[float]) -> list[tuple[str, list[float]]]:
    """Group completion tokens into words (a new word at a space, and punctuation on its own), each
    with its tokens' values; special tokens (the end of the turn) become END_LABEL."""
    special = set(tokenizer.all_special_ids or [])
    words: list[tuple[str, list[float]]] = []
    text, scores = "", []
    previous_punct = False

    def flush() -> None:
        nonlocal text, scores
        if text.strip():
            words.append((text.strip(), scores))
        text, scores = "", []

    for token_id, value in zip(ids, values):
        if token_id in special:
            flush()
            words.append((END_LABEL, [value]))
            continue
        piece = tokenizer.decode([token_id])
        punct = _is_punctuation(piece)
        if not piece.strip():
            flush()
            continue
        if piece[:1].isspace() or punct != previous_punct:
            flush()
        text, previous_punct = text + piece, punct
        scores = scores + [value]
    flush()
    return words


def units(text: str) -> list[str]:
    """The words and punctuation runs of a raw text, as `token_words` splits them (for rates of use)."""
    return _UNIT.findall(text)


def usage_rate(phrase: str, texts: Sequence[str]) -> float | None:
    """Share of `texts` that use `phrase` (a word or two-word phrase, case kept); None for no texts."""
    if not texts:
        return None
    wanted = tuple(units(phrase))
    if phrase == END_LABEL or not wanted:
        return None
    size = len(wanted)
    hits = 0
    for text in texts:
        found = units(text)
        hits += any(tuple(found[i:i + size]) == wanted for i in range(len(found) - size + 1))
    return hits / len(texts)


@dataclass
class _Tally:
    shifts: list[float] = field(default_factory=list)
    tokens: int = 0
    owner: int = 0


def _tally(tokenizer: Any, scored: Sequence[tuple[list[int], list[float], list[float]]], owner: bool,
           tallies: dict[tuple[str, int], _Tally]) -> None:
    for ids, adapter, against in scored:
        deltas = [a - b for a, b in zip(adapter, against)]
        words = token_words(tokenizer, ids, deltas)
        grams = [((text,), values) for text, values in words]
        grams += [((first[0], second[0]), first[1] + second[1]) for first, second in zip(words, words[1:])
                  if END_LABEL not in (first[0], second[0])]
        for key, values in grams:
            tally = tallies[(" ".join(key), len(key))]
            tally.shifts.append(sum(values) / len(values))
            tally.owner += owner


def phrase_shifts(tokenizer: Any, owner_scored: Sequence[tuple[list[int], list[float], list[float]]],
                  draft_scored: Sequence[tuple[list[int], list[float], list[float]]], *, top: int,
                  min_count: int) -> tuple[list[PhraseShift], list[PhraseShift]]:
    """(rose most on the owner's text, fell most on the owner's text and the `against` drafts).

    Each scored item is (completion token ids, log-probs under the adapter, under `against`). A
    phrase is listed only when seen `min_count` times, and a two-word phrase only when it moved
    more than either of its words did alone: otherwise it only repeats a word already listed.
    """
    tallies: dict[tuple[str, int], _Tally] = defaultdict(_Tally)
    _tally(tokenizer, owner_scored, True, tallies)
    _tally(tokenizer, draft_scored, False, tallies)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    single = {text: mean(t.shifts) for (text, size), t in tallies.items() if size == 1}
    candidates = []
    for (text, size), tally in tallies.items():
        if len(tally.shifts) < min_count:
            continue
        shift = mean(tally.shifts)
        if size == 2:
            parts = text.split(" ", 1) if END_LABEL not in text else [text]
            part_shifts = [single.get(p, 0.0) for p in parts]
            if not (shift > max(part_shifts) or shift < min(part_shifts)):
                continue
        candidates.append((PhraseShift(text=text, words=size, count=len(tally.shifts), shift=shift), tally.owner))
    rose = sorted((p for p, owner in candidates if owner >= min_count and p.shift > 0), key=lambda p: -p.shift)
    fell = sorted((p for p, _ in candidates if p.shift < 0), key=lambda p: p.shift)
    return rose[:top], fell[:top]


def _score_tokens(engine: "Engine", spec: Any, items: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[float]]]:
    from training.likelihood import completion_token_logprobs

    with engine.using(spec) as model:
        return completion_token_logprobs(model, engine.tokenizer, items)


def _paired(engine: "Engine", adapter: Any, against: Any,
            items: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[float], list[float]]]:
    mine, theirs = _score_tokens(engine, adapter, items), _score_tokens(engine, against, items)
    return [(ids, a, b) for (ids, a), (_, b) in zip(mine, theirs)]


# Attention ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Compute attention eagerly inside the block (the only kind that returns its weights), then restore."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    previous = base.config._attn_implementation
    if previous != "eager":
        base.set_attn_implementation("eager")
    try:
        yield
    finally:
        if previous != "eager":
            base.set_attn_implementation(previous)


def _attentions(engine: "Engine", spec: Any, ids: list[int]) -> list[Any]:
    """Per layer, the (heads × length × length) attention weights of one sequence under `spec`."""
    import torch

    with engine.using(spec) as model, eager_attention(model), torch.inference_mode():
        output = model(input_ids=torch.tensor([ids], device=engine.device), output_attentions=True)
    return [layer[0].float() for layer in output.attentions]


def attention_kl(adapter: Sequence[Any], against: Sequence[Any]) -> tuple[list[list[float]], list[float]]:
    """Per layer and head, the mean over query positions of KL(adapter row ‖ against row); and per
    layer the mean change in row entropy (adapter − against). The first query (one key only) is skipped."""
    import torch

    tiny = 1e-12
    kl, entropy = [], []
    for p, q in zip(adapter, against):
        p, q = p[:, 1:, :], q[:, 1:, :]
        row_kl = (p * (torch.log(p.clamp_min(tiny)) - torch.log(q.clamp_min(tiny)))).sum(-1)
        kl.append([max(0.0, float(v)) for v in row_kl.mean(-1)])
        ent_p = -(p * torch.log(p.clamp_min(tiny))).sum(-1).mean()
        ent_q = -(q * torch.log(q.clamp_min(tiny))).sum(-1).mean()
        entropy.append(float(ent_p - ent_q))
    return kl, entropy


def _encode_item(tokenizer: Any, prompt: str, text: str) -> tuple[list[int], int]:
    from training.datasets import END_OF_TURN
    from training.likelihood import encode_completion

    return encode_completion(tokenizer, prompt, text + END_OF_TURN)


def attention_shift(engine: "Engine", adapter: Any, against: Any, items: Sequence[tuple[str, str]],
                    check: Any = None) -> tuple[AttentionShift | None, AttentionExample | None]:
    """Mean attention KL per layer over `items`, and the example (the item with the longest context)."""
    if not items:
        return None, None
    per_item, entropies, example = [], [], None
    longest = max(range(len(items)), key=lambda i: len(items[i][0]))
    for index, (prompt, text) in enumerate(items):
        ids, start = _encode_item(engine.tokenizer, prompt, text)
        mine, theirs = _attentions(engine, adapter, ids), _attentions(engine, against, ids)
        kl, entropy = attention_kl(mine, theirs)
        per_item.append(kl)
        entropies.append(entropy)
        if index == longest:
            example = _example(engine.tokenizer, ids, start, mine, theirs, text)
        if check is not None:
            check()
    layers, heads = len(per_item[0]), len(per_item[0][0])
    kl_heads = [[sum(item[l][h] for item in per_item) / len(per_item) for h in range(heads)] for l in range(layers)]
    return AttentionShift(kl=[sum(row) / heads for row in kl_heads], kl_per_head=kl_heads,
                          entropy_change=[sum(e[l] for e in entropies) / len(entropies) for l in range(layers)],
                          items=len(items)), example


def _example(tokenizer: Any, ids: list[int], start: int, mine: Sequence[Any], theirs: Sequence[Any],
             reply: str) -> AttentionExample:
    """Attention each context token receives from the reply's positions, averaged over layers and heads.

    The context is what follows the system turn (its first end-of-turn token) up to the reply."""
    special = set(tokenizer.all_special_ids or [])
    first = next((i + 1 for i, t in enumerate(ids[:start]) if t in special and i > 0), 0)
    queries = slice(max(start - 1, 0), len(ids) - 1)

    def received(layers: Sequence[Any]) -> list[float]:
        total = sum(layer[:, queries, :].mean(dim=(0, 1)) for layer in layers) / len(layers)
        return [float(v) for v in total[first:start]]

    tokens = [("\n" if t in special else tokenizer.decode([t])) for t in ids[first:start]]
    return AttentionExample(tokens=tokens, adapter=received(mine), against=received(theirs), reply=reply)


# Style -------------------------------------------------------------------------------------------

def style_profiles(owner_texts: Sequence[str], against_drafts: Sequence[str],
                   twin_drafts: Sequence[str]) -> dict[str, dict[str, Any]]:
    """training.style profiles of the owner, the `against` drafts and the twin's, counting the same phrases."""
    from training.style import style_profile

    owner = style_profile(list(owner_texts))
    phrases = list(owner.phrases)
    return {"owner": owner.to_dict(),
            "against drafts": style_profile(list(against_drafts), phrases=phrases).to_dict(),
            "twin drafts": style_profile(list(twin_drafts), phrases=phrases).to_dict()}


# The whole measurement ---------------------------------------------------------------------------

def measure_insight(engine: "Engine", *, adapter_dir: Path, version: int, items: Sequence[tuple[str, str]],
                    owner_texts: Sequence[str], generation: GenerationSettings, settings: InsightSettings,
                    against_dir: Path | None = None, against_version: int = 0,
                    previous_dir: Path | None = None, previous_version: int | None = None,
                    seed: int = 0, deadline: float | None = None) -> Insight:
    """Everything above for one adapter against `against_dir` (None: the base model).

    `items` are (rendered prompt, owner's held-out reply); at most `settings.max_items` are scored,
    `settings.drafts` drafted and `settings.attention_items` run with eager attention.
    `previous_dir`: an earlier adapter whose update sizes are shown beside this one's.
    `deadline` (time.monotonic()): OverBudget is raised at the first check past it.
    """
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def check(stage: str | None = None) -> None:
        nonlocal clock
        if stage is not None:
            now = time.perf_counter()
            seconds[stage] = round(now - clock, 2)
            clock = now
        if deadline is not None and time.monotonic() > deadline:
            raise OverBudget(f"insight passed its time budget during {stage or 'a step'}")

    adapter = (f"insight-v{version}", Path(adapter_dir))
    against = (f"insight-v{against_version}", Path(against_dir)) if against_dir is not None else None
    items = list(items)[:settings.max_items]
    weights = base_weights(engine.model)
    changes = update_sizes(adapter_dir, weights)
    previous_changes = update_sizes(previous_dir, weights) if previous_dir is not None else []
    check("update sizes")

    prompts = [prompt for prompt, _ in items[:settings.drafts]]
    # Shorter than real drafts: they only feed the style profile and the words' rates of use.
    drafting = dataclasses.replace(generation, max_new_tokens=min(generation.max_new_tokens, settings.max_new_tokens))
    twin_drafts = [o.text for o in engine.generate_many(prompts, settings=drafting, seed=seed, adapter=adapter)]
    against_drafts = [o.text for o in engine.generate_many(prompts, settings=drafting, seed=seed, adapter=against)]
    check("drafts")

    owner_scored = _paired(engine, adapter, against, items)
    draft_scored = _paired(engine, adapter, against, [(p, d) for p, d in zip(prompts, against_drafts) if d.strip()])
    rose, fell = phrase_shifts(engine.tokenizer, owner_scored, draft_scored, top=settings.top_words,
                               min_count=settings.min_count)
    for phrase in (*rose, *fell):
        phrase.owner_rate = usage_rate(phrase.text, owner_texts)
        phrase.twin_rate = usage_rate(phrase.text, twin_drafts)
        phrase.against_rate = usage_rate(phrase.text, against_drafts)
    check("word shifts")

    attention, example = attention_shift(engine, adapter, against, items[:settings.attention_items], check=check)
    check("attention")
    profiles = style_profiles(owner_texts, against_drafts, twin_drafts)
    check("style")
    return Insight(version=version, against=against_version, changes=changes, previous=previous_version
                   if previous_dir is not None else None, previous_changes=previous_changes, rose=rose, fell=fell,
                   attention=attention, example=example, profiles=profiles, items=len(items), seconds=seconds)


# In words ----------------------------------------------------------------------------------------

def _where(change: ModuleChange) -> str:
    where = f"layer {change.layer + 1}" if change.layer >= 0 else "outside the layers"
    return f"{MODULE_WORDS.get(change.module, change.module)} in {where}"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _name(version: int) -> str:
    return f"v{version}" if version else "the base model"


def insight_lines(insight: Insight, *, top: int = 3) -> list[str]:
    """A few sentences for the owner: where it changed most, favoured and dropped words, attention."""
    lines = [f"What v{insight.version} changed, against {_name(insight.against)} "
             f"({insight.items} of your held-out replies):"]
    if insight.changes:
        biggest = sorted(insight.changes, key=lambda c: -c.ratio)[:top]
        mean = sum(c.ratio for c in insight.changes) / len(insight.changes)
        lines.append("  Biggest changes: " + ", ".join(f"{_where(c)} ({c.ratio:.2%})" for c in biggest)
                     + f"; {mean:.2%} of the weights on average.")
    if insight.previous_changes:
        before = {(c.layer, c.module): c.ratio for c in insight.previous_changes}
        moved = sorted((c for c in insight.changes if (c.layer, c.module) in before),
                       key=lambda c: -(c.ratio - before[(c.layer, c.module)]))[:top]
        if moved:
            lines.append(f"  Grew most since v{insight.previous}: " + ", ".join(
                f"{_where(c)} ({before[(c.layer, c.module)]:.2%} → {c.ratio:.2%})" for c in moved) + ".")
    if insight.rose:
        lines.append("  Now favours: " + ", ".join(
            f"'{p.text}' (+{p.shift:.2f}; you {_rate(p.owner_rate)}, twin {_rate(p.twin_rate)})"
            for p in insight.rose[:top + 2]) + ".")
    if insight.fell:
        lines.append("  Now avoids: " + ", ".join(
            f"'{p.text}' ({p.shift:.2f}; you {_rate(p.owner_rate)}, before {_rate(p.against_rate)})"
            for p in insight.fell[:top + 2]) + ".")
    if insight.attention is not None and insight.attention.kl:
        kl = insight.attention.kl
        peak = max(range(len(kl)), key=lambda i: kl[i])
        lines.append(f"  Attention moved most in layer {peak + 1} (KL {kl[peak]:.3f}; mean {sum(kl) / len(kl):.3f}).")
    if insight.example is not None and insight.example.tokens:
        gain = insight.example.gain
        best = sorted(range(len(gain)), key=lambda i: -gain[i])[:top]
        words = [insight.example.tokens[i].strip() for i in best if insight.example.tokens[i].strip()]
        if words:
            lines.append("  In the example, the reply now looks more at: " + ", ".join(f"'{w}'" for w in words) + ".")
    lines.append("  (Shifts in nats per token: +0.69 means twice as likely. 'you' is the share of your "
                 "messages using it, 'twin' of its drafts.)")
    return lines


# The cycle's own measurement (in the training child, training.nightly) ----------------------------

def measure_items(tokenizer: Any, model_settings: Any, feedback: Sequence[Any],
                  writing: Sequence[Any]) -> list[tuple[str, str]]:
    """(rendered prompt, owner's text) of the held-out examples, rendered as training renders them."""
    from training.datasets import make_renderer
    from training.evaluate import eval_items

    render = make_renderer(tokenizer, model_settings)
    return [(render(item.conversation), item.kept) for item in eval_items(feedback, writing)]


def insight_for_cycle(job: dict[str, Any], *, folder: Path, adapter_dir: Path) -> dict[str, Any]:
    """The insight of a promoted candidate, measured in the training child within `insight.cycle_budget_s`.

    Against the base model, with the update sizes of the adapter it was trained from beside it;
    on the cycle's own held-out data. Returns what the cycle stores in metrics["insight"]:
    {"insight": ..., "charts": [...], "seconds": ...}, or {"skipped": why} when it is off, did not
    fit the budget or failed (the cycle never fails for it)."""
    from training.examples import feedback_from_json, writing_from_json
    from training.nightly import EXAMPLES_FILE
    from training.artifacts import read_manifest
    from training.config import GenerationSettings, InsightSettings, ModelSettings
    from training.inference.engine import Engine as ModelEngine
    from training.insight_charts import write_insight_charts

    settings = InsightSettings(**job.get("insight", {}))
    if settings.cycle_budget_s <= 0:
        return {"skipped": "not measured in the cycle (insight.cycle_budget_s = 0)"}
    started, deadline = time.perf_counter(), time.monotonic() + settings.cycle_budget_s
    try:
        model_settings, generation = ModelSettings(**job["model"]), GenerationSettings(**job["generation"])
        examples = json.loads((folder / EXAMPLES_FILE).read_text(encoding="utf-8"))
        model = ModelEngine.load(model_settings, Path(job["models_dir"]), max_adapters=3,
                                 llamacpp_weights=generation.llamacpp_weights)
        items = measure_items(model.tokenizer, model_settings,
                              [feedback_from_json(item) for item in examples["heldout_feedback"]],
                              [writing_from_json(item) for item in examples["heldout_writing"]])
        if not items:
            return {"skipped": "no held-out replies to measure it on"}
        previous_dir = Path(job["active_adapter"]) if job.get("active_adapter") else None
        previous = None
        if previous_dir is not None:
            previous = (read_manifest(previous_dir).get("metadata") or {}).get("version")
        insight = measure_insight(model, adapter_dir=adapter_dir, version=int(job["metadata"]["version"]),
                                  items=items, owner_texts=examples.get("owner_lines") or [item[1] for item in items],
                                  generation=generation, settings=settings, previous_dir=previous_dir,
                                  previous_version=previous, seed=generation.seed, deadline=deadline)
        charts = write_insight_charts(insight, folder / "insight")
    except OverBudget:
        return {"skipped": f"measuring it takes longer than the cycle allows (insight.cycle_budget_s = "
                           f"{settings.cycle_budget_s:g} s)"}
    except Exception as error:  # noqa: BLE001 - a report without its insight beats a failed cycle
        logger.warning("measuring the insight failed: %s", error, exc_info=True)
        return {"skipped": f"it could not be measured ({type(error).__name__}: {error})"}
    return {"insight": insight.to_json(), "charts": [str(path) for path in charts],
            "seconds": round(time.perf_counter() - started, 2)}
