"""A tracking server that dies mid-run costs no data: real `mlflow server` processes, stopped and restarted."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
from conftest import ROOT, _free_port, mlflow_server_process
from omegaconf import OmegaConf

from superhf_lab.tracking.spool import SYNC_COMMAND, read_spool
from superhf_lab.tracking.tracker import tracked_run

pytestmark = pytest.mark.slow


def _steps(client: mlflow.MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(metric.step for metric in client.get_metric_history(run_id, key))


def _wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the run exited ({process.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def _sync_cli(spool: Path, uri: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "superhf_lab.tracking", "sync", str(spool), "--tracking-uri", uri],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_run_ending_while_the_server_is_down_leaves_a_spool_that_the_sync_command_sends(tmp_path, caplog):
    """Logging against a dead server returns within seconds; what it missed is synced later, steps intact."""
    port, folder = _free_port(), tmp_path / "server"
    previous_uri = mlflow.get_tracking_uri()
    try:
        with mlflow_server_process(folder, port=port) as uri:
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment("spool")
            run_context = tracked_run(OmegaConf.create({"kl_coef": 0.1}), {}, "spooled", tmp_path / "out", 0)
            tracker = run_context.__enter__()
            run_id = tracker.run_id
            for step in (0, 1):
                tracker.log_metrics({"reward/mean": step / 10}, step=step)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="superhf_lab.tracking"):
            for step in (2, 3, 4):
                tracker.log_metrics({"reward/mean": step / 10}, step=step)
            with tempfile.TemporaryDirectory() as policy:  # gone before the sync: the spool keeps a copy
                (Path(policy) / "config.json").write_text("{}")
                tracker.log_artifacts(policy, "policy")
            tracker.set_tag("superhf_lab.policy_uri", f"runs:/{run_id}/policy")
            tracker.log_completions([{"step": 4, "prompt": "p", "completion": "c", "reward": 0.4, "kept": True}])
            run_context.__exit__(None, None, None)  # ends the run: flush, last sync, status
        assert time.monotonic() - started < 30, "a dead server must cost seconds, not MLflow's minutes of retries"
        assert mlflow.active_run() is None
        assert len([r for r in caplog.records if "stopped answering" in r.message]) == 1, "warned once"
        spool = tmp_path / "out" / f"mlflow-unsynced-{run_id}.jsonl"
        assert f"{SYNC_COMMAND} {spool} --tracking-uri {uri}" in caplog.text
        header, records = read_spool(spool)
        assert header == {"kind": "run", "run_id": run_id, "tracking_uri": uri}
        assert [r["step"] for r in records if r["kind"] == "metric"] == [2, 3, 4]
        assert [r["kind"] for r in records][3:] == ["artifacts", "tag", "table", "end_run"]
        assert records[-1]["status"] == "FINISHED"
        spooled_timestamps = [r["timestamp"] for r in records if r["kind"] == "metric"]

        failed = _sync_cli(spool, uri)  # still down: fails fast, keeps the file
        assert failed.returncode == 1 and "took 0 of 7 records" in failed.stderr, failed.stderr
        assert read_spool(spool) == (header, records)

        with mlflow_server_process(folder, port=port):
            synced = _sync_cli(spool, uri)
            assert synced.returncode == 0, synced.stderr
            assert not spool.exists()
            client = mlflow.MlflowClient(uri)
            history = sorted(client.get_metric_history(run_id, "reward/mean"), key=lambda m: m.step)
            assert [m.step for m in history] == [0, 1, 2, 3, 4]
            assert [m.timestamp for m in history[2:]] == spooled_timestamps, "logged with their original times"
            synced_run = client.get_run(run_id)
            assert synced_run.info.status == "FINISHED"
            assert synced_run.data.tags["superhf_lab.policy_uri"] == f"runs:/{run_id}/policy"
            assert [a.path for a in client.list_artifacts(run_id, "policy")] == ["policy/config.json"]
            table = json.loads(Path(client.download_artifacts(run_id, "completions.json", str(tmp_path))).read_text())
            assert [row[table["columns"].index("prompt")] for row in table["data"]] == ["p"]
    finally:
        mlflow.set_tracking_uri(previous_uri)


def _spool_steps(output_root: Path) -> set[int]:
    """Steps of reward/mean waiting in the run's spool file, in its run folder (empty before the server went away)."""
    steps = set()
    for spool in output_root.glob("**/mlflow-unsynced-*.jsonl"):
        for line in spool.read_text().splitlines():
            record = json.loads(line) if line.strip() else {}
            if record.get("key") == "reward/mean":
                steps.add(record["step"])
    return steps


def test_training_goes_on_while_the_tracking_server_is_down_and_syncs_when_it_returns(tiny_world, tmp_path):
    """The server is stopped after two superbatches and restarted a few superbatches later, on the same database.

    The run is paused (SIGSTOP) while a server starts or stops, so the outage falls mid-run however fast
    the machine trains; the run itself never notices the pauses.
    """
    port, folder, steps = _free_port(), tmp_path / "server", 30  # enough steps left that the outage ends mid-run
    uri = f"http://127.0.0.1:{port}"
    client = mlflow.MlflowClient(uri)
    log_file = tmp_path / "run.log"
    run = None
    try:
        with mlflow_server_process(folder, port=port), log_file.open("w") as output:
            run = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "run.py"),
                    f"tiny_world.dir={tiny_world.root}",
                    f"algorithm.num_superbatches={steps}",
                    "algorithm.superbatch_size=4",
                    "algorithm.prompt_accumulation_steps=1",
                    "algorithm.max_new_tokens=16",
                    "algorithm.warmup_superbatches=0",
                    "eval.at_end=false",
                    "mlflow.experiment_name=faults",
                    "mlflow.retry_every_s=1",
                ],
                cwd=tmp_path,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_TRACKING_URI": uri},
                stdout=output,
                stderr=subprocess.STDOUT,
            )
            _wait_for(lambda: len(_logged_steps(client, "faults")) >= 2, 240, "two logged superbatches", run)
            run.send_signal(signal.SIGSTOP)
            run_id = _only_run_id(client, "faults")
        run.send_signal(signal.SIGCONT)  # the server is gone: training goes on, metrics go to the spool
        _wait_for(lambda: len(_spool_steps(tmp_path / "checkpoints")) >= 1, 120, "a spooled superbatch", run)
        run.send_signal(signal.SIGSTOP)
        spooled = _spool_steps(tmp_path / "checkpoints")
        first_spooled, last_spooled = min(spooled), max(spooled)
        with mlflow_server_process(folder, port=port):
            run.send_signal(signal.SIGCONT)
            assert run.wait(timeout=240) == 0, log_file.read_text()[-3000:]
            output = log_file.read_text()
            assert 2 <= first_spooled and last_spooled < steps - 1, "the outage fell mid-run"
            assert output.count("stopped answering") == 1, output[-3000:]
            assert "answers again: synced" in output, "the backlog is synced when the server returns"
            assert list(tmp_path.glob("checkpoints/**/mlflow-unsynced-*")) == [], "nothing is left unsynced"
            for key in ("reward/mean", "kl", "progress/completions_generated"):
                assert _steps(client, run_id, key) == list(range(steps)), key
            finished = client.get_run(run_id)
            assert finished.info.status == "FINISHED" and "objective" in finished.data.metrics
    finally:
        if run is not None and run.poll() is None:
            run.send_signal(signal.SIGCONT)
            run.kill()
            run.wait()


def _logged_steps(client: mlflow.MlflowClient, experiment_name: str) -> list[int]:
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return _steps(client, runs[0].info.run_id, "reward/mean") if runs else []


def _only_run_id(client: mlflow.MlflowClient, experiment_name: str) -> str:
    (run,) = client.search_runs([client.get_experiment_by_name(experiment_name).experiment_id])
    return run.info.run_id
