"""Shared helpers: composing the project's Hydra config and running run.py as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]


def compose_config(overrides: list[str]):
    """The config run.py would see for these overrides (``output_dir`` set, since no Hydra run exists)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=overrides)
    cfg.output_dir = "outputs/test"
    return cfg


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 900):
    """``python run.py ARGS`` in ``cwd``; returns the completed process (never raises on failure)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def tiny_world():
    """The default tiny world, built once in the repository's cache (shared with `make run`)."""
    from superhf_lab.tiny_world import ensure_tiny_world

    return ensure_tiny_world(ROOT / ".cache" / "tiny_world")
