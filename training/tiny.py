"""The fixture model of the tests and the quick benchmarks: a tiny randomly initialised Llama with
the real SmolLM2 tokenizer, and settings that train it fast.

Not used by the twin itself; it lives in training so that tests (`tests/tiny.py` re-exports it)
and `bench/` (`--quick`) share it without bench importing tests. The tokenizer is extracted from the embedded GGUF once per test session (about 6 s) so prompts,
special tokens and the chat template are exactly those of the real model; the network has
3.2M parameters, so SFT, DPO, KTO and generation each take about a second on CPU.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from training.config import EvaluationSettings, GenerationSettings, ModelSettings, StageSettings, TrainingSettings

TINY_SEED = 1234


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer_dir() -> Path:
    """The SmolLM2 tokenizer saved as a folder, extracted from the embedded GGUF once per process."""
    from transformers import AutoTokenizer

    from training.model import embedded_gguf_path

    gguf = embedded_gguf_path()
    folder = Path(tempfile.mkdtemp(prefix="twin-smollm2-tokenizer-"))
    atexit.register(shutil.rmtree, folder, True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(str(folder))
    return folder


def tiny_model() -> tuple[object, object]:
    """A tiny Llama (vocab 49152, hidden 64, 2 layers, tied embeddings) and the SmolLM2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir()))
    config = LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(TINY_SEED)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def build_tiny_model_dir(path: Path) -> Path:
    """Save the tiny Llama plus tokenizer at `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model, tokenizer = tiny_model()
    model.save_pretrained(str(path))  # type: ignore[attr-defined]
    tokenizer.save_pretrained(str(path))  # type: ignore[attr-defined]
    return path


def copy_model_dir(source: Path, target: Path) -> Path:
    """A private copy of a model folder, for a test that must not share one."""
    shutil.copytree(source, target)
    return target


def tiny_model_settings(path: Path, **overrides: object) -> ModelSettings:
    """Model settings for the tiny model on CPU, with short prompts."""
    values: dict[str, object] = {"base": str(path), "device": "cpu", "precision": "fp32", "owner_name": "Ada",
                                 "context_turns": 4, "max_prompt_tokens": 128, "threads": 0}
    values.update(overrides)
    return ModelSettings(**values)  # type: ignore[arg-type]


def tiny_training_settings(**overrides: object) -> TrainingSettings:
    """A few steps per stage with small batches and learning rates big enough to move a tiny LoRA."""
    def stage(**kw: object) -> StageSettings:
        base: dict[str, object] = {"epochs": 1.0, "learning_rate": 1e-2, "batch_size": 2, "max_length": 192,
                                   "max_steps": 3}
        base.update(kw)
        return StageSettings(**base)  # type: ignore[arg-type]

    values: dict[str, object] = {
        "sft": stage(),
        "dpo": stage(loss_type=["sigmoid", "sft"]),
        # KTO at a quarter of the others' rate, as in config.toml: it pushes the (here random)
        # accepted drafts up and the rejected ones down, and at 1e-2 it wrecks a tiny LoRA.
        "kto": stage(learning_rate=2.5e-3),
        "replay_fraction": 0.5, "monologue_chunk_tokens": 48, "seed": 7,
    }
    values.update(overrides)
    return TrainingSettings(**values)  # type: ignore[arg-type]


def tiny_generation_settings(**overrides: object) -> GenerationSettings:
    values: dict[str, object] = {"max_new_tokens": 12, "temperature": 1.0, "top_p": 0.95,
                                 "repetition_penalty": 1.1, "seed": 0, "max_attempts": 3,
                                 # tests of other layers keep the in-memory path; test_serving covers CTranslate2
                                 "backend": "transformers"}
    values.update(overrides)
    return GenerationSettings(**values)  # type: ignore[arg-type]


def tiny_evaluation_settings(**overrides: object) -> EvaluationSettings:
    values: dict[str, object] = {"holdout_fraction": 0.2, "min_holdout": 2, "max_eval_items": 4}
    values.update(overrides)
    return EvaluationSettings(**values)  # type: ignore[arg-type]


def build_tiny_gguf(path: Path) -> Path:
    """The tiny Llama as a float32 GGUF file carrying the embedded model's tokenizer and chat template.

    Lets the GGUF → safetensors conversion be tested in seconds instead of converting the real
    135M model. Written by the project's own GGUF writer (training.inference.llamacpp), in float32.
    """
    from training.inference.llamacpp import write_model_gguf
    from training.model import embedded_gguf_path

    return write_model_gguf(tiny_model()[0], embedded_gguf_path(), Path(path), matrix_dtype="float32")


def build_random_adapter(model_dir: Path, path: Path, *, seed: int, r: int = 4) -> Path:
    """A LoRA adapter with random (non-zero) weights for the tiny model: generation visibly changes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    config = LoraConfig(r=r, lora_alpha=4 * r, target_modules="all-linear", init_lora_weights=False,
                        task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(5.0)  # strong enough that sampled tokens differ from the base model's
    peft_model.save_pretrained(str(path))
    from training.artifacts import write_manifest

    write_manifest(Path(path), {"base_model": str(model_dir), "note": "random test adapter"})  # a complete adapter
    return Path(path)


# The embedded model's own shape, for adapters a drafting server applies to the real GGUF file --------
LORA_MODULES = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def build_random_gguf_adapters(base_gguf: Path, folder: Path, count: int, *, r: int = 4, scale: float = 0.02,
                               seed: int = 0) -> list[Path]:
    """`count` peft LoRA adapters with random weights shaped for the model in `base_gguf` (all linear
    modules), written straight from the file's hyperparameters: no model is loaded, so 50 owners'
    adapters for the embedded SmolLM2 take seconds. Each folder is complete (manifest and checksum).

    `scale` is the spread of B (A is N(0, 1/in)): enough to change sampled tokens, not to wreck them.
    """
    import gguf
    import numpy as np
    from peft import LoraConfig
    from safetensors.numpy import save_file

    from training.artifacts import write_manifest

    reader = gguf.GGUFReader(str(base_gguf))
    field = lambda name: int(reader.get_field(f"llama.{name}").contents())  # noqa: E731
    hidden, inner, layers = field("embedding_length"), field("feed_forward_length"), field("block_count")
    kv = hidden // field("attention.head_count") * field("attention.head_count_kv")
    shapes = {"q_proj": (hidden, hidden), "k_proj": (kv, hidden), "v_proj": (kv, hidden), "o_proj": (hidden, hidden),
              "gate_proj": (inner, hidden), "up_proj": (inner, hidden), "down_proj": (hidden, inner)}  # (out, in)
    config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, task_type="CAUSAL_LM",
                        target_modules=[m for group in LORA_MODULES.values() for m in group])
    folders = []
    for index in range(count):
        rng = np.random.default_rng(seed + index)
        tensors = {}
        for layer in range(layers):
            for group, modules in LORA_MODULES.items():
                for module in modules:
                    out, inp = shapes[module]
                    key = f"base_model.model.model.layers.{layer}.{group}.{module}"
                    tensors[f"{key}.lora_A.weight"] = rng.normal(0, inp ** -0.5, (r, inp)).astype(np.float32)
                    tensors[f"{key}.lora_B.weight"] = rng.normal(0, scale, (out, r)).astype(np.float32)
        target = Path(folder) / f"adapter-{seed + index}"
        target.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(target))
        save_file(tensors, str(target / "adapter_model.safetensors"))
        write_manifest(target, {"base_model": str(base_gguf), "note": "random test adapter"})
        folders.append(target)
    return folders
