"""A killed or preempted SuperHF run continues from its checkpoint to the same weights and a gap-free history."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, run_cli
from superhf_lab.checkpoint import CheckpointStore

pytestmark = pytest.mark.slow

SUPERBATCHES = 10  # with checkpoints every 2, enough left after the kill on a fast machine
RUN = [f"algorithm.num_superbatches={SUPERBATCHES}", "algorithm.superbatch_size=4", "checkpoint.every_n_superbatches=2",
       "eval.at_end=false"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    log = (cwd / f"run-{time.monotonic_ns()}.log").open("w")
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _checkpoint_meta(folder: Path) -> dict | None:
    stores = [CheckpointStore(path) for path in folder.glob("*") if path.is_dir()]
    metas = [store.latest_meta() for store in stores]
    return next((meta for meta in metas if meta), None)


def _run_record(folder: Path) -> dict:
    (record,) = [CheckpointStore(path).run_record() for path in folder.glob("*") if path.is_dir()]
    return record


def _wait_until(condition, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the run ended before the test could stop it"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.05)


def _history_steps(client: mlflow.MlflowClient, run_id: str, metric: str = "reward/mean") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def _final_weights(client: mlflow.MlflowClient, run_id: str, folder: Path) -> dict[str, torch.Tensor]:
    local = client.download_artifacts(run_id, "policy", str(folder))
    return load_file(str(Path(local) / "model.safetensors"))


def test_sigkilled_run_resumes_to_the_same_weights_and_a_gap_free_history(tiny_world, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = [*RUN, f"tiny_world.dir={tiny_world.root}", f"mlflow.tracking_uri={uri}"]
    uninterrupted = run_cli([*common, f"checkpoint.dir={tmp_path}/reference"], cwd=tmp_path)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    reference_run = client.search_runs([client.get_experiment_by_name("tiny_world").experiment_id])[0]

    checkpoints = tmp_path / "checkpoints"
    args = [*common, f"checkpoint.dir={checkpoints}"]
    process = _start(args, tmp_path)
    # Kill after the first checkpoint (superbatch 1) once superbatch 2 is logged: MLflow then holds a step
    # that the resumed run recomputes but must not log twice.
    _wait_until(lambda: (meta := _checkpoint_meta(checkpoints)) is not None
                and 2 in _history_steps(client, meta["run_id"]), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = _checkpoint_meta(checkpoints)
    assert killed["step"] % 2 == 1 and not _run_record(checkpoints)["finished"]

    resumed = run_cli(args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = client.get_run(killed["run_id"])
    assert run.info.status == "FINISHED", "the resumed run continues the killed run's MLflow run"
    assert len(client.search_runs([run.info.experiment_id])) == 2
    for metric in ("reward/mean", "kl", "progress/completions_generated"):
        assert _history_steps(client, run.info.run_id, metric) == list(range(SUPERBATCHES)), metric
    reference_history = client.get_metric_history(reference_run.info.run_id, "kl")
    resumed_history = client.get_metric_history(run.info.run_id, "kl")
    assert [m.value for m in sorted(resumed_history, key=lambda m: m.step)] == pytest.approx(
        [m.value for m in sorted(reference_history, key=lambda m: m.step)], rel=1e-5)

    expected = _final_weights(client, reference_run.info.run_id, tmp_path / "expected")
    actual = _final_weights(client, run.info.run_id, tmp_path / "actual")
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert _run_record(checkpoints)["finished"], "the folder records the run as finished once MLflow has it so"


def test_sigterm_checkpoints_and_exits_cleanly_then_the_same_command_continues(tiny_world, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    checkpoints = tmp_path / "checkpoints"
    args = [*RUN, "algorithm.num_superbatches=20", "checkpoint.every_n_superbatches=100", f"checkpoint.dir={checkpoints}",
            f"tiny_world.dir={tiny_world.root}", f"mlflow.tracking_uri={uri}"]
    process = _start(args, tmp_path)
    client = mlflow.MlflowClient(uri)

    def logged_two_steps() -> bool:
        experiment = client.get_experiment_by_name("tiny_world")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        return bool(runs) and len(_history_steps(client, runs[0].info.run_id)) >= 2

    _wait_until(logged_two_steps, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    log_text = "".join(path.read_text() for path in tmp_path.glob("run-*.log"))
    assert "Preempted: stopped by SIGTERM after superbatch" in log_text and "Re-run the same command" in log_text
    meta = _checkpoint_meta(checkpoints)
    run = client.get_run(meta["run_id"])
    assert run.info.status == "KILLED"
    assert _history_steps(client, run.info.run_id) == list(range(meta["step"] + 1)), "checkpoint = last logged step"

    resumed = run_cli(args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert _history_steps(client, run.info.run_id) == list(range(20))
    assert _run_record(checkpoints)["finished"]
