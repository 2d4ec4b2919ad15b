"""Fast CPU drafting: the base model, or base + adapter merged, converted once for llama.cpp or CTranslate2.

Why: on a 2-core CPU transformers' `generate` takes ~3.8 s for a 40-token reply. llama.cpp on
fp16 weights (`training.inference.llamacpp`) takes ~0.7 s at the same held-out likelihood (within 0.01%);
it needs the vocabulary of a GGUF file, so it serves bases that came from one (the embedded
model). CTranslate2 on the very same fp32 weights takes ~2.2 s for any base (log-likelihoods
agree to 1e-5). Figures: bench/RESULTS.md.

Neither applies a LoRA adapter on the fly at full speed, so each (base, adapter) pair is merged
with peft and converted once, by whichever process needs it first (the training child for a
candidate the gate will promote, or the bot on its first draft): the base model's under
`models_dir/serving/`, an adapter's inside its own folder, named after the base and the
adapter's checksum so a stale conversion can never be used. Folders are written staged and
renamed, so a killed conversion leaves nothing half-made.

Sampling matches the transformers path of `training.inference.engine`: full-vocabulary top-p sampling at the
same temperature, and a repetition penalty over the reply's own tokens (the prompt is not
penalised on any path). On CTranslate2 a seed does not replay a draft (see `generate`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from training.config import LLAMACPP_WEIGHTS
from training.errors import ServingError

logger = logging.getLogger(__name__)

# The weights of each converted backend: llama.cpp fp16 (unless generation.llamacpp_weights picks bf16 or a
# quantized type, as the product's default q8_0 is: `ServingCache.llamacpp_weights`) and
# CTranslate2 fp32 keep drafts identical in quality; CTranslate2 int8 (per-row scales) is ~1.4x faster than its fp32 and costs 0.2-1% of
# held-out likelihood on SmolLM2.
QUANTIZATION = {"llamacpp": "float16", "ctranslate2": "float32", "ctranslate2-int8": "int8"}
LABELS = {"llamacpp": "llama.cpp", "ctranslate2": "CTranslate2", "ctranslate2-int8": "CTranslate2"}
COMPLETE_MARKER = "twin_serving_complete"
# llama.cpp's context (keys and values for this many tokens, ~47 MB per 1024 on SmolLM2 in fp32); a
# generator grows its own for a longer prompt.
LLAMACPP_CONTEXT = 2048


def ctranslate2_installed() -> bool:
    return importlib.util.find_spec("ctranslate2") is not None


def resolve_backend(requested: str, device: str, *, gguf_source: Path | None = None) -> str:
    """The backend a generation call really uses.

    "auto" on a CPU: llama.cpp when it is installed and the base came from a GGUF file
    (`gguf_source`, whose vocabulary it needs), else CTranslate2 when installed, else
    transformers. On a GPU transformers stays the default: there decoding speed is not the
    bottleneck and a converted copy would double the memory.
    """
    from training.inference.llamacpp import llamacpp_installed

    if requested == "openai":  # drafts come from a server; a local engine (evaluations, benchmarks) picks as "auto"
        requested = "auto"
    if requested != "auto":
        return requested
    if str(device) != "cpu":
        return "transformers"
    if gguf_source is not None and llamacpp_installed():
        return "llamacpp"
    return "ctranslate2" if ctranslate2_installed() else "transformers"


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ServingOutput:
    new_ids: list[int]
    prefill_ms: float


class ServingCache:
    """Converted models on disk and their loaded generators, least recently used evicted first."""

    def __init__(self, base_path: str | Path, folder: Path, *, tokenizer: Any, threads: int = 0,
                 max_loaded: int = 1, keep_on_disk: int = 3, gguf_source: Path | None = None,
                 llamacpp_weights: str = "f16"):
        if llamacpp_weights not in LLAMACPP_WEIGHTS:
            raise ServingError(f"llama.cpp has no weight type {llamacpp_weights!r}; expected one of "
                               f"{', '.join(LLAMACPP_WEIGHTS)}")
        self.base_path = str(base_path)
        self.gguf_source = gguf_source  # the GGUF file the base came from: llama.cpp's vocabulary
        self.llamacpp_weights = llamacpp_weights  # generation.llamacpp_weights: f16 or bf16, or a type quantized to
        self.folder = Path(folder)
        self.tokenizer = tokenizer
        self.threads = threads if threads > 0 else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
        self.max_loaded = max(1, max_loaded)
        self.keep_on_disk = max(1, keep_on_disk)
        self._loaded: OrderedDict[tuple[str, str], Any] = OrderedDict()

    @classmethod
    def in_models_dir(cls, base_path: str | Path, models_dir: Path, *, tokenizer: Any, threads: int = 0,
                      llamacpp_weights: str = "f16") -> "ServingCache":
        """The cache every process of one data folder shares: base conversions under models/serving."""
        from training.model import gguf_source

        return cls(base_path, Path(models_dir) / "serving", tokenizer=tokenizer, threads=threads,
                   gguf_source=gguf_source(base_path), llamacpp_weights=llamacpp_weights)

    def resolve(self, requested: str, device: str) -> str:
        """`resolve_backend` for this cache's base model."""
        return resolve_backend(requested, device, gguf_source=self.gguf_source)

    # Naming -----------------------------------------------------------------------------------

    def folder_for(self, adapter_folder: str | Path | None, backend: str) -> Path:
        """Where the conversion of (base, adapter) for `backend` lives.

        The base model's goes under the shared `folder`; an adapter's goes inside the adapter's own
        folder, since merged weights are the owner's as much as the adapter is: forgetting an owner
        or deleting a version removes them with it. The name carries the base and the adapter's
        checksum, so a conversion never outlives the weights it was made from.
        """
        base = _short_hash(str(Path(self.base_path).resolve()) if Path(self.base_path).exists() else self.base_path)
        # CTranslate2's folders were named before there were other backends, llama.cpp's fp16 ones before
        # it had other weight types: their names stay valid.
        quantization = QUANTIZATION[backend] if backend.startswith("ctranslate2") else f"{backend}-{self.weights(backend)}"
        if adapter_folder is None:
            return self.folder / f"{base}-base-{quantization}"
        from training.artifacts import read_manifest

        checksum = str(read_manifest(Path(adapter_folder)).get("checksum", ""))
        if not checksum:
            raise ServingError(f"adapter {adapter_folder} has no checksum to name its conversion by")
        return Path(adapter_folder) / f"serving-{base}-{checksum[:12]}-{quantization}"

    def weights(self, backend: str) -> str:
        """The weight type of `backend`'s conversions: QUANTIZATION's, or for llama.cpp the configured one."""
        if backend == "llamacpp" and self.llamacpp_weights != "f16":
            return self.llamacpp_weights
        return QUANTIZATION[backend]

    # Conversion ---------------------------------------------------------------------------------

    def ensure_converted(self, adapter_folder: str | Path | None, backend: str) -> Path:
        """The converted folder, converting now when it is missing (callers verify the adapter first)."""
        target = self.folder_for(adapter_folder, backend)
        if (target / COMPLETE_MARKER).exists():
            os.utime(target)  # most recently used: kept by the pruning below
            return target
        staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        started = time.perf_counter()
        try:
            if target.exists():  # interrupted or damaged: never half-trust it
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            self._convert(adapter_folder, staging, backend)
            (staging / COMPLETE_MARKER).write_text("complete\n", encoding="utf-8")
            try:
                os.rename(staging, target)
            except OSError:
                if not (target / COMPLETE_MARKER).exists():  # not another process winning the race
                    raise
        except Exception as error:
            raise ServingError(f"cannot convert {adapter_folder or self.base_path} for {LABELS[backend]}: {error}") from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("converted %s for %s (%s) in %.1f s", adapter_folder or self.base_path, LABELS[backend],
                    self.weights(backend), time.perf_counter() - started)
        self._prune(target)
        return target

    def _convert(self, adapter_folder: str | Path | None, staging: Path, backend: str) -> None:
        staging.mkdir(parents=True)
        if backend == "llamacpp":
            from training.inference.llamacpp import MODEL_FILE, WRITTEN_DIRECTLY, quantize_gguf, write_model_gguf

            if self.gguf_source is None:
                raise ServingError("llama.cpp drafting needs a base model that came from a GGUF file (the embedded one)")
            # llama.cpp quantizes from a file: a quantized type's fp16 step is written beside it, then removed.
            direct = WRITTEN_DIRECTLY.get(self.llamacpp_weights)
            written = write_model_gguf(self._fp32_model(adapter_folder), self.gguf_source,
                                       staging / (MODEL_FILE if direct else "model-f16.gguf"), matrix_dtype=direct)
            if not direct:
                quantize_gguf(written, staging / MODEL_FILE, self.llamacpp_weights, threads=self.threads)
                written.unlink()
            return
        import ctranslate2

        quantization = QUANTIZATION[backend]
        source = self.base_path
        if adapter_folder is not None:
            source = str(staging / "merged")
            self._write_merged(Path(adapter_folder), Path(source))
        converter = ctranslate2.converters.TransformersConverter(source, low_cpu_mem_usage=True)
        converter.convert(str(staging / "model"), quantization=quantization, force=True)
        if adapter_folder is not None:
            shutil.rmtree(source)
        for path in (staging / "model").iterdir():  # flat layout: the folder itself is the model
            os.rename(path, staging / path.name)
        (staging / "model").rmdir()

    def _fp32_model(self, adapter_folder: str | Path | None) -> Any:
        """A fresh fp32 copy of the base, with the adapter merged in (peft's merge_and_unload) if given."""
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.base_path, dtype=torch.float32)
        if adapter_folder is None:
            return model
        return PeftModel.from_pretrained(model, str(adapter_folder)).merge_and_unload()

    def _write_merged(self, adapter_folder: Path, target: Path) -> None:
        self._fp32_model(adapter_folder).save_pretrained(str(target))
        self.tokenizer.save_pretrained(str(target))  # CTranslate2's converter builds its vocabulary from it

    def _prune(self, keep: Path) -> None:
        """Keep the most recently used conversions of this kind; delete older ones.

        Base conversions are pruned among themselves in `folder`; an adapter's among those of its
        sibling versions (one owner's adapters folder). A generator already loaded holds its own
        copy in memory, so a process still drafting with a deleted conversion is not disturbed.
        """
        for leftover in keep.parent.glob(".*.tmp-*"):  # a conversion killed more than an hour ago
            if time.time() - leftover.stat().st_mtime > 3600:
                shutil.rmtree(leftover, ignore_errors=True)
        if keep.parent == self.folder:
            candidates = [p for p in self.folder.iterdir() if p.is_dir()]
        else:
            candidates = [p for p in keep.parent.parent.glob("*/serving-*") if p.is_dir()]
        done = [p for p in candidates if (p / COMPLETE_MARKER).exists()]
        done.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for path in done[self.keep_on_disk:]:
            if path != keep:
                logger.info("removing old conversion for drafting %s", path)
                shutil.rmtree(path, ignore_errors=True)

    # Generation ---------------------------------------------------------------------------------------

    @staticmethod
    def _key(adapter_folder: str | Path | None, backend: str) -> tuple[str, str]:
        # Adapter folders are never rewritten in place, so the folder names the weights while loaded.
        return (str(adapter_folder) if adapter_folder is not None else "", backend)

    def loaded(self, adapter_folder: str | Path | None, backend: str) -> bool:
        """Whether drafting with this adapter is ready in memory (no disk work on the next draft)."""
        return self._key(adapter_folder, backend) in self._loaded

    def generator(self, adapter_folder: str | Path | None, backend: str) -> Any:
        key = self._key(adapter_folder, backend)
        if key in self._loaded:  # the hot path: every draft after the first
            self._loaded.move_to_end(key)
            return self._loaded[key]
        target = self.ensure_converted(adapter_folder, backend)
        if backend == "llamacpp":
            from training.inference.llamacpp import MODEL_FILE, LlamaGenerator

            generator = LlamaGenerator(target / MODEL_FILE, threads=self.threads, context_tokens=LLAMACPP_CONTEXT)
        else:
            generator = self._ctranslate2_generator(target)
        self._loaded[key] = generator
        while len(self._loaded) > self.max_loaded:
            self._close(self._loaded.popitem(last=False)[1])
        return generator

    @staticmethod
    def _close(generator: Any) -> None:
        from training.inference.llamacpp import LlamaGenerator

        if isinstance(generator, LlamaGenerator):  # frees llama.cpp's memory now, not at interpreter exit
            generator.close()

    def _ctranslate2_generator(self, target: Path) -> Any:
        import ctranslate2

        # "default" keeps the converted weight type; "auto" would silently pick int8 or bf16 on CPUs that have them.
        return ctranslate2.Generator(str(target), device="cpu", compute_type="default", intra_threads=self.threads)

    def warm(self, prefix_ids: Sequence[int], *, adapter_folder: str | Path | None, backend: str) -> int:
        """Read the prompts' common opening into llama.cpp's cache (no-op elsewhere); tokens evaluated."""
        generator = self.generator(adapter_folder, backend)
        return generator.warm(prefix_ids) if backend == "llamacpp" else 0

    def generate(self, prompt_ids: Sequence[int], *, adapter_folder: str | Path | None, backend: str,
                 settings: Any, seed: int, stop_ids: Sequence[int],
                 on_token: Callable[[list[int]], None] | None = None) -> ServingOutput:
        """Sample one continuation of `prompt_ids`; stops at any of `stop_ids` (not returned).
        `on_token(ids so far)` follows the decoding token by token (streamed drafts)."""
        generator = self.generator(adapter_folder, backend)
        if backend == "llamacpp":
            output = generator.generate(prompt_ids, settings=settings, seed=seed, stop_ids=stop_ids,
                                        on_token=on_token)
            return ServingOutput(new_ids=output.new_ids, prefill_ms=output.prefill_ms)
        import ctranslate2

        started = time.perf_counter()
        first_step: list[float] = []
        streamed: list[int] = []
        stops = set(stop_ids)

        def on_step(step: Any) -> bool:
            if not first_step:
                first_step.append(time.perf_counter())
            if on_token is not None and step.token_id not in stops:
                streamed.append(step.token_id)
                on_token(list(streamed))
            return False

        # CTranslate2 seeds a sampler per worker thread when the thread first samples: the seed
        # only matters for the first draft of a generator, later drafts go on from its state. A
        # draft is therefore not replayed by its seed on this backend (transformers' path is).
        ctranslate2.set_random_seed(seed)
        result = generator.generate_batch(
            [self.tokenizer.convert_ids_to_tokens(list(prompt_ids))], max_length=settings.max_new_tokens,
            sampling_topk=0, sampling_topp=settings.top_p, sampling_temperature=settings.temperature,
            repetition_penalty=settings.repetition_penalty, end_token=list(stop_ids),
            include_prompt_in_result=False, callback=on_step)
        finished = time.perf_counter()
        return ServingOutput(new_ids=list(result[0].sequences_ids[0]),
                             prefill_ms=round(((first_step[0] if first_step else finished) - started) * 1000, 1))


def prepare_for_drafting(model_settings: Any, backend: str, models_dir: Path,
                         adapter_folder: str | Path | None = None, *, llamacpp_weights: str = "f16") -> Path | None:
    """Convert the base model (`twin init`), or base + adapter (a candidate about to be promoted),
    for drafting now, so the first draft does not wait for it.

    Returns the converted folder, or None when drafting will use transformers or a server ("openai").
    `llamacpp_weights` is generation.llamacpp_weights (llama.cpp's weight type).
    """
    from training.model import load_tokenizer, resolve_base_model, select_device

    if backend == "openai":  # the drafting server's files are written when adapters are registered
        return None
    base_path = resolve_base_model(model_settings, Path(models_dir))
    cache = ServingCache.in_models_dir(base_path, Path(models_dir), tokenizer=load_tokenizer(base_path),
                                       threads=model_settings.threads, llamacpp_weights=llamacpp_weights)
    resolved = cache.resolve(backend, select_device(model_settings))
    if resolved == "transformers":
        return None
    return cache.ensure_converted(adapter_folder, resolved)
