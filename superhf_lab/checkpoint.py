"""Checkpoints that let a killed or preempted run continue exactly where it stopped.

A run's checkpoints live in ``checkpoint.dir/<fingerprint>/``, where the fingerprint hashes the resolved
config (minus where its outputs go), so re-running the same command finds them. Each save writes a new
``step-NNNNNN`` folder under a temporary name, renames it into place, then points ``LATEST`` at it
(write, then rename): a kill at any moment leaves the previous checkpoint whole and pointed to.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

LATEST = "LATEST"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
# Keys that say where outputs go or whether to resume, not what the run computes.
_NOT_FINGERPRINTED = ("output_dir", "checkpoint", "mlflow")


class Preempted(BaseException):
    """SIGTERM arrived; the run saved a checkpoint and stops. A BaseException like KeyboardInterrupt, so a
    Hydra sweep stops too (its running Optuna trial is re-queued by the next invocation)."""


def run_fingerprint(cfg: DictConfig) -> str:
    """A short hash of everything that determines what the run computes (interpolations as written, so
    Hydra-only resolvers such as the output folder are never needed)."""
    container = OmegaConf.to_container(cfg, resolve=False)
    for key in _NOT_FINGERPRINTED:
        container.pop(key, None)
    container["mlflow_experiment"] = OmegaConf.select(cfg, "mlflow.experiment_name")
    text = json.dumps(container, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def capture_rng() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class CheckpointStore:
    """The checkpoints of one run configuration."""

    folder: Path

    def latest_meta(self) -> dict[str, Any] | None:
        """What the newest checkpoint says (step, MLflow run id, finished), or None when there is none."""
        latest = self._latest_folder()
        return json.loads((latest / META_FILE).read_text()) if latest else None

    def load(self) -> tuple[dict[str, Any], dict[str, Any]]:
        latest = self._latest_folder()
        if latest is None or not (latest / STATE_FILE).is_file():
            raise FileNotFoundError(f"no checkpoint state in {self.folder}")
        state = torch.load(latest / STATE_FILE, map_location="cpu", weights_only=False)
        return state, json.loads((latest / META_FILE).read_text())

    def save(self, state: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Write ``state`` and ``meta`` for ``meta['step']``; older checkpoints go once the new one is in place."""
        return self._write(meta, lambda folder: torch.save(state, folder / STATE_FILE))

    def mark(self, meta: dict[str, Any]) -> Path:
        """Record ``meta`` alone, for trainers that keep their state elsewhere (TRL's ``checkpoint-N`` folders)."""
        return self._write(meta, lambda folder: None)

    def _write(self, meta: dict[str, Any], write_state) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"step-{meta['step']:06d}"
        temporary = self.folder / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir()
        write_state(temporary)
        (temporary / META_FILE).write_text(json.dumps(meta, indent=2))
        _fsync_folder(temporary)
        final = self.folder / name
        shutil.rmtree(final, ignore_errors=True)  # a same-step checkpoint (re-saved at the end) is replaced
        temporary.rename(final)
        pointer = self.folder / f".{LATEST}.tmp-{os.getpid()}"
        pointer.write_text(name)
        os.replace(pointer, self.folder / LATEST)
        for old in self.folder.glob("step-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def _latest_folder(self) -> Path | None:
        pointer = self.folder / LATEST
        if not pointer.is_file():
            return None
        latest = self.folder / pointer.read_text().strip()
        return latest if (latest / META_FILE).is_file() else None


def _fsync_folder(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())


class StopRequest:
    """Set by SIGTERM (what a scheduler sends before preemption); the training loop checks it between steps."""

    def __init__(self) -> None:
        self.requested = False


@contextmanager
def stop_on_sigterm() -> Iterator[StopRequest]:
    """Turn SIGTERM into a request the loop honours after its current step (main thread only)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame) -> None:
        request.requested = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)
