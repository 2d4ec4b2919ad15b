"""Fast CPU drafting with llama.cpp: the fp32 model (base, or base + adapter merged) as a GGUF file.

Why: on a 2-core CPU llama.cpp drafts a 40-token reply in about a third of CTranslate2's time
with fp16 weights that keep the held-out likelihood within 0.01% of the fp32 model's
(bench/RESULTS.md). Its quantized formats are smaller and faster, but round the weights (and, in
every product, the activations to 8 bits), which costs held-out likelihood. Q8_0 (the product's
default, `generation.llamacpp_weights`) decodes a token about a quarter sooner for 0.2-0.3% of
the simulated owner's held-out likelihood, and its drafts are attributed to the owner as often as
fp16's (within fp16's standard error, bench.draft_latency's levers); Q6_K and Q5_K_M cost more.
They are made by llama.cpp's own quantizer from the fp16 file (`quantize_gguf`). bf16 is written
straight from the fp32 weights: it scores text as fp16 does and reads a prompt about a quarter
sooner where the CPU multiplies bf16 natively (AVX512_BF16), slower elsewhere, and its drafts were
attributed to the owner less often than fp16's in two runs, so it is a named choice only.

The GGUF file is written here from the same fp32 weights that transformers and CTranslate2 use
(`write_model_gguf`): the tensors renamed by gguf's own table and the query/key rows put back in
llama.cpp's order, hyperparameters from the model's config, the vocabulary copied from the GGUF
file the base came from (tokenizer.ggml.*), so only a Llama-family base that came from a GGUF
file can be drafted here (the embedded one). We pass token ids in and decode them with the
Hugging Face tokenizer, so llama.cpp's own tokenizer is never used.

Sampling follows transformers' order: a repetition penalty over the reply's own tokens, the
temperature, full-vocabulary top-p, then a draw seeded per draft, so a seed replays a draft.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import logging
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from training.errors import GgufWriteError, ServingError

# gguf's writer logs its own progress at INFO ("This GGUF file is for Little Endian only"...),
# which would land in the terminal chat between a message and its draft.
logging.getLogger("gguf").setLevel(logging.WARNING)

MODEL_FILE = "model.gguf"
# Matrices are written in fp16 unless asked otherwise (norms stay fp32, as in llama.cpp's own converter).
MATRIX_DTYPE = "float16"
# general.file_type: llama.cpp's LLAMA_FTYPE_ALL_F32, LLAMA_FTYPE_MOSTLY_F16 and LLAMA_FTYPE_MOSTLY_BF16.
_FILE_TYPES = {"float32": 0, "float16": 1, "bfloat16": 32}
_GGML_TYPE_F32 = 0
# Each name of training.config.LLAMACPP_WEIGHTS -> llama.cpp's LLAMA_FTYPE_MOSTLY_*; a test holds the two to
# the same names.
WEIGHT_FTYPES = {"f16": 1, "bf16": 32, "q8_0": 7, "q6_k": 18, "q5_k_m": 17}
# The 16-bit types are written straight from the fp32 weights (`write_model_gguf`); the others are
# quantized from the fp16 file by llama.cpp's quantizer (`quantize_gguf`).
WRITTEN_DIRECTLY = {"f16": "float16", "bf16": "bfloat16"}


# llama.cpp's CPU backend is built with OpenMP (libgomp), which keeps a team of worker threads for
# each thread that calls into it; torch's bundled libgomp.so.1 is the same runtime once torch is
# loaded. Once a second thread has computed, the teams fight over the cores (2026-12-04, 2 cores,
# median of 6 drafts): the bot, drafting from a warm-up thread and asyncio's worker threads, took
# 1.5-1.9 s a draft instead of 0.8 s; llama.cpp on a thread of its own beside torch on the main
# thread (a nightly evaluation, a benchmark), 1.2 s instead of 0.7 s. So a process that drafts
# from many threads (`twin run` with the bot) calls `run_on_own_thread()` before its first draft,
# and every llama.cpp call then runs on one thread; others keep llama.cpp on the calling thread.
_LLAMA_THREAD_NAME = "llama.cpp"
_llama_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_LLAMA_THREAD_NAME)
_on_own_thread = False
_Result = TypeVar("_Result")


def run_on_own_thread(enabled: bool = True) -> None:
    """From now on run every llama.cpp call of this process on one thread (`on_llama_thread`)."""
    global _on_own_thread
    _on_own_thread = enabled


def on_llama_thread(function: Callable[..., _Result], *args: Any, **kwargs: Any) -> _Result:
    """`function(*args, **kwargs)` on the process's one llama.cpp thread when `run_on_own_thread`
    asked for it (the caller waits; an exception is raised in the caller), else here. Already on
    that thread, or at interpreter exit when it is gone, it runs here."""
    if not _on_own_thread or threading.current_thread().name.startswith(_LLAMA_THREAD_NAME):
        return function(*args, **kwargs)
    try:
        future = _llama_thread.submit(function, *args, **kwargs)
    except RuntimeError:  # the interpreter is shutting down: no new work for the pool
        return function(*args, **kwargs)
    return future.result()


def llamacpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def llama_cpp_row_order(rows: Any, heads: int) -> Any:
    """llama.cpp's order of query/key rows (its converter's `permute`): the rotary halves interleaved.

    transformers undoes it when it reads a GGUF file (`_reverse_permute_weights`), so the fp32
    model has Hugging Face's order and writing it back needs this.
    """
    return (rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:])
            .swapaxes(1, 2).reshape(rows.shape))


def write_model_gguf(model: Any, source_gguf: Path, target: Path, *, matrix_dtype: str | None = None) -> Path:
    """Write a Llama-family transformers `model` (fp32, adapters merged) as a GGUF file.

    `source_gguf` is the GGUF file the base model was converted from: its vocabulary and
    general metadata are copied; the hyperparameters come from `model.config`. Matrices are
    written as `matrix_dtype` ("float16", "bfloat16" or "float32"; default MATRIX_DTYPE), norms in float32.
    """
    import gguf
    import numpy as np

    config = model.config
    if getattr(config, "model_type", None) != "llama":
        raise GgufWriteError(f"llama.cpp drafting writes Llama-family models only, not {config.model_type!r}")
    reader = gguf.GGUFReader(str(source_gguf))
    architecture = reader.get_field("general.architecture").contents()
    if architecture != "llama":
        raise GgufWriteError(f"{source_gguf.name} is a {architecture!r} model, not a Llama-family one")
    matrix_dtype = matrix_dtype or MATRIX_DTYPE
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads

    writer = gguf.GGUFWriter(str(target), arch="llama")
    for field in reader.fields.values():  # the vocabulary and the model card, not the shape
        if field.name.startswith(("GGUF.", "llama.")) or field.name in ("general.architecture", "general.file_type"):
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None)
                                    or (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(_FILE_TYPES[matrix_dtype])

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for key, tensor in model.state_dict().items():
        if tied and key == "lm_head.weight":
            continue  # llama.cpp reuses token_embd for the output when there is no output.weight
        if key.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GgufWriteError(f"no GGUF name for the tensor {key}")
        data = tensor.detach().float().cpu().numpy()
        if name.endswith("attn_q.weight"):
            data = llama_cpp_row_order(data, heads)
        elif name.endswith("attn_k.weight"):
            data = llama_cpp_row_order(data, kv_heads)
        if data.ndim == 2 and matrix_dtype == "bfloat16":  # numpy has no bf16: gguf rounds to it, as llama.cpp's converter does
            writer.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(data), gguf.GGMLQuantizationType.BF16),
                              raw_dtype=gguf.GGMLQuantizationType.BF16)
            continue
        writer.add_tensor(name, np.ascontiguousarray(data.astype(matrix_dtype if data.ndim == 2 else np.float32)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def quantize_gguf(source: Path, target: Path, weights: str, *, threads: int = 0) -> Path:
    """Quantize the fp16 GGUF file `source` to `weights` ("q8_0", "q6_k", "q5_k_m") at `target`.

    llama.cpp's quantizer keeps the norms in fp32, and a matrix whose rows do not split into its
    blocks (32 values for Q8_0, 256 for the K types) gets a type that fits instead, as its
    `llama-quantize` does.
    """
    import llama_cpp

    if weights not in WEIGHT_FTYPES or weights in WRITTEN_DIRECTLY:
        raise ServingError(f"llama.cpp cannot quantize to {weights!r}; expected one of "
                           f"{', '.join(w for w in WEIGHT_FTYPES if w not in WRITTEN_DIRECTLY)}")
    # The quantizer logs every tensor through llama-cpp-python's logger, which prints below ERROR
    # until a model is opened quietly (as LlamaGenerator does); the terminal chat must not show it.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = WEIGHT_FTYPES[weights]
    params.nthread = threads
    status = on_llama_thread(llama_cpp.llama_model_quantize, str(source).encode(), str(target).encode(),
                             ctypes.byref(params))
    if status != 0 or not Path(target).is_file():
        raise ServingError(f"llama.cpp could not quantize {Path(source).name} to {weights} (status {status})")
    return Path(target)


@dataclass(frozen=True)
class LlamaOutput:
    new_ids: list[int]
    prefill_ms: float


_OPEN_GENERATORS: "weakref.WeakSet[LlamaGenerator]" = weakref.WeakSet()


@atexit.register
def _close_open_generators() -> None:
    # llama-cpp-python frees a model in __del__, which at interpreter exit can run after its
    # bindings are gone and print a TypeError traceback: free them while the bindings exist.
    for generator in list(_OPEN_GENERATORS):
        generator.close()


class LlamaGenerator:
    """One llama.cpp context on a GGUF model that samples drafts, one at a time. With
    `run_on_own_thread` the work runs on the process's llama.cpp thread, `on_token` too."""

    def __init__(self, model_gguf: Path, *, threads: int, context_tokens: int, lora_gguf: Path | None = None):
        self.model_gguf = Path(model_gguf)
        self.lora_gguf = lora_gguf  # a LoRA file applied on the fly (`write_lora_gguf`), as a drafting server does
        self.threads = threads
        on_llama_thread(self._open, context_tokens)
        _OPEN_GENERATORS.add(self)

    def _open(self, context_tokens: int) -> None:
        from llama_cpp import Llama

        self.context_tokens = context_tokens
        # Keys and values cached in fp32 (llama.cpp's default is fp16): on short chat prompts the
        # cache is a few MB next to the weights, and it keeps the logits those of the weights.
        self.llama = Llama(model_path=str(self.model_gguf), n_ctx=context_tokens, n_batch=min(512, context_tokens),
                           n_threads=self.threads, n_threads_batch=self.threads, type_k=_GGML_TYPE_F32,
                           type_v=_GGML_TYPE_F32, verbose=False,
                           lora_path=str(self.lora_gguf) if self.lora_gguf is not None else None)

    def _feed_prompt(self, prompt_ids: Sequence[int]) -> None:
        """Evaluate the prompt, keeping the cached keys and values of the part it shares with the
        last draft's (the system text; the earlier turns too when the same chat goes on)."""
        cached = self.llama.input_ids[:self.llama.n_tokens]
        shared = 0
        limit = min(len(cached), len(prompt_ids) - 1)  # one token at least is evaluated: its logits are sampled
        while shared < limit and cached[shared] == prompt_ids[shared]:
            shared += 1
        self.llama.n_tokens = shared  # eval() drops the cache beyond this point
        self.llama.eval(list(prompt_ids[shared:]))

    def warm(self, prefix_ids: Sequence[int]) -> int:
        """Read `prefix_ids` (the system text every prompt opens with) into the cache now, so the
        first draft reads only its own part; returns how many tokens were evaluated.

        The cache holds one sequence: a later prompt keeps what it shares with the one before, and
        every prompt opens with the system text, so it stays read across chats from then on.
        """
        return on_llama_thread(self._warm, prefix_ids)

    def _warm(self, prefix_ids: Sequence[int]) -> int:
        cached = self.llama.input_ids[:self.llama.n_tokens]
        shared = 0
        while shared < min(len(cached), len(prefix_ids)) and cached[shared] == prefix_ids[shared]:
            shared += 1
        if shared == len(prefix_ids):
            return 0
        self.llama.n_tokens = shared
        self.llama.eval(list(prefix_ids[shared:]))
        return len(prefix_ids) - shared

    def generate(self, prompt_ids: Sequence[int], *, settings: Any, seed: int, stop_ids: Sequence[int],
                 on_token: Callable[[list[int]], None] | None = None) -> LlamaOutput:
        """Sample one continuation of `prompt_ids`; stops at any of `stop_ids` (not returned).

        `on_token(ids so far)` is called after each sampled token (streaming); the caller keeps it cheap.
        """
        return on_llama_thread(self._generate, prompt_ids, settings=settings, seed=seed, stop_ids=stop_ids,
                               on_token=on_token)

    def _generate(self, prompt_ids: Sequence[int], *, settings: Any, seed: int, stop_ids: Sequence[int],
                  on_token: Callable[[list[int]], None] | None = None) -> LlamaOutput:
        import llama_cpp

        needed = len(prompt_ids) + settings.max_new_tokens
        if needed > self.context_tokens:  # a rare long prompt: a context that holds it, in steps of 1024
            self.llama.close()
            self._open(-(-needed // 1024) * 1024)
        started = time.perf_counter()
        self._feed_prompt(prompt_ids)
        prefill_ms = (time.perf_counter() - started) * 1000
        # The penalty sampler remembers only the tokens it draws (llama_sampler_sample accepts
        # each), so the prompt is not penalised, as on the other backends.
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        for sampler in (llama_cpp.llama_sampler_init_penalties(self.llama.n_vocab(), settings.max_new_tokens,
                                                               settings.repetition_penalty, 0.0, 0.0),
                        llama_cpp.llama_sampler_init_temp(settings.temperature),
                        llama_cpp.llama_sampler_init_top_p(settings.top_p, 1),
                        llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF)):
            llama_cpp.llama_sampler_chain_add(chain, sampler)
        stops = set(stop_ids)
        new_ids: list[int] = []
        try:
            while len(new_ids) < settings.max_new_tokens:
                token = llama_cpp.llama_sampler_sample(chain, self.llama.ctx, -1)
                if token in stops:
                    break
                new_ids.append(token)
                if on_token is not None:
                    on_token(list(new_ids))
                if len(new_ids) < settings.max_new_tokens:
                    self.llama.eval([token])
        finally:
            llama_cpp.llama_sampler_free(chain)  # and the samplers added to it
        return LlamaOutput(new_ids=new_ids, prefill_ms=round(prefill_ms, 1))

    def log_likelihoods(self, ids: Sequence[int], start: int) -> list[float]:
        """Log-probability of each of `ids[start:]` given the tokens before it (for quality checks)."""
        return on_llama_thread(self._log_likelihoods, ids, start)

    def _log_likelihoods(self, ids: Sequence[int], start: int) -> list[float]:
        import llama_cpp
        import numpy as np

        self.llama.n_tokens = 0
        self.llama.eval(list(ids[:start]))
        scores = []
        for position in range(start, len(ids)):
            row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.llama.ctx, -1),
                                        shape=(self.llama.n_vocab(),)).astype(np.float64)
            scores.append(float(row[ids[position]] - row.max() - np.log(np.exp(row - row.max()).sum())))
            self.llama.eval([ids[position]])
        return scores

    def close(self) -> None:
        """Free the model and its context (again is a no-op)."""
        on_llama_thread(self.llama.close)
        _OPEN_GENERATORS.discard(self)


# LoRA adapters as llama.cpp adapter files ---------------------------------------------------------
# A drafting server (llama-cpp-python's OpenAI-compatible server, training.inference.openai_server)
# applies an owner's LoRA on top of the base GGUF at load time instead of a merged copy per owner:
# one base file, a few MB per owner. The layout is the one llama.cpp's convert_lora_to_gguf.py writes.
LORA_FILE_PREFIX = "llamacpp-lora-"


def lora_gguf_name(checksum: str) -> str:
    """The adapter file's name inside the adapter folder, after the adapter's checksum: a stale
    conversion is never served, and forgetting the owner or the version removes it with the folder."""
    return f"{LORA_FILE_PREFIX}{checksum[:12]}.gguf"


def write_lora_gguf(adapter_folder: Path, base_gguf: Path, target: Path) -> Path:
    """Write the peft LoRA adapter in `adapter_folder` as a llama.cpp LoRA file for `base_gguf`.

    Each LoRA pair becomes `<gguf tensor>.lora_a` (r × in) and `.lora_b` (out × r), named by gguf's
    own table as in `write_model_gguf`; the query/key rows of B are put in llama.cpp's order (A
    acts on the inputs, which are not permuted). llama.cpp scales by adapter.lora.alpha / r, as peft does.
    """
    import json

    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    config = json.loads((Path(adapter_folder) / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("use_dora") or config.get("use_rslora") or config.get("peft_type", "LORA") != "LORA":
        raise GgufWriteError(f"{adapter_folder}: only plain LoRA adapters can be served by llama.cpp")
    reader = gguf.GGUFReader(str(base_gguf))
    architecture = reader.get_field("general.architecture").contents()
    if architecture != "llama":
        raise GgufWriteError(f"{Path(base_gguf).name} is a {architecture!r} model, not a Llama-family one")
    heads = int(reader.get_field("llama.attention.head_count").contents())
    kv_heads = int(reader.get_field("llama.attention.head_count_kv").contents())
    blocks = int(reader.get_field("llama.block_count").contents())
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, blocks)

    weights = load_file(str(Path(adapter_folder) / "adapter_model.safetensors"))
    writer = gguf.GGUFWriter(str(target), arch="llama")
    writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    written = 0
    for key in sorted(weights):
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if name is None:
            raise GgufWriteError(f"no GGUF name for the adapted module {module}")
        a = weights[key].astype(np.float32)
        b = weights[key.replace(".lora_A.", ".lora_B.")].astype(np.float32)
        if name.endswith("attn_q.weight"):
            b = llama_cpp_row_order(b, heads)
        elif name.endswith("attn_k.weight"):
            b = llama_cpp_row_order(b, kv_heads)
        writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a))
        writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(b))
        written += 1
    if not written:
        raise GgufWriteError(f"{adapter_folder} holds no LoRA weights")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
