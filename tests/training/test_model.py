"""Model loading: the embedded GGUF converted once, devices, precision, tokenizer pitfalls."""

from __future__ import annotations

from pathlib import Path

import pytest

import training.model as model_module
from training.config import ModelSettings
from training.model import (
    COMPLETE_MARKER,
    EMBEDDED_DIR_NAME,
    ModelLoadError,
    EMBEDDED_GGUF,
    embedded_gguf_path,
    end_of_turn_id,
    gguf_source,
    load_model,
    load_tokenizer,
    resolve_base_model,
    select_device,
    select_dtype,
)
from tests.tiny import build_tiny_gguf, tiny_model, tiny_model_settings


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_the_embedded_gguf_is_found_without_importing_its_package() -> None:
    path = embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_hub_ids_and_local_paths_are_returned_as_they_are(tmp_path: Path) -> None:
    assert resolve_base_model(ModelSettings(base="HuggingFaceTB/SmolLM2-360M-Instruct"), tmp_path) == \
        "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert resolve_base_model(ModelSettings(base=str(tmp_path / "m")), tmp_path) == str(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []  # nothing converted


def test_embedded_model_is_converted_once(tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_module, "embedded_gguf_path", lambda: tiny_gguf)
    models_dir = tmp_path / "models"
    path = Path(resolve_base_model(ModelSettings(), models_dir))
    assert path == models_dir / EMBEDDED_DIR_NAME and (path / COMPLETE_MARKER).exists()
    assert (path / "model.safetensors").exists() and not list(models_dir.glob(".*"))
    tokenizer = load_tokenizer(path)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    model = load_model(path, ModelSettings(device="cpu"))
    assert model.config.num_hidden_layers == 2 and not getattr(model, "is_quantized", False)
    assert not model.training

    def no_second_conversion(*args: object) -> Path:
        raise AssertionError("converted twice")

    monkeypatch.setattr(model_module, "convert_gguf", no_second_conversion)
    assert resolve_base_model(ModelSettings(), models_dir) == str(path)


@pytest.mark.parametrize("row_order", ["llama.cpp's", "Hugging Face's"])
def test_a_model_written_as_gguf_reads_back_as_the_same_weights(tmp_path: Path, row_order: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Our GGUF writer (llama.cpp drafting) against transformers' GGUF reader: the query and key
    # rows must go back into llama.cpp's order, which the reader undoes.
    import torch

    import training.inference.llamacpp as llamacpp

    if row_order == "Hugging Face's":
        monkeypatch.setattr(llamacpp, "llama_cpp_row_order", lambda rows, heads: rows)
    model = tiny_model()[0]
    written = llamacpp.write_model_gguf(model, embedded_gguf_path(), tmp_path / "m.gguf", matrix_dtype="float32")
    monkeypatch.setattr(model_module, "embedded_gguf_path", lambda: written)
    read = load_model(resolve_base_model(ModelSettings(), tmp_path / "models"), ModelSettings(device="cpu"))
    original, back = model.state_dict(), read.state_dict()
    mismatched = [name for name in original if name in back and not torch.equal(original[name], back[name])]
    if row_order == "llama.cpp's":
        assert mismatched == [] and len(back) >= len(original) - 1  # lm_head is tied to the embeddings
    else:
        assert mismatched and all(name.endswith(("q_proj.weight", "k_proj.weight")) for name in mismatched)


def test_only_a_folder_converted_from_the_embedded_gguf_has_a_gguf_source(tmp_path: Path) -> None:
    for name, marker in (("embedded", EMBEDDED_GGUF), ("other", "another.gguf"), ("plain", None)):
        (tmp_path / name).mkdir()
        if marker:
            (tmp_path / name / COMPLETE_MARKER).write_text(marker + "\n", encoding="utf-8")
    assert gguf_source(tmp_path / "embedded") == embedded_gguf_path()
    assert gguf_source(tmp_path / "other") is None and gguf_source(tmp_path / "plain") is None
    assert gguf_source("HuggingFaceTB/SmolLM2-360M-Instruct") is None


def test_an_interrupted_conversion_is_redone_and_a_failed_one_leaves_nothing(
        tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models_dir = tmp_path / "models"
    half = models_dir / EMBEDDED_DIR_NAME
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # a folder without the completion marker
    calls: list[Path] = []

    def recording_convert(gguf: Path, target: Path) -> Path:
        calls.append(target)
        assert not target.exists()  # the stale folder was removed first
        raise RuntimeError("disk full")

    monkeypatch.setattr(model_module, "embedded_gguf_path", lambda: tiny_gguf)
    monkeypatch.setattr(model_module, "convert_gguf", recording_convert)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_base_model(ModelSettings(), models_dir)
    assert calls == [half] and list(models_dir.iterdir()) == []


def test_a_broken_gguf_leaves_no_staging_folder(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(Exception):
        model_module.convert_gguf(bad, tmp_path / "models" / "out")
    assert list((tmp_path / "models").iterdir()) == []


def test_device_and_precision_follow_the_hardware_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert select_device(ModelSettings(device="cpu")) == "cpu"
    assert select_device(ModelSettings(device="cuda:1")) == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device(ModelSettings()) in ("cpu", "mps")
    assert select_dtype(ModelSettings(), "cpu") == torch.float32
    assert select_dtype(ModelSettings(precision="bf16"), "cpu") == torch.bfloat16
    assert select_dtype(ModelSettings(precision="fp16"), "cuda") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert select_device(ModelSettings()) == "cuda"
    assert select_dtype(ModelSettings(), "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert select_dtype(ModelSettings(), "cuda") == torch.float32


def test_4bit_needs_a_gpu(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="CUDA"):
        load_model(tiny_model_dir, tiny_model_settings(tiny_model_dir, load_in_4bit=True))


def test_missing_models_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_model(tmp_path / "nothing", ModelSettings(device="cpu"))
    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_tokenizer(tmp_path / "nothing")


def test_the_end_of_turn_token_is_im_end(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    assert end_of_turn_id(tokenizer) == tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id
    model = load_model(tiny_model_dir, tiny_model_settings(tiny_model_dir), for_training=True)
    assert model.training and next(model.parameters()).dtype.is_floating_point
