"""Adapter folders on disk: written under a temporary name, renamed when complete, verifiable.

A finished adapter folder holds peft's `adapter_config.json` and `adapter_model.safetensors`
plus `twin_adapter.json`: base model, data counts, hyperparameters, library versions, stage
statistics and a sha256 checksum. Only the trained ("default") adapter is saved: trl's DPO/KTO
keep a frozen copy named "ref" during training, which is scaffolding and never written, so the
folder holds exactly what drafting loads and the checksum covers all of it.

A killed cycle leaves at most a `.<name>.tmp-*` sibling, never a half-written adapter folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from training.errors import ArtifactError, CorruptAdapter

logger = logging.getLogger(__name__)

MANIFEST = "twin_adapter.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what the checksum covers
FORMAT_VERSION = 1


def adapter_checksum(folder: Path) -> str:
    """sha256 over the adapter's config and weights (names and contents, in a fixed order)."""
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        path = Path(folder) / name
        digest.update(name.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide how an adapter loads and behaves."""
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str] = {}
    for package in ("torch", "transformers", "peft", "trl", "datasets", "accelerate"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "missing"
    return versions


def write_manifest(folder: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Complete the folder with `twin_adapter.json`; returns the manifest with its checksum."""
    missing = [name for name in ADAPTER_FILES if not (Path(folder) / name).is_file()]
    if missing:
        raise ArtifactError(f"adapter files missing from {folder}: {', '.join(missing)}")
    manifest = {
        "format": FORMAT_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "libraries": library_versions(),
        **info,
        "checksum": adapter_checksum(folder),
        "checksum_covers": list(ADAPTER_FILES),
    }
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n",
                                         encoding="utf-8")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptAdapter(f"{folder} has no {MANIFEST}: not a complete adapter") from None
    except json.JSONDecodeError as error:
        raise CorruptAdapter(f"{path} is unreadable: {error}") from None


def verify_adapter(path: Path) -> None:
    """Raise `CorruptAdapter` unless the folder is complete and matches its recorded checksum."""
    folder = Path(path)
    if not folder.is_dir():
        raise CorruptAdapter(f"adapter folder {folder} does not exist")
    manifest = read_manifest(folder)
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing:
        raise CorruptAdapter(f"adapter {folder} is missing {', '.join(missing)}")
    actual = adapter_checksum(folder)
    if actual != manifest.get("checksum"):
        raise CorruptAdapter(f"adapter {folder} does not match its checksum "
                             f"(recorded {str(manifest.get('checksum'))[:12]}…, found {actual[:12]}…)")


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path of the file `target`; replace `target` by it only if the block
    succeeds. The one atomic file writer (result.json, the JSONL datasets, the attribution model): a
    reader sees the old file or the new one, never half of it, and a failed write leaves nothing."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield staging
        os.replace(staging, target)
    finally:
        if staging.exists():
            staging.unlink()


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; rename it to `target` only if the block succeeds.

    On an exception the temporary folder is removed and `target` never appears.
    """
    target = Path(target)
    if target.exists():
        raise ArtifactError(f"{target} already exists; an adapter folder is never overwritten")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("adapter written to %s", target)


def remove_stale_staging(parent: Path) -> list[Path]:
    """Delete `.*.tmp-*` folders left by killed runs under `parent`; returns what was removed."""
    removed: list[Path] = []
    if not Path(parent).is_dir():
        return removed
    for path in Path(parent).glob(".*.tmp-*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
