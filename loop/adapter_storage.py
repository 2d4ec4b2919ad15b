"""Where adapter folders are kept: the one seam between adapters and the place that holds their files.

An adapter row records a *location*. The local store (the default) keeps the folder where the
cycle's child wrote it, under data_dir, and the location is that path, as it always was. The S3
store (`adapter_store.kind = "s3"`, any S3-compatible server) uploads the folder once it is
complete and records `s3://bucket/prefix/owners/<id>/adapters/v<N>`; a process on another machine
(a drafting server, another worker) downloads it on first use into the same place under its own
data_dir, so the worker that trained it never downloads its own adapter. A downloaded folder is
verified against the checksum in the database like any other (loop.adapters.verify).

Every reader asks `local_path(config, location)` for a folder it can open; `cache_path` only says
where that folder is, without downloading (to tell a recorded folder from a leftover).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Protocol

from loop.config import AdapterStoreSettings, Config
from loop.errors import AdapterStoreError

logger = logging.getLogger(__name__)

S3_SCHEME = "s3://"


class AdapterStore(Protocol):
    def publish(self, folder: Path, *, telegram_id: int, version: int) -> str:
        """Keep the complete adapter `folder`; returns the location to record."""

    def cache_path(self, location: str) -> Path:
        """Where the folder of `location` is (or will be) on this machine."""

    def local_path(self, location: str) -> Path:
        """A local folder with the adapter's files (downloaded when it is not here yet)."""

    def remove_owner(self, telegram_id: int) -> None:
        """Delete every adapter of the owner that the store holds beyond data_dir."""


class LocalStore:
    """Adapters stay where the child wrote them (data_dir/owners/<id>/adapters/v<N>)."""

    def publish(self, folder: Path, *, telegram_id: int, version: int) -> str:
        return str(folder)

    def cache_path(self, location: str) -> Path:
        return Path(location)

    def local_path(self, location: str) -> Path:
        return Path(location)

    def remove_owner(self, telegram_id: int) -> None:
        return None  # loop.forget removes the owner's folder


class S3Store:
    """Adapters in an S3-compatible bucket, with data_dir as the local copy (boto3)."""

    def __init__(self, settings: AdapterStoreSettings, data_dir: Path, client: Any = None):
        self.bucket, self.prefix, self.data_dir = settings.bucket, settings.prefix.strip("/"), Path(data_dir)
        self.settings, self._client = settings, client

    @property
    def client(self) -> Any:
        # Made on first use: a draft whose adapter is already here never builds one.
        if self._client is None:
            try:
                import boto3
            except ImportError as error:
                raise AdapterStoreError("adapter_store.kind = \"s3\" needs boto3: pip install 'twin[s3]'") from error
            self._client = boto3.client("s3", endpoint_url=self.settings.endpoint_url or None,
                                        region_name=self.settings.region or None)
        return self._client

    def _key(self, telegram_id: int, version: int) -> str:
        return "/".join(part for part in (self.prefix, "owners", str(telegram_id), "adapters", f"v{version}") if part)

    def _parse(self, location: str) -> str:
        if not location.startswith(S3_SCHEME):
            raise AdapterStoreError(f"{location} is not a location of this store (s3://{self.bucket}/…)")
        bucket, _, key = location[len(S3_SCHEME):].partition("/")
        if bucket != self.bucket:
            raise AdapterStoreError(f"{location} is in bucket {bucket}, the config names {self.bucket}")
        return key.rstrip("/")

    def publish(self, folder: Path, *, telegram_id: int, version: int) -> str:
        key = self._key(telegram_id, version)
        files = sorted(path for path in Path(folder).rglob("*") if path.is_file())
        try:
            for path in files:
                self.client.upload_file(str(path), self.bucket, f"{key}/{path.relative_to(folder).as_posix()}")
        except Exception as error:  # botocore's errors: no bucket, no credentials, server down
            raise AdapterStoreError(f"could not upload adapter v{version} to s3://{self.bucket}/{key}: {error}") from error
        logger.info("adapter v%s of owner %s uploaded to s3://%s/%s (%d files)", version, telegram_id, self.bucket,
                    key, len(files))
        return f"{S3_SCHEME}{self.bucket}/{key}"

    def cache_path(self, location: str) -> Path:
        if not location.startswith(S3_SCHEME):  # recorded before the store was switched to s3
            return Path(location)
        key = self._parse(location)
        relative = key[len(self.prefix) + 1:] if self.prefix and key.startswith(self.prefix + "/") else key
        return self.data_dir / relative

    def local_path(self, location: str) -> Path:
        target = self.cache_path(location)
        if target.is_dir() or not location.startswith(S3_SCHEME):
            return target
        key = self._parse(location)
        # Into a staging folder renamed when complete: a download cut short leaves no half folder.
        staging = target.parent / f".{target.name}.tmp-download-{uuid.uuid4().hex[:8]}"
        try:
            found = 0
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=key + "/"):
                for item in page.get("Contents", []):
                    destination = staging / item["Key"][len(key) + 1:]
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    self.client.download_file(self.bucket, item["Key"], str(destination))
                    found += 1
            if not found:
                raise AdapterStoreError(f"{location} holds no files")
            try:
                os.rename(staging, target)
            except OSError:  # another process of this machine downloaded it first
                if not target.is_dir():
                    raise
        except AdapterStoreError:
            raise
        except Exception as error:
            raise AdapterStoreError(f"could not download {location}: {error}") from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("downloaded %s to %s", location, target)
        return target

    def remove_owner(self, telegram_id: int) -> None:
        prefix = "/".join(part for part in (self.prefix, "owners", str(telegram_id)) if part) + "/"
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})


def store_for(config: Config) -> AdapterStore:
    if config.adapter_store.kind == "s3":
        return S3Store(config.adapter_store, config.data_dir)
    return LocalStore()


def _store_of(config: Config | None, location: str) -> AdapterStore:
    if not location.startswith(S3_SCHEME):
        return LocalStore()
    if config is None:
        raise AdapterStoreError(f"{location} is in an S3 store; the caller passed no config to reach it")
    # By the location, not the current kind: adapters recorded while the store was S3 stay readable.
    return S3Store(config.adapter_store, config.data_dir)


def local_path(config: Config | None, location: str) -> Path:
    """A local folder with the files of the adapter recorded at `location`."""
    return _store_of(config, location).local_path(location)


def cache_path(config: Config | None, location: str) -> Path:
    """Where that folder is on this machine, without downloading it."""
    return _store_of(config, location).cache_path(location)
