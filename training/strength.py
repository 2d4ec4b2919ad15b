"""Milder versions of a trained adapter: the candidate at a fraction of its strength.

When the promotion gate refuses a candidate that did learn (its held-out likelihood improved) but
overshot (a caricature flag, attribution or edit distance worse), a weaker version of the same
training is usually what the owner wants: less of the new habit, most of the gain. This module
writes such a version as an ordinary adapter folder, so evaluation, drafting, promotion and the
next night's training treat it like any other.

The dial is weight-space interpolation of the LoRA tensors between a reference and the candidate
(as WiSE-FT does for full weights): θ = θ_ref + s · (θ_cand − θ_ref).
- No reference (the first adapter, over the base model): only the B matrices are scaled, so the
  update B·A is exactly s times the candidate's; s = 0 is the base model.
- A reference adapter of the same shape (the active adapter the candidate continued from): A and
  B both move, so s = 0 is the active adapter and s = 1 the candidate.
The result trains on like any adapter: its shapes and peft config are the candidate's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from training.artifacts import ADAPTER_FILES, MANIFEST, read_manifest, staged_folder, write_manifest
from training.errors import IncompatibleReference

logger = logging.getLogger(__name__)

WEIGHTS, CONFIG = ADAPTER_FILES[1], ADAPTER_FILES[0]
# Keys of the candidate's manifest that write_manifest sets anew for the milder copy.
_REWRITTEN = ("format", "created_at", "libraries", "checksum", "checksum_covers")


def _is_lora_b(name: str) -> bool:
    return ".lora_B." in name or name.endswith(".lora_B.weight")


def milder_tensors(candidate: dict[str, Any], reference: dict[str, Any] | None, strength: float) -> dict[str, Any]:
    """The interpolated LoRA tensors (see the module docstring); raises IncompatibleReference."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if reference is None:
        return {name: (tensor * strength if _is_lora_b(name) else tensor.clone())
                for name, tensor in candidate.items()}
    if reference.keys() != candidate.keys():
        missing = sorted(set(candidate) ^ set(reference))[:3]
        raise IncompatibleReference(f"the reference adapter has other LoRA modules ({', '.join(missing)} …)")
    mixed = {}
    for name, tensor in candidate.items():
        anchor = reference[name]
        if anchor.shape != tensor.shape:
            raise IncompatibleReference(f"{name}: reference {tuple(anchor.shape)} vs candidate {tuple(tensor.shape)}")
        mixed[name] = anchor + strength * (tensor - anchor.to(tensor.dtype))
    return mixed


def reference_fits(candidate_dir: Path, reference_dir: Path | None) -> bool:
    """Whether `reference_dir` can anchor the interpolation (same modules and shapes as the candidate)."""
    if reference_dir is None:
        return True
    from safetensors import safe_open

    def shapes(folder: Path) -> dict[str, tuple[int, ...]]:
        with safe_open(str(Path(folder) / WEIGHTS), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}

    return shapes(candidate_dir) == shapes(reference_dir)


def write_milder_adapter(candidate_dir: Path, reference_dir: Path | None, strength: float, target: Path) -> Path:
    """Write the candidate at `strength` to `target` (a complete adapter folder with its manifest).

    The folder appears only when complete (training.artifacts.staged_folder); its manifest is the
    candidate's plus `strength` and the checksum of the full-strength candidate it came from.
    """
    from safetensors.torch import load_file, save_file

    candidate_dir, target = Path(candidate_dir), Path(target)
    candidate = load_file(str(candidate_dir / WEIGHTS))
    reference = load_file(str(Path(reference_dir) / WEIGHTS)) if reference_dir is not None else None
    tensors = milder_tensors(candidate, reference, strength)
    source = read_manifest(candidate_dir)
    with staged_folder(target) as staging:
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(staging / WEIGHTS),
                  metadata={"format": "pt"})
        (staging / CONFIG).write_text((candidate_dir / CONFIG).read_text(encoding="utf-8"), encoding="utf-8")
        info = {key: value for key, value in source.items() if key not in _REWRITTEN}
        info["strength"] = {"value": strength, "of_checksum": source.get("checksum"),
                            "towards": str(reference_dir) if reference_dir is not None else "base model"}
        write_manifest(staging, info)
    logger.info("wrote %s at strength %.2f to %s", candidate_dir.name, strength, target)
    return target


def strength_of(folder: Path) -> float:
    """The strength an adapter folder was written at (1.0 for a trained one)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return 1.0
    return float((manifest.get("strength") or {}).get("value", 1.0))
