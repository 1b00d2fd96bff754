"""Faults beyond kills: a full disk, damaged or unsafe checkpoints, a second launch, a torn or resent spool."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import run_cli

from superhf_lab.core import faults
from superhf_lab.runtime.checkpoint import (
    LEASE_FILE,
    LEASE_STALE_S,
    CheckpointSaveError,
    CheckpointStore,
    RunInProgress,
    _process_start,
)
from superhf_lab.tracking.records import send_records
from superhf_lab.tracking.spool import read_spool


@pytest.fixture
def inject(monkeypatch):
    """Sets SUPERHF_LAB_FAULT for this process, as a launch would see it."""

    def set_faults(value: str) -> None:
        monkeypatch.setenv(faults.ENVIRONMENT_VARIABLE, value)
        faults._configured.cache_clear()
        faults._reached.clear()

    yield set_faults
    monkeypatch.delenv(faults.ENVIRONMENT_VARIABLE, raising=False)
    faults._configured.cache_clear()
    faults._reached.clear()


def _state(step: int) -> dict:
    return {"weights": torch.full((4,), float(step)), "step": step}


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint_and_says_so(tmp_path, inject):
    store = CheckpointStore(tmp_path / "run")
    store.save(_state(1), {"step": 1})
    inject("checkpoint_save@1:enospc")
    with pytest.raises(
        CheckpointSaveError,
        match=r"after step 2 .*No space left on device.*checkpoint after step 1 "
        r"is kept.*re-run the same command",
    ):
        store.save(_state(2), {"step": 2})
    state, meta = store.load()
    assert meta["step"] == 1 and state["weights"].equal(_state(1)["weights"])
    assert not list(store.folder.glob(".*")), "the half-written save is cleaned up"


def test_a_damaged_newest_checkpoint_is_skipped_for_the_one_before_with_a_warning_naming_it(tmp_path, caplog):
    store = CheckpointStore(tmp_path / "run")
    store.save(_state(1), {"step": 1})
    newest = store.save(_state(2), {"step": 2})
    state_file = newest / "state.pt"
    state_file.write_bytes(state_file.read_bytes()[:100])  # cut short, as by a disk that filled up or a bad copy
    with caplog.at_level(logging.WARNING, logger="superhf_lab.runtime.checkpoint"):
        state, meta = store.load()
    assert meta["step"] == 1 and state["step"] == 1
    assert str(newest) in caplog.text and "damaged" in caplog.text
    (store.folder / "step-000001" / "meta.json").write_text("{not json")
    assert store.load() is None, "no whole checkpoint is left: the run starts from its beginning"


def test_saving_keeps_the_newest_two_checkpoints(tmp_path):
    store = CheckpointStore(tmp_path / "run")
    for step in range(4):
        store.save(_state(step), {"step": step})
    assert sorted(path.name for path in store.folder.glob("step-*")) == ["step-000002", "step-000003"]


def test_a_checkpoint_of_an_older_version_with_numpys_rng_as_an_array_still_loads_and_restores(tmp_path):
    import random

    import numpy as np

    from superhf_lab.runtime.checkpoint import restore_rng

    store = CheckpointStore(tmp_path / "run")
    np.random.seed(3)
    older = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    store.save({"rng": [older]}, {"step": 0})
    expected = np.random.random()
    np.random.seed(4)
    state, _ = store.load()
    restore_rng(state["rng"][0])
    assert np.random.random() == expected


class _RunsCode:
    """A pickle that would run code when loaded (what a tampered checkpoint could hold)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_whose_pickle_would_run_code_is_refused(tmp_path, caplog):
    store = CheckpointStore(tmp_path / "run")
    store.save(_state(1), {"step": 1})
    folder = store.folder / "step-000002"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    torch.save({"weights": _RunsCode(marker)}, folder / "state.pt")
    digest = hashlib.sha256((folder / "state.pt").read_bytes()).hexdigest()  # a tamperer sets the hash too
    (folder / "meta.json").write_text(json.dumps({"step": 2, "sha256": digest}))
    with caplog.at_level(logging.WARNING, logger="superhf_lab.runtime.checkpoint"):
        _, meta = store.load()
    assert not marker.exists(), "loading a checkpoint never runs its pickle's code"
    assert meta["step"] == 1 and str(folder) in caplog.text and "UnpicklingError" in caplog.text


def test_a_second_launch_of_a_running_configuration_is_refused(tmp_path):
    store = CheckpointStore(tmp_path / "run")
    with store.lease():
        with pytest.raises(RunInProgress, match=rf"already running \(host {socket.gethostname()}, pid {os.getpid()}"):
            with store.lease():
                pass
    assert not (store.folder / LEASE_FILE).exists(), "the lease ends with the run"


def test_stale_leases_are_taken_over(tmp_path, caplog):
    store = CheckpointStore(tmp_path / "run")
    store.folder.mkdir(parents=True)
    lease = store.folder / LEASE_FILE
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process of this host that has ended (killed mid-run)
    lease.write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "process_start": "1"}))
    with caplog.at_level(logging.WARNING, logger="superhf_lab.runtime.checkpoint"), store.lease():
        assert json.loads(lease.read_text())["pid"] == os.getpid()
    assert "taking over the stale lease" in caplog.text

    lease.write_text(json.dumps({"host": "elsewhere", "pid": 1, "process_start": "1"}))
    with pytest.raises(RunInProgress, match="host elsewhere"), store.lease():
        pass  # another host's lease with a fresh heartbeat
    old = time.time() - LEASE_STALE_S - 1
    os.utime(lease, (old, old))
    with store.lease():  # its heartbeat stopped: that holder is gone
        pass


@pytest.mark.slow
def test_run_py_refuses_a_configuration_that_is_running_and_names_the_lease(tiny_world, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        args = [
            f"tiny_world.dir={tiny_world.root}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            f"checkpoint.dir={tmp_path}/checkpoints",
        ]
        first = run_cli([*args, "mode=eval", "eval.prompts_per_source=2"], cwd=tmp_path)  # finds the folder's name
        assert first.returncode == 0, first.stderr[-3000:]
        (folder,) = (tmp_path / "checkpoints").iterdir()
        (folder / LEASE_FILE).write_text(
            json.dumps({"host": socket.gethostname(), "pid": holder.pid, "process_start": _process_start(holder.pid)})
        )
        second = run_cli([*args, "mode=eval", "eval.prompts_per_source=2"], cwd=tmp_path)
        assert second.returncode == 2
        assert f"already running (host {socket.gethostname()}, pid {holder.pid}" in second.stderr
        assert str(folder / LEASE_FILE) in second.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_torn_last_spool_line_is_dropped_and_a_bad_line_before_it_is_an_error(tmp_path, caplog):
    spool = tmp_path / "mlflow-unsynced-r.jsonl"
    header = {"kind": "run", "run_id": "r", "tracking_uri": "sqlite:///x.db"}
    record = {"kind": "metric", "key": "kl", "value": 0.5, "step": 3, "timestamp": 1}
    spool.write_text(json.dumps(header) + "\n" + json.dumps(record) + "\n" + json.dumps(record)[:20])
    with caplog.at_level(logging.WARNING, logger="superhf_lab.tracking"):
        assert read_spool(spool) == (header, [record])
    assert "torn last line" in caplog.text
    spool.write_text(json.dumps(header) + "\n" + json.dumps(record)[:20] + "\n" + json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=r"jsonl:2: not a JSON record"):
        read_spool(spool)


def test_a_table_append_sent_twice_adds_its_rows_once(tmp_path):
    """A resent record (its first send timed out after the server applied it) or a re-run step appends nothing."""
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("tables", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    first = {"kind": "table", "artifact_file": "completions.json", "rows": [{"step": 0, "completion": "a"}]}
    second = {
        "kind": "table",
        "artifact_file": "completions.json",
        "rows": [{"step": 0, "completion": "a"}, {"step": 1, "completion": "b"}],
    }
    assert send_records(client, run_id, [first, first, second]) == (3, None)
    table = json.loads(Path(client.download_artifacts(run_id, "completions.json", str(tmp_path))).read_text())
    assert table["data"] == [[0, "a"], [1, "b"]]


def test_a_malformed_fault_setting_names_the_variable_and_the_forms():
    with pytest.raises(ValueError, match=r"SUPERHF_LAB_FAULT=.*cannot read 'scoring@x:kill'.*point@n:action"):
        faults.parse("scoring@x:kill")
    assert faults.parse("scoring@2+:error") == (faults.Fault("scoring", 2, "error", and_after=True),)
