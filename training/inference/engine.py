"""Generation engine: one base model in memory, LoRA adapters loaded once and switched per call.

`Engine(model, tokenizer)` takes its parts, so tests run it on a tiny model; `Engine.load`
builds it from settings. Adapters are loaded with peft under their key (e.g. "42-v3"), switched
with `set_adapter`, and the base model is the same weights with adapters disabled. A small LRU
keeps memory bounded when versions come and go. One lock serialises generation: the bot calls
from worker threads and the adapter switch is global state.

`generation.backend` picks who decodes: transformers, or on a CPU llama.cpp or CTranslate2
(`training.inference.serving`: the same weights merged and converted once, about 5x and 1.7x as fast).
All sample the same way; if the converted path fails the engine logs why and drafts with
transformers from then on.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from training.config import GenerationSettings, ModelSettings

logger = logging.getLogger(__name__)

AdapterSpec = tuple[str, "str | Path"]  # (key, folder)
TextCallback = Callable[[str], None]  # the cleaned reply so far, while it is decoded

_STOP_MARKERS = ("<|im_end|>", "<|im_start|>", "<|endoftext|>")
_ROLE_HEADER = re.compile(r"^\s*(?:<\|im_start\|>)?\s*(?:assistant|user|system)\s*:?\s*\n", re.IGNORECASE)
_SPECIAL_TOKEN = re.compile(r"<\|[a-z_]+\|>")


@dataclass(frozen=True)
class GenerationOutput:
    text: str  # cleaned reply text ("" when the model produced nothing usable)
    new_tokens: int
    prefill_ms: float
    total_ms: float
    backend: str = "transformers"  # who decoded: transformers, llamacpp, ctranslate2 or ctranslate2-int8


def clean_generated(text: str) -> str:
    """The reply alone: without role headers, cut at the end of the turn, no template tokens."""
    while True:  # a model may open with "assistant\n" (or a whole turn header) before the text
        stripped = _ROLE_HEADER.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    cuts = [index for index in (text.find(marker) for marker in _STOP_MARKERS) if index >= 0]
    if cuts:
        text = text[:min(cuts)]
    return _SPECIAL_TOKEN.sub("", text).strip()


class PrefillTimer:
    """A logits processor that notes when the first token's logits arrive (end of prefill)."""

    def __init__(self) -> None:
        self.first_call: float | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.first_call is None:
            self.first_call = time.perf_counter()
        return scores


class TextFollower:
    """Turns the token ids decoded so far into the cleaned reply so far for an `on_text` callback.

    Called from the decoding loop after every token: the text is decoded and cleaned as the final
    one is (so a role header or an end-of-turn marker never shows), and passed on only when it
    changed. A callback that fails is logged once and dropped: streaming must never cost the draft.
    """

    def __init__(self, tokenizer: Any, on_text: TextCallback):
        self.tokenizer = tokenizer
        self.on_text: TextCallback | None = on_text
        self.last = ""

    def __call__(self, ids: Sequence[int]) -> None:
        if self.on_text is None:
            return
        text = clean_generated(self.tokenizer.decode(list(ids), skip_special_tokens=False))
        if not text or text == self.last:
            return
        self.last = text
        try:
            self.on_text(text)
        except Exception:  # noqa: BLE001 - the draft goes on without its preview
            logger.exception("streaming a draft's text failed; the draft goes on without it")
            self.on_text = None


class _TokenStreamer:
    """transformers' streamer interface (`put` / `end`): hands the new token ids to `on_token`.

    `generate` puts the prompt first, then each new token; the prompt is skipped.
    """

    def __init__(self, on_token: Callable[[list[int]], None]):
        self.on_token = on_token
        self.ids: list[int] = []
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.ids.extend(int(token) for token in value.reshape(-1).tolist())
        self.on_token(list(self.ids))

    def end(self) -> None:
        pass


class _GeneratedTokensRepetitionPenalty:
    """CTRL's repetition penalty over the reply's own tokens only.

    transformers' built-in penalty also covers the prompt, which holds the chat template's
    `<|im_end|>` and the incoming message: it taught drafts not to stop and not to reuse the other
    person's words. Penalising only what the reply has said so far is what CTranslate2 does too,
    so both backends sample from the same distribution.
    """

    def __init__(self, prompt_length: int, penalty: float):
        self.prompt_length = prompt_length
        self.penalty = penalty

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        generated = input_ids[:, self.prompt_length:]
        if self.penalty == 1.0 or generated.shape[1] == 0:
            return scores
        picked = scores.gather(1, generated)
        picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return scores.scatter(1, generated, picked)


def left_padded(sequences: Sequence[list[int]], pad_id: int, *, device: Any = None) -> tuple[Any, Any]:
    """(input_ids, attention_mask) of token sequences padded on the left, so every row's next
    token comes at the same position; the mask hides the padding from attention."""
    import torch

    width = max(len(ids) for ids in sequences)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids in sequences], device=device)
    attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in sequences], device=device)
    return input_ids, attention


class Engine:
    """Drafts text with a base model and any of its loaded adapters."""

    def __init__(self, model: Any, tokenizer: Any, *, max_adapters: int = 4, serving: Any = None):
        self.model = model
        self.tokenizer = tokenizer
        self.max_adapters = max(1, max_adapters)
        self._adapters: OrderedDict[str, str] = OrderedDict()  # key -> folder, least recently used first
        self._lock = threading.RLock()
        self.serving = serving  # training.inference.serving.ServingCache, or None: transformers only
        self.serving_failure: str | None = None  # why the converted backend was given up, once it was
        self.model.eval()

    @classmethod
    def load(cls, settings: ModelSettings, models_dir: Path, *, max_adapters: int = 4,
             llamacpp_weights: str = "f16") -> "Engine":
        """Resolve, load and wrap the configured base model (the embedded one is converted once);
        `llamacpp_weights` is generation.llamacpp_weights, the weights llama.cpp drafts with."""
        from training.model import load_model, load_tokenizer, resolve_base_model
        from training.inference.serving import ServingCache

        path = resolve_base_model(settings, Path(models_dir))
        tokenizer = load_tokenizer(path)
        # One fp32 copy in memory at a time: reloading another takes ~0.3 s.
        serving = ServingCache.in_models_dir(path, Path(models_dir), tokenizer=tokenizer, threads=settings.threads,
                                             llamacpp_weights=llamacpp_weights)
        return cls(load_model(path, settings), tokenizer, max_adapters=max_adapters, serving=serving)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    @property
    def loaded_adapters(self) -> list[str]:
        return list(self._adapters)

    def encode(self, prompt_text: str) -> list[int]:
        """Prompt token ids, tokenised exactly as trl tokenises a training prompt."""
        return list(self.tokenizer(prompt_text)["input_ids"])

    def stop_token_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        for marker in ("<|im_end|>", "<|im_start|>"):
            token = self.tokenizer.convert_tokens_to_ids(marker)
            if isinstance(token, int) and token != self.tokenizer.unk_token_id:
                ids.add(token)
        return sorted(i for i in ids if i is not None)

    # Adapters ----------------------------------------------------------------------------------
    # peft's own API: transformers 5.24's `model.load_adapter` integration needs peft >= 0.22,
    # and we pin peft 0.21. The base model is wrapped in a PeftModel on the first adapter and
    # unwrapped again when the last one is unloaded.

    @staticmethod
    def adapter_name(key: str) -> str:
        """peft's name for an adapter key: module-name-safe, and never a substring of "lora_"
        (peft warns that such names, e.g. "a", can reinitialise weights on load)."""
        return "twin_" + re.sub(r"[^A-Za-z0-9_-]", "_", key)

    def _ensure_adapter(self, key: str, path: str | Path) -> None:
        folder = str(path)
        if self._adapters.get(key) == folder:
            self._adapters.move_to_end(key)
            return
        if key in self._adapters:  # same key, other folder: the old weights are stale
            self.unload_adapter(key)
        from training.artifacts import verify_adapter

        verify_adapter(folder)  # damaged weights must never speak for the owner
        started = time.perf_counter()
        if self._adapters:
            self.model.load_adapter(folder, adapter_name=self.adapter_name(key))
        else:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, folder, adapter_name=self.adapter_name(key))
            self.model.eval()
        self._adapters[key] = folder
        logger.info("loaded adapter %s from %s in %.2f s", key, folder, time.perf_counter() - started)
        while len(self._adapters) > self.max_adapters:  # evict after loading: one adapter always remains
            oldest = next(iter(self._adapters))
            logger.info("unloading adapter %s (least recently used)", oldest)
            self.unload_adapter(oldest)

    def unload_adapter(self, key: str) -> None:
        """Free an adapter's weights; the base model is unwrapped when no adapter is left."""
        with self._lock:
            if self._adapters.pop(key, None) is None:
                return
            if self._adapters:
                name = self.adapter_name(key)
                if name in self.model.active_adapters:
                    self.model.set_adapter(self.adapter_name(next(reversed(self._adapters))))
                self.model.delete_adapter(name)
            else:
                self.model = self.model.unload()  # removes the LoRA layers, restores the plain modules

    @contextlib.contextmanager
    def using(self, adapter: AdapterSpec | None) -> Iterator[Any]:
        """Hold the engine with `adapter` active (None: the base model) and yield the model."""
        with self._lock:
            if adapter is None:
                with self.model.disable_adapter() if self._adapters else contextlib.nullcontext():
                    yield self.model
                return
            key, path = adapter
            self._ensure_adapter(key, path)
            self.model.set_adapter(self.adapter_name(key))
            yield self.model

    # Generation ----------------------------------------------------------------------------------

    def backend_for(self, settings: GenerationSettings) -> str:
        """The backend a call with these settings uses on this engine."""
        requested = getattr(settings, "backend", "transformers")
        if self.serving is None:
            return "transformers"
        backend = self.serving.resolve(requested, str(self.device.type))
        if backend != "transformers" and self.serving_failure is not None:
            return "transformers"
        return backend

    def prepare(self, adapter: AdapterSpec | None, *, settings: GenerationSettings) -> None:
        """Have `adapter` ready to draft with: converted and loaded for llama.cpp or CTranslate2, or loaded in torch."""
        with self._lock:
            backend = self.backend_for(settings)
            if backend == "transformers":
                with self.using(adapter):
                    return
            self._on_serving(adapter, backend, lambda folder: self.serving.generator(folder, backend))

    def warm_prompt(self, prefix_text: str, adapter: AdapterSpec | None, *, settings: GenerationSettings) -> int:
        """Read the text every prompt opens with (the system text) into the drafting backend's
        prompt cache before the first draft (llama.cpp; a no-op elsewhere); returns tokens read."""
        ids = self.encode(prefix_text)
        with self._lock:
            backend = self.backend_for(settings)
            if backend == "transformers" or not ids:
                return 0
            read = self._on_serving(adapter, backend, lambda folder: self.serving.warm(
                ids, adapter_folder=folder, backend=backend))
            return int(read or 0)

    def generate(self, prompt_text: str, *, settings: GenerationSettings, seed: int,
                 adapter: AdapterSpec | None = None, on_text: TextCallback | None = None) -> GenerationOutput:
        """Sample one reply to a rendered prompt; stops at the end of the turn or max_new_tokens.

        `on_text(reply so far)` is called while it is decoded (cleaned as the final text is, only
        when it changed), from the calling thread; the returned text is the final one.
        """
        started = time.perf_counter()
        prompt_ids = self.encode(prompt_text)
        follower = TextFollower(self.tokenizer, on_text) if on_text is not None else None
        with self._lock:
            backend = self.backend_for(settings)
            new_ids: list[int] | None = None
            if backend != "transformers":
                new_ids, prefill_ms = self._generate_served(prompt_ids, settings, seed, adapter, backend, follower)
            if new_ids is None:
                backend = "transformers"
                new_ids, prefill_ms = self._generate_transformers(prompt_ids, settings, seed, adapter, follower)
        finished = time.perf_counter()
        raw = self.tokenizer.decode(new_ids, skip_special_tokens=False)
        return GenerationOutput(text=clean_generated(raw), new_tokens=len(new_ids),
                                prefill_ms=round(prefill_ms, 1),
                                total_ms=round((finished - started) * 1000, 1), backend=backend)

    def generate_many(self, prompt_texts: Sequence[str], *, settings: GenerationSettings, seed: int,
                      adapter: AdapterSpec | None = None, batch_size: int = 16) -> list[GenerationOutput]:
        """One sampled reply per rendered prompt, for evaluations that draft dozens at once.

        Decoded with torch in left-padded batches of `batch_size`, whatever `settings.backend`
        says: one sequence at a time is bound by reading every weight per token, so a batch of 16
        drafts ~3.5x as many per second as transformers one by one and ~2x CTranslate2 one by one
        (SmolLM2, 2 cores). Seeded per batch, so the same prompts and seed give the same drafts
        and versions compare. CTranslate2 is not used: with prompts of different lengths it feeds
        the longer prompts' last tokens step by step and penalises them as repeats (the
        end-of-turn token among them). `total_ms` is each reply's share of its batch's time.
        """
        import torch
        from transformers import LogitsProcessorList

        encoded = [self.encode(text) for text in prompt_texts]
        order = sorted(range(len(encoded)), key=lambda index: len(encoded[index]))  # less padding
        stops = set(self.stop_token_ids())
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(stops)
        outputs: dict[int, GenerationOutput] = {}
        with self._lock, self.using(adapter) as model:
            for start in range(0, len(order), max(1, batch_size)):
                chunk = order[start:start + max(1, batch_size)]
                started = time.perf_counter()
                input_ids, attention = left_padded([encoded[index] for index in chunk], pad, device=self.device)
                width = input_ids.shape[1]
                penalty = _GeneratedTokensRepetitionPenalty(width, settings.repetition_penalty)
                torch.manual_seed(seed + start)
                with torch.inference_mode():
                    generated = model.generate(
                        input_ids=input_ids, attention_mask=attention,
                        do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=0,
                        max_new_tokens=settings.max_new_tokens, eos_token_id=sorted(stops), pad_token_id=pad,
                        logits_processor=LogitsProcessorList([penalty]))
                share = (time.perf_counter() - started) * 1000 / len(chunk)
                for index, row in zip(chunk, generated[:, width:].tolist()):
                    ends = [position for position, token in enumerate(row) if token in stops]
                    new_ids = row[:ends[0] + 1] if ends else row  # after the first stop there is only padding
                    raw = self.tokenizer.decode(new_ids, skip_special_tokens=False)
                    outputs[index] = GenerationOutput(text=clean_generated(raw), new_tokens=len(new_ids),
                                                      prefill_ms=0.0, total_ms=round(share, 1))
        return [outputs[index] for index in range(len(encoded))]

    def _on_serving(self, adapter: AdapterSpec | None, backend: str, call: Any) -> Any:
        """`call(adapter folder or None)` on the converted backend's side; None after giving it up.

        The adapter is verified first: CorruptAdapter reaches the drafter, which falls back to the
        base model. Any other failure makes this engine draft with transformers from then on.
        """
        from training.inference.serving import LABELS, ServingError

        folder = None
        if adapter is not None:
            from training.artifacts import verify_adapter

            folder = str(adapter[1])
            if not self.serving.loaded(folder, backend):  # checked when loaded, as on the transformers path
                verify_adapter(folder)
        try:
            return call(folder)
        except (ServingError, ImportError, RuntimeError, ValueError) as error:
            self.serving_failure = f"{type(error).__name__}: {error}"
            logger.error("%s drafting failed, drafting with transformers from now on: %s", LABELS[backend],
                         self.serving_failure)
            return None

    def _generate_served(self, prompt_ids: list[int], settings: GenerationSettings, seed: int,
                         adapter: AdapterSpec | None, backend: str,
                         follower: TextFollower | None = None) -> tuple[list[int] | None, float]:
        """The converted backend's draft, or (None, 0) after giving that backend up for this engine."""
        output = self._on_serving(adapter, backend, lambda folder: self.serving.generate(
            prompt_ids, adapter_folder=folder, backend=backend, settings=settings, seed=seed,
            stop_ids=self.stop_token_ids(), on_token=follower))
        return (None, 0.0) if output is None else (output.new_ids, output.prefill_ms)

    def _generate_transformers(self, prompt_ids: list[int], settings: GenerationSettings, seed: int,
                               adapter: AdapterSpec | None,
                               follower: TextFollower | None = None) -> tuple[list[int], float]:
        import torch
        from transformers import LogitsProcessorList

        started = time.perf_counter()
        with self.using(adapter) as model:
            input_ids = torch.tensor([prompt_ids], device=self.device)
            timer = PrefillTimer()
            penalty = _GeneratedTokensRepetitionPenalty(input_ids.shape[1], settings.repetition_penalty)
            # Sampling draws from torch's global generator: seeding it under the lock makes a
            # (prompt, adapter, seed) triple reproducible even with several threads drafting.
            torch.manual_seed(seed)
            with torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                    do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=0,
                    max_new_tokens=settings.max_new_tokens,
                    eos_token_id=self.stop_token_ids(), pad_token_id=self.tokenizer.pad_token_id,
                    logits_processor=LogitsProcessorList([penalty, timer]),
                    streamer=_TokenStreamer(follower) if follower is not None else None)
        finished = time.perf_counter()
        return output[0, input_ids.shape[1]:].tolist(), ((timer.first_call or finished) - started) * 1000
