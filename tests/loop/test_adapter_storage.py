"""The adapter store seam (loop.adapter_storage): local by default, and an S3-compatible store
tested against a real HTTP S3 endpoint (moto's server, `moto[server]`, on 127.0.0.1)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from loop.adapter_storage import AdapterStoreError, LocalStore, S3Store, store_for
from loop.adapters import verify
from loop.config import AdapterStoreSettings, Config
from loop.cycle import run_cycle
from loop.drafting import FakeDrafter
from loop.twin import Twin
from storage import repo
from storage.db import session_scope
from tests.loop.test_cycle_support import OWNER, cycle_config, import_writing  # noqa: F401 - fixtures
from training.artifacts import CorruptAdapter, read_manifest, write_manifest

BUCKET = "twin-adapters"


@pytest.fixture
def s3(monkeypatch):
    """A real S3 HTTP endpoint (moto's server) with an empty bucket; yields its settings."""
    pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    settings = AdapterStoreSettings(kind="s3", bucket=BUCKET, prefix="team", endpoint_url=f"http://127.0.0.1:{port}")
    store = S3Store(settings, Path("unused"))
    store.client.create_bucket(Bucket=BUCKET)
    try:
        yield settings
    finally:
        server.stop()


def adapter_folder(path: Path, weights: bytes = b"weights") -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"r": 8}', encoding="utf-8")
    (path / "adapter_model.safetensors").write_bytes(weights)
    write_manifest(path, {"metadata": {"owner": OWNER}})
    return path


def test_the_local_store_keeps_the_folder_where_it_is(tmp_path):
    folder = adapter_folder(tmp_path / "v1")
    store = store_for(Config(data_dir=tmp_path))
    assert isinstance(store, LocalStore)
    assert store.publish(folder, telegram_id=OWNER, version=1) == str(folder)
    assert store.local_path(str(folder)) == folder


def test_s3_publish_then_another_machine_downloads_and_verifies(s3, tmp_path):
    trained_on = adapter_folder(tmp_path / "worker" / "owners" / str(OWNER) / "adapters" / "v3")
    worker = S3Store(s3, tmp_path / "worker")
    location = worker.publish(trained_on, telegram_id=OWNER, version=3)
    assert location == f"s3://{BUCKET}/team/owners/{OWNER}/adapters/v3"
    assert worker.local_path(location) == trained_on  # the worker never downloads its own adapter
    server = S3Store(s3, tmp_path / "server")
    assert server.cache_path(location) == tmp_path / "server" / "owners" / str(OWNER) / "adapters" / "v3"
    fetched = server.local_path(location)
    assert fetched == server.cache_path(location)
    assert sorted(p.name for p in fetched.iterdir()) == sorted(p.name for p in trained_on.iterdir())
    assert (fetched / "adapter_model.safetensors").read_bytes() == b"weights"
    assert not list(fetched.parent.glob(".*tmp-download*"))
    with pytest.raises(AdapterStoreError, match="holds no files"):
        server.local_path(f"s3://{BUCKET}/team/owners/{OWNER}/adapters/v9")
    server.remove_owner(OWNER)
    assert server.client.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0


def test_a_changed_object_in_the_bucket_is_refused_by_the_checksum(s3, tmp_path, engine):
    folder = adapter_folder(tmp_path / "worker" / "v1")
    store = S3Store(s3, tmp_path / "worker")
    location = store.publish(folder, telegram_id=OWNER, version=1)
    store.client.put_object(Bucket=BUCKET, Key=f"team/owners/{OWNER}/adapters/v1/adapter_model.safetensors",
                            Body=b"tampered")
    config = Config(data_dir=tmp_path / "server", adapter_store=s3)
    with session_scope(engine) as session:
        owner = repo.get_or_create_owner(session=session, telegram_id=OWNER)
        adapter = repo.add_adapter(session=session, owner_id=owner.id, version=1, path=location, parent_version=0,
                                   cycle_id=None, checksum=read_manifest(folder)["checksum"], data_counts={},
                                   metrics={})
    with pytest.raises(CorruptAdapter):
        verify(adapter, config)


def test_a_cycle_with_the_s3_store_records_the_bucket_and_a_drafting_machine_downloads_it(
        s3, cycle_config, engine, tmp_path):
    cycle_config.adapter_store = s3
    import_writing(engine)
    outcome = run_cycle(cycle_config, engine, telegram_id=OWNER, force=True)
    assert outcome.status in ("promoted", "kept"), outcome.reason
    with session_scope(engine) as session:
        owner = repo.find_owner(session=session, telegram_id=OWNER)
        (adapter,) = repo.list_adapters(session=session, owner_id=owner.id)
    assert adapter.path == f"s3://{BUCKET}/team/owners/{OWNER}/adapters/v1"
    # The drafting server: the same database, its own data_dir, nothing of the adapter on disk yet.
    server_config = Config(data_dir=tmp_path / "drafting-server", database_url=cycle_config.database_url,
                           owners=[OWNER], adapter_store=s3, model=cycle_config.model)
    verify(adapter, server_config)
    with session_scope(engine) as session:
        repo.activate_adapter(session=session, owner_id=owner.id, version=1)
    ref = Twin(server_config, engine, FakeDrafter()).active_adapter_ref(owner.id)
    assert Path(ref.path) == tmp_path / "drafting-server" / "owners" / str(OWNER) / "adapters" / "v1"
    assert (Path(ref.path) / "adapter_model.safetensors").is_file()
