"""A real OpenAI-compatible drafting server for the tests: llama-cpp-python's own server
(`python -m llama_cpp.server`) on 127.0.0.1, the embedded GGUF as its base and one LoRA alias per
owner adapter, started from the models file the twin writes.

Tests that use it are marked `server` and skip without the `server` extra, except in CI
(`make setup` installs it there, so a missing extra fails instead of passing quietly).
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Iterator

import pytest

from training.inference.openai_server import (
    CompletionsClient,
    llama_cpp_server_installed,
    start_llama_cpp_server,
    wait_until_serving,
)

# Use with @pytest.mark.server (or pytestmark = [pytest.mark.server, requires_server]).
requires_server = pytest.mark.skipif(
    not llama_cpp_server_installed() and not os.environ.get("CI"),
    reason="llama-cpp-python's server is not installed (pip install -e '.[server]'; make setup does)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_server(models_file: Path, url: str, *, log: Path) -> Iterator[CompletionsClient]:
    """The server of `models_file`, up and answering at `url`, stopped on exit."""
    process = start_llama_cpp_server(models_file, log=log)
    client = CompletionsClient(url, "llama_cpp", timeout_s=120)
    try:
        try:
            wait_until_serving(client, timeout_s=120, process=process)
        except Exception:
            print(log.read_text(errors="replace")[-3000:] if log.exists() else "(no server log)")
            raise
        yield client
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=20)
        except Exception:  # noqa: BLE001 - a server that ignores SIGTERM is killed
            process.kill()
            process.wait()
