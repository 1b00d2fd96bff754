"""Run folders and checkpoints that let a killed or preempted run continue exactly where it stopped.

Every run has a folder ``checkpoint.dir/<fingerprint>/``, where the fingerprint hashes the resolved config (minus
where its outputs go), so re-running the same command finds it. It records which MLflow run the configuration
continues until that run has ended FINISHED, holds a lease against a second launch, and keeps the newest two
checkpoints. Each save writes a new ``step-NNNNNN`` folder under a temporary name and renames it into place: a kill
at any moment leaves the previous checkpoint whole, and a damaged newest one is passed over for it. States are
read with ``torch.load(weights_only=True)``, so a checkpoint can hold tensors and plain values but never code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from superhf_lab.core.errors import ConfigError
from superhf_lab.core.faults import reach

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"
META_FILE = "meta.json"
RUN_FILE = "run.json"
LEASE_FILE = "lease.json"
# Checkpoints written before the NumPy RNG key was saved as a tensor hold it as an array: data only, so allowed.
_NUMPY_CORE = np._core if hasattr(np, "_core") else np.core  # NumPy 2 renamed it
_OLDER_RNG_TYPES = [np.ndarray, np.dtype, _NUMPY_CORE.multiarray._reconstruct, type(np.dtype(np.uint32))]
KEPT_CHECKPOINTS = 2  # the newest and the one before, for when the newest turns out damaged
LEASE_HEARTBEAT_S = 20.0
LEASE_STALE_S = 120.0  # another host's lease untouched this long belongs to a process that is gone


class Preempted(BaseException):
    """SIGTERM arrived; the run saved a checkpoint and stops. A BaseException like KeyboardInterrupt, so a
    Hydra sweep stops too (its running Optuna trial is re-queued by the next invocation)."""


def capture_rng() -> dict[str, Any]:
    """Every generator's state in types ``torch.load(weights_only=True)`` reads (numpy's key as a tensor)."""
    name, key, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(key.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, key, position, has_gauss, cached = state["numpy"]
    key = key.numpy() if isinstance(key, torch.Tensor) else key  # an array in checkpoints of older versions
    np.random.set_state((name, key.astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class CheckpointStore:
    """The run folder of one configuration: which MLflow run it belongs to (``run.json``), who runs it now
    (``lease.json``), its newest two checkpoints (``step-NNNNNN``, each with a SHA-256 of its state) and the
    tracking spool of that run."""

    folder: Path

    # -- the run record: which MLflow run this configuration continues, and whether it ended ---------------------

    def run_record(self) -> dict[str, Any] | None:
        """``{"run_id", "finished"}`` of the run this folder belongs to, or None before any run opened here."""
        path = self.folder / RUN_FILE
        if path.is_file():
            return json.loads(path.read_text())
        older = self.latest_meta()  # folders written before run.json: their checkpoints named the run
        return {"run_id": older["run_id"], "finished": older.get("finished", False)} if older else None

    def start_run(self, run_id: str) -> None:
        """A new MLflow run owns this folder: the checkpoints of a finished run before it are dropped (all it
        computed is in MLflow)."""
        for old in self._step_folders():
            shutil.rmtree(old, ignore_errors=True)
        self._write_json(RUN_FILE, {"run_id": run_id, "finished": False})

    def finish_run(self, run_id: str) -> None:
        """Recorded only once the MLflow run has ended FINISHED: until then the same command continues it."""
        self._write_json(RUN_FILE, {"run_id": run_id, "finished": True})

    def set_aside(self, why: str) -> Path:
        """Move this folder's run out of the way (its MLflow run is not in the tracking store), deleting nothing; the
        lease stays."""
        aside = self.folder.with_name(f"{self.folder.name}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}")
        aside.mkdir(parents=True)
        for entry in self.folder.iterdir():
            if entry.name != LEASE_FILE:
                entry.rename(aside / entry.name)
        log.warning("the run in %s is set aside as %s: %s", self.folder, aside, why)
        return aside

    # -- the lease: one launch of a configuration at a time ------------------------------------------------------

    @contextmanager
    def lease(self) -> Iterator[None]:
        """Hold this folder for the running process; a second launch of the same configuration is refused while
        the first runs. A lease whose process is gone (this host) or silent for ``LEASE_STALE_S`` (another
        host's, whose heartbeat stopped) is taken over."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LEASE_FILE
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid())}
        while True:
            try:
                descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lease(path)
                if holder is not None and _lease_alive(holder, path):
                    raise RunInProgress(
                        f"this configuration is already running (host {holder['host']}, pid {holder['pid']}; "
                        f"lease {path}). Wait for it to end, or stop it; if that process is gone on a host this "
                        "one cannot see, delete the lease file"
                    )
                log.warning("taking over the stale lease %s (%s)", path, holder or "unreadable")
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(descriptor, "w") as handle:
                json.dump(mine, handle)
            break
        heartbeat = _Heartbeat(path)
        try:
            yield
        finally:
            heartbeat.stop()
            if _read_lease(path) == mine:
                path.unlink(missing_ok=True)

    # -- checkpoints -------------------------------------------------------------------------------------------

    def latest_meta(self) -> dict[str, Any] | None:
        """What the newest whole checkpoint says (``step``, ``run_id``), or None when there is none."""
        for folder in self._newest_first():
            meta = _read_meta(folder)
            if meta is not None:
                return meta
        return None

    def load(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The newest checkpoint that is whole and safe to read: a damaged one (cut short, its hash off, or a pickle
        that would run code) is skipped, with a warning naming it, for the one before. None when there is none."""
        for folder in self._newest_first():
            try:
                meta = _read_meta(folder)
                if meta is None:
                    raise ValueError("no readable meta.json")
                if (folder / STATE_FILE).is_file() or "sha256" in meta:
                    digest = _sha256(folder / STATE_FILE)
                    if digest != meta.get("sha256"):
                        raise ValueError(
                            f"its {STATE_FILE} has SHA-256 {digest[:12]}..., not the "
                            f"{str(meta.get('sha256'))[:12]}... it was saved with"
                        )
                    with torch.serialization.safe_globals(_OLDER_RNG_TYPES):
                        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
                else:
                    state = {}
            except Exception as error:  # truncated, corrupted or unsafe: each surfaces as its own type
                log.warning(
                    "checkpoint %s is damaged and skipped (%s: %s); trying the one before it",
                    folder,
                    type(error).__name__,
                    str(error).splitlines()[0] if str(error) else "",
                )
                continue
            return state, meta
        return None

    def save(self, state: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Write ``state`` and ``meta`` for ``meta['step']``; all but the newest two checkpoints go once it is in
        place. A failed write (a full disk) keeps the previous checkpoints and stops with an error saying so."""

        def write_state(folder: Path) -> dict[str, Any]:
            torch.save(state, folder / STATE_FILE)
            return {"sha256": _sha256(folder / STATE_FILE)}

        return self._write(meta, write_state)

    def mark(self, meta: dict[str, Any]) -> Path:
        """Record ``meta`` alone, for trainers that keep their state elsewhere (TRL's ``checkpoint-N`` folders)."""
        return self._write(meta, lambda folder: {})

    def _write(self, meta: dict[str, Any], write_state) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob(".*.tmp-*"):  # a save a kill interrupted (the lease makes us the only writer)
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
        name = f"step-{meta['step']:06d}"
        temporary = self.folder / f".{name}.tmp-{os.getpid()}"
        try:
            temporary.mkdir()
            meta = {**meta, **write_state(temporary)}
            (temporary / META_FILE).write_text(json.dumps(meta, indent=2))
            _fsync_folder(temporary)
            reach("checkpoint_save")
            final = self.folder / name
            shutil.rmtree(final, ignore_errors=True)  # a same-step checkpoint (re-saved at the end) is replaced
            temporary.rename(final)
        except OSError as error:
            shutil.rmtree(temporary, ignore_errors=True)
            previous = self.latest_meta()
            kept = (
                f"the checkpoint after step {previous['step']} is kept" if previous else "no earlier checkpoint exists"
            )
            raise CheckpointSaveError(
                f"could not save the checkpoint after step {meta['step']} in {self.folder} "
                f"({error.strerror or error}); {kept}. Free space (or point checkpoint.dir elsewhere) and re-run "
                "the same command to continue"
            ) from error
        for old in self._newest_first()[KEPT_CHECKPOINTS:]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _step_folders(self) -> list[Path]:
        return sorted(path for path in self.folder.glob("step-*") if path.is_dir())

    def _newest_first(self) -> list[Path]:
        return self._step_folders()[::-1]

    def _write_json(self, name: str, value: dict[str, Any]) -> None:
        self._write_text(name, json.dumps(value))

    def _write_text(self, name: str, text: str) -> None:
        """Write, fsync, rename: a kill leaves the old file or the new one, never half of one."""
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f".{name}.tmp-{os.getpid()}"
        with partial.open("w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, self.folder / name)


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; the previous one is whole and the run stops."""


class RunInProgress(ConfigError):
    """Another process holds this configuration's run folder."""


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_folder(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux), so a reused pid is not taken for the holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _read_lease(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _lease_alive(holder: dict[str, Any], path: Path) -> bool:
    if holder.get("host") != socket.gethostname():
        try:
            return time.time() - path.stat().st_mtime < LEASE_STALE_S
        except OSError:
            return False
    start = _process_start(holder["pid"])
    return start is not None and start == holder.get("process_start")


class _Heartbeat:
    """Touches the lease every ``LEASE_HEARTBEAT_S``, so another host can tell a live holder from a dead one."""

    def __init__(self, path: Path) -> None:
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(path,), name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self, path: Path) -> None:
        while not self._stopped.wait(LEASE_HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(path)

    def stop(self) -> None:
        self._stopped.set()


class StopRequest:
    """Set by SIGTERM (what a scheduler sends before preemption); the training loop checks it between steps."""

    def __init__(self) -> None:
        self.requested = False


@contextmanager
def stop_on_sigterm(checkpoints: bool = True) -> Iterator[StopRequest]:
    """Turn SIGTERM into a request the loop honours after its current step (main thread only). A run that does not
    checkpoint has nothing to save: SIGTERM stops it at once (:class:`Preempted`), and the re-run redoes its work."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame) -> None:
        request.requested = True
        if not checkpoints:
            raise Preempted("stopped by SIGTERM (this algorithm keeps no checkpoints: a re-run starts its work again)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)
