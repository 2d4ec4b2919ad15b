"""Faults around adapter files: a damaged adapter folder is refused, and a full disk while a cycle
writes its adapter fails the cycle with its reason while the active adapter and the database stay.

Adapters are real peft LoRA folders on the tiny model, written the way training writes them
(a staged folder renamed when complete, `twin_adapter.json` with the checksum). The full disk
is injected into the real training child through a `sitecustomize` on its PYTHONPATH, so the
cycle, its child process and the clean-up run unchanged.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from loop import adapters as adapter_store
from loop.adapters import RollbackError, rollback
from loop.config import Config
from loop.cycle import run_cycle
from storage import repo
from storage.db import session_scope
from storage.models import CycleStatus
from tests.reliability.figures import record
from tests.loop.test_cycle_support import OWNER, cycle_config, import_writing  # noqa: F401 - fixtures
from training.artifacts import MANIFEST, CorruptAdapter, adapter_checksum, staged_folder, verify_adapter, write_manifest

WEIGHTS = "adapter_model.safetensors"


def make_adapter(model_dir: Path, target: Path, *, seed: int) -> str:
    """A real LoRA adapter of the tiny model with non-zero weights, written like training writes one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(model_dir)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # a fresh LoRA is a no-op; this one changes the model
    with staged_folder(target) as staging:
        model.save_pretrained(str(staging))
        manifest = write_manifest(staging, {"metadata": {"test": True, "seed": seed}})
    return manifest["checksum"]


def register(config: Config, engine: Engine, *, version: int, checksum: str, active: bool) -> None:
    with session_scope(engine) as session:
        owner = repo.get_or_create_owner(session=session, telegram_id=OWNER)
        repo.add_adapter(session=session, owner_id=owner.id, version=version,
                         path=str(adapter_store.adapter_dir(config, OWNER, version)), parent_version=version - 1,
                         cycle_id=None, checksum=checksum, data_counts={}, metrics={})
        if active:
            adapter_store.activate(session=session, owner_id=owner.id, version=version)


def adapters_state(engine: Engine) -> dict[int, str]:
    with session_scope(engine) as session:
        owner = repo.find_owner(session=session, telegram_id=OWNER)
        return {a.version: a.state.value for a in repo.list_adapters(session=session, owner_id=owner.id)}


@pytest.fixture
def two_versions(cycle_config: Config, engine: Engine, tiny_model_dir: Path) -> Config:
    """v1 active, v2 a recorded candidate; both real, complete folders."""
    for version in (1, 2):
        checksum = make_adapter(tiny_model_dir, adapter_store.adapter_dir(cycle_config, OWNER, version), seed=version)
        register(cycle_config, engine, version=version, checksum=checksum, active=version == 1)
    return cycle_config


def flip_bytes(path: Path) -> None:
    """Change a few bytes inside the tensor data, keeping size and header: loads fine, means garbage."""
    data = bytearray(path.read_bytes())
    for offset in range(len(data) - 64, len(data) - 8, 4):
        data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def replace_with_other_adapter(folder: Path, other: Path) -> None:
    """Swap in another complete adapter: its own manifest matches, only the database can tell."""
    for name in (WEIGHTS, "adapter_config.json", MANIFEST):
        (folder / name).write_bytes((other / name).read_bytes())


DAMAGES = {
    "bytes flipped in the weights": lambda folder, other: flip_bytes(folder / WEIGHTS),
    "weights truncated": lambda folder, other: (folder / WEIGHTS).write_bytes((folder / WEIGHTS).read_bytes()[:100]),
    "weights missing": lambda folder, other: (folder / WEIGHTS).unlink(),
    "manifest missing": lambda folder, other: (folder / MANIFEST).unlink(),
    "manifest unreadable": lambda folder, other: (folder / MANIFEST).write_text("{not json"),
    "folder replaced by another adapter": replace_with_other_adapter,
    "folder gone": lambda folder, other: shutil.rmtree(folder),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_adapter_is_refused_and_the_active_one_kept(two_versions: Config, engine: Engine,
                                                               damage: str) -> None:
    folder = adapter_store.adapter_dir(two_versions, OWNER, 2)
    DAMAGES[damage](folder, adapter_store.adapter_dir(two_versions, OWNER, 1))

    with pytest.raises(RollbackError, match="adapter v2 cannot be used"):
        rollback(two_versions, engine, telegram_id=OWNER, version=2)
    assert adapters_state(engine) == {1: "active", 2: "candidate"}
    with session_scope(engine) as session:
        owner = repo.find_owner(session=session, telegram_id=OWNER)
        adapter_store.verify(repo.active_adapter(session=session, owner_id=owner.id))  # v1 still intact
        with pytest.raises(CorruptAdapter):
            adapter_store.activate(session=session, owner_id=owner.id, version=2)
        session.rollback()
    assert adapters_state(engine) == {1: "active", 2: "candidate"}


def test_rollback_to_a_sound_version_still_works_after_a_refusal(two_versions: Config, engine: Engine) -> None:
    flip_bytes(adapter_store.adapter_dir(two_versions, OWNER, 2) / WEIGHTS)
    with pytest.raises(RollbackError):
        rollback(two_versions, engine, telegram_id=OWNER, version=2)
    assert rollback(two_versions, engine, telegram_id=OWNER, version=0) == 0
    assert adapters_state(engine) == {1: "retired", 2: "candidate"}
    assert rollback(two_versions, engine, telegram_id=OWNER, version=1) == 1
    assert adapters_state(engine)[1] == "active"
    record("damaged adapter folders refused with the active one kept (kinds of damage)",
           f"{len(DAMAGES)}: {', '.join(DAMAGES)}")


def test_a_cycle_refuses_to_build_on_a_damaged_active_adapter(two_versions: Config, engine: Engine) -> None:
    import_writing(engine, n=12)
    flip_bytes(adapter_store.adapter_dir(two_versions, OWNER, 1) / WEIGHTS)
    outcome = run_cycle(two_versions, engine, telegram_id=OWNER, force=True)
    assert outcome.status == "failed" and "damaged" in outcome.reason and "rollback" in outcome.reason
    assert adapters_state(engine) == {1: "active", 2: "candidate"}
    with session_scope(engine) as session:
        assert repo.get_lock(session=session, name="cycle") is None


def test_drafting_never_uses_an_active_adapter_whose_files_were_damaged(two_versions: Config, engine: Engine) -> None:
    from loop.drafting import EngineDrafter
    from loop.twin import Twin

    flip_bytes(adapter_store.adapter_dir(two_versions, OWNER, 1) / WEIGHTS)
    twin = Twin(two_versions, engine, EngineDrafter.from_config(two_versions))
    try:
        draft = twin.draft_reply(telegram_id=OWNER, chat_key="tg:1", incoming="are you there?")
    except CorruptAdapter:
        return  # refused loudly: acceptable
    assert draft.adapter_version != 1, "the draft was written with the damaged adapter"


# A full disk while the adapter is written ----------------------------------------------------------

FULL_DISK_HOOK = textwrap.dedent('''
    """Injected into the training child by the reliability tests: the disk is full when the
    adapter's manifest is written, after its weights (the last file of the folder)."""
    import errno, os
    if os.environ.get("TWIN_TEST_FULL_DISK"):
        import training.artifacts as _artifacts
        _write_manifest = _artifacts.write_manifest

        def write_manifest(folder, info):
            with open(os.path.join(folder, _artifacts.MANIFEST), "w") as handle:
                handle.write('{"format": 1, "checks')  # a part made it to disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(folder, _artifacts.MANIFEST))

        _artifacts.write_manifest = write_manifest
''')


def test_a_full_disk_while_the_cycle_writes_its_adapter_fails_the_cycle_and_keeps_everything(
        two_versions: Config, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hooks = tmp_path / "child-hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(FULL_DISK_HOOK)
    monkeypatch.setenv("PYTHONPATH", str(hooks))
    monkeypatch.setenv("TWIN_TEST_FULL_DISK", "1")
    import_writing(engine, n=12)
    root = adapter_store.adapters_root(two_versions, OWNER)
    before = {path.name: adapter_checksum(path) for path in root.iterdir()}
    with session_scope(engine) as session:
        owner = repo.find_owner(session=session, telegram_id=OWNER)
        status_before = repo.owner_status(session=session, owner_id=owner.id)

    outcome = run_cycle(two_versions, engine, telegram_id=OWNER, force=True)

    assert outcome.status == "failed"
    assert os.strerror(errno.ENOSPC) in outcome.reason, outcome.reason
    # The active adapter and the files on disk are as they were: no v3, no staging leftovers.
    assert sorted(path.name for path in root.iterdir()) == sorted(before)
    assert {path.name: adapter_checksum(path) for path in root.iterdir()} == before
    verify_adapter(adapter_store.adapter_dir(two_versions, OWNER, 1))
    assert adapters_state(engine) == {1: "active", 2: "candidate"}
    with session_scope(engine) as session:
        owner = repo.find_owner(session=session, telegram_id=OWNER)
        status_after = repo.owner_status(session=session, owner_id=owner.id)
        cycle = repo.last_cycle(session=session, owner_id=owner.id)
        assert cycle.status == CycleStatus.failed and cycle.finished_at is not None
        assert os.strerror(errno.ENOSPC) in cycle.reason
        assert repo.get_lock(session=session, name="cycle") is None
    assert {k: v for k, v in status_after.items() if k != "last_cycle"} == \
        {k: v for k, v in status_before.items() if k != "last_cycle"}
    # The reason reached the cycle's log too, for whoever looks later.
    assert json.loads((Path(cycle.log_path).parent / "result.json").read_text())["error"].startswith("OSError")
    record("full disk while a cycle writes its adapter: cycle status, adapters changed, rows changed",
           f"{outcome.status} (ENOSPC named in its reason), 0, 0")
