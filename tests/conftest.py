"""Shared helpers: composing the project's Hydra config and running run.py as a user would."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from superhf_lab.launch.compose import compose_run_config

ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Test processes run side by side (make test: two workers on two cores), each with its runs in subprocesses:
    # one torch thread each, since processes that each take a thread per core crawl when they meet.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def compose_config(overrides: list[str], return_hydra_config: bool = False):
    """The config run.py would see for these overrides (``output_dir`` set, since no Hydra run exists)."""
    cfg = compose_run_config(overrides, return_hydra_config)
    cfg.output_dir = "outputs/test"
    return cfg


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 900):
    """``python run.py ARGS`` in ``cwd``; returns the completed process (never raises on failure)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def tiny_world():
    """The default tiny world, built once in the repository's cache (shared with `make run`)."""
    from superhf_lab.tiny_world import ensure_tiny_world

    return ensure_tiny_world(ROOT / ".cache" / "tiny_world")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def mlflow_server_process(folder: Path, port: int | None = None, backend_store_uri: str | None = None):
    """A real ``mlflow server`` on a sqlite database (by default a new one in ``folder``), as the README tells users
    to start one."""
    port = port or _free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend_store_uri or f"sqlite:///{folder}/mlflow.db",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(uri + "/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(folder / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    with mlflow_server_process(tmp_path_factory.mktemp("mlflow_server")) as uri:
        yield uri
