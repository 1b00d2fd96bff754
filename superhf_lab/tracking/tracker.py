"""MLflow bookkeeping: one run per job, params from the resolved config, metrics per step.

A tracking server that dies mid-run must not cost the run: what the server does not take is kept in
memory and in a local spool file (JSON lines in the run's folder, fsynced), synced with its original steps
and timestamps when the server answers again, at the end of the run, when the run is continued, or later with
``python -m superhf_lab.tracking sync <spool file>``.

Logging is idempotent, so a killed run re-run with the same command records each thing once: a continued run
learns which (metric, step) pairs the store holds and sends only the others, and a table append drops the rows of
steps its table already holds (a resent append, or a re-run step).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param
from omegaconf import DictConfig, OmegaConf

from superhf_lab.runtime.checkpoint import Preempted
from superhf_lab.tracking.records import now_ms, send_records
from superhf_lab.tracking.spool import SYNC_COMMAND, append_to_spool, read_spool, spool_files_dir, write_spool
from superhf_lab.tracking.store import bounded_http, server_answers

log = logging.getLogger(__name__)

COMPLETIONS_TABLE = "completions.json"
RESOLVED_CONFIG = "config.yaml"
_MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
PARAMS_PER_BATCH = 100  # MLflow's limit on params per request
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # table appends would print bars


# Records are what a run sends to MLflow, as JSON-ready dicts (one spool line each):
#   {"kind": "metric", "key", "value", "step", "timestamp"}
#   {"kind": "table", "artifact_file", "rows"}          rows appended to a table artifact (log_table)
#   {"kind": "artifacts", "local_dir", "artifact_path"}  a folder's files (log_artifacts)
#   {"kind": "tag", "key", "value"}
#   {"kind": "end_run", "status", "end_time"}
# A spool file starts with {"kind": "run", "run_id", "tracking_uri"}.


class Tracker:
    """Logs to one MLflow run and keeps the history that the run's objective is read from.

    Everything a run logs after it started goes through here, so a tracking server that stops answering
    never stops the run: unsent records wait in memory and in a spool file
    (``spool_dir/mlflow-unsynced-<run id>.jsonl``, folders for ``log_artifacts`` copied next to it), new
    ones queue behind them, and the backlog is retried at most every ``retry_every_s`` seconds and at the
    end of the run. The spool is removed once everything is synced, so one left behind holds exactly
    what MLflow is missing.

    Completion rows are buffered and appended to the table every ``table_flush_every`` calls (each
    append rewrites the artifact), at checkpoints (:meth:`flush`) and when the run closes.
    """

    def __init__(
        self,
        run_id: str | None = None,
        spool_dir: str | Path = ".",
        retry_every_s: float = 30.0,
        table_flush_every: int = 25,
        experiment_id: str | None = None,
    ) -> None:
        self.experiment_id = experiment_id
        self._values: dict[str, dict[int, float]] = defaultdict(dict)  # each metric's value per step
        self.table_flush_every = table_flush_every
        self.retry_every_s = retry_every_s
        self._run_id = run_id
        self._spool_dir = Path(spool_dir)
        self._pending_rows: list[dict[str, Any]] = []
        self._pending_calls = 0
        self._unsynced: list[dict] = []  # records the server has not taken yet, oldest first
        self._next_retry = 0.0
        self._client: mlflow.MlflowClient | None = None
        self._copied_folders = 0
        self._held: set[tuple[str, int]] = set()  # (metric, step) pairs the store or the backlog already holds

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            self._run_id = mlflow.active_run().info.run_id
        return self._run_id

    @property
    def client(self) -> mlflow.MlflowClient:
        if self._client is None:
            self._client = mlflow.MlflowClient()
        return self._client

    @property
    def tracking_uri(self) -> str:
        return mlflow.get_tracking_uri()

    @property
    def history(self) -> dict[str, list[float]]:
        """Each metric's values in step order, a continued run's earlier steps included (read from the store)."""
        return {name: [values[step] for step in sorted(values)] for name, values in self._values.items()}

    @property
    def spool_path(self) -> Path:
        return self._spool_dir / f"mlflow-unsynced-{self.run_id}.jsonl"

    def continue_run(self) -> None:
        """Before a continued run logs: take in the spool a killed process left (whole records; a torn last line
        is the record it was writing, which the re-run logs again) and learn what the store holds, so nothing is
        sent twice. Asks the server, so a dead one stops the run here, before training."""
        if self.spool_path.exists():
            _, self._unsynced = read_spool(self.spool_path)
            log.info(
                "continuing run %s with the %d records its spool %s holds",
                self.run_id,
                len(self._unsynced),
                self.spool_path,
            )
            self._retry_backlog(force=True)
        with bounded_http():
            held = [
                metric
                for key in self.client.get_run(self.run_id).data.metrics
                for metric in self.client.get_metric_history(self.run_id, key)
            ]
        held += [
            Metric(record["key"], record["value"], record["timestamp"], record["step"])
            for record in self._unsynced
            if record["kind"] == "metric"
        ]
        for metric in held:
            self._values[metric.key][metric.step] = metric.value
            self._held.add((metric.key, metric.step))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record a step's metrics for the objective and send those the store does not hold yet."""
        for name, value in metrics.items():
            self._values[name][step] = float(value)
        timestamp = now_ms()
        records = [
            {"kind": "metric", "key": name, "value": float(value), "step": step, "timestamp": timestamp}
            for name, value in metrics.items()
            if (name, step) not in self._held
        ]
        self._held.update((name, step) for name in metrics)
        if records:
            self._send(records)

    def log_params(self, params: dict[str, Any]) -> None:
        """Params of the run (a dead server fails this within seconds: params are logged before training)."""
        items = [(key, str(value)) for key, value in params.items()]
        with bounded_http():
            for start in range(0, len(items), PARAMS_PER_BATCH):
                self.client.log_batch(
                    self.run_id,
                    params=[Param(key, value) for key, value in items[start : start + PARAMS_PER_BATCH]],
                    synchronous=True,
                )

    def log_completions(self, rows: list[dict[str, Any]]) -> None:
        """Queue sample rows (prompt, completion, rewards...) for the run's completions table."""
        self._pending_rows.extend(rows)
        self._pending_calls += 1
        if self._pending_calls >= self.table_flush_every:
            self.flush()

    def flush(self) -> None:
        if self._pending_rows:
            self.log_table(self._pending_rows, COMPLETIONS_TABLE)
        self._pending_rows, self._pending_calls = [], 0

    def log_table(self, rows: list[dict[str, Any]] | pd.DataFrame, artifact_file: str) -> None:
        """Append rows to a table artifact, as ``mlflow.log_table``."""
        if isinstance(rows, pd.DataFrame):
            rows = rows.to_dict(orient="records")
        self._send([{"kind": "table", "artifact_file": artifact_file, "rows": list(rows)}])

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        """Upload a folder's files, as ``mlflow.log_artifacts``; the folder may be deleted right after."""
        self._send([{"kind": "artifacts", "local_dir": str(local_dir), "artifact_path": artifact_path}])

    def set_tag(self, key: str, value: str) -> None:
        self._send([{"kind": "tag", "key": key, "value": str(value)}])

    def finish(self, status: str) -> None:
        """End the MLflow run without raising or hanging: a last sync, then the status, else the spool."""
        self.flush()
        self._retry_backlog(force=True)
        try:
            with bounded_http():
                mlflow.end_run(status)  # leaves the active run first, so a failure below still ends it here
            ended = True
        except Exception as error:
            log.debug("ending MLflow run %s failed: %s", self.run_id, error)
            ended = False
        if not ended:
            self._queue([{"kind": "end_run", "status": status, "end_time": now_ms()}])
        if self._unsynced:
            log.error(
                "MLflow at %s is unreachable; %d records of run %s that it has not got (metrics, tables, artifacts, "
                "tags or the run's end status) are kept in %s. Sync them once the server is back: "
                "%s %s --tracking-uri %s",
                mlflow.get_tracking_uri(),
                len(self._unsynced),
                self.run_id,
                self.spool_path,
                SYNC_COMMAND,
                self.spool_path,
                mlflow.get_tracking_uri(),
            )

    def _send(self, records: list[dict]) -> None:
        """Send now when nothing waits; otherwise queue behind the backlog so the order stays intact."""
        if self._unsynced:
            self._queue(records)
            self._retry_backlog()
            return
        sent, error = send_records(self.client, self.run_id, records)
        if error is None:
            return
        log.warning(
            "MLflow at %s stopped answering (%s). Training goes on; run %s's metrics and artifacts are kept in "
            "%s and sent again at most every %.0f s and at the end of the run",
            mlflow.get_tracking_uri(),
            str(error).splitlines()[0],
            self.run_id,
            self.spool_path,
            self.retry_every_s,
        )
        self._next_retry = time.monotonic() + self.retry_every_s
        self._queue(records[sent:])

    def _queue(self, records: list[dict]) -> None:
        """Keep records in memory and append them to the spool file, fsynced, so a crash loses nothing either (a
        kill mid-append leaves a torn last line, which :func:`read_spool` drops)."""
        records = [self._keep_local_copy(record) for record in records]
        self._unsynced.extend(records)
        append_to_spool(self.spool_path, self.run_id, mlflow.get_tracking_uri(), records)

    def _keep_local_copy(self, record: dict) -> dict:
        """Artifact folders are copied next to the spool: the caller's folder may be temporary."""
        if record["kind"] != "artifacts":
            return record
        self._copied_folders += 1
        copy = spool_files_dir(self.spool_path) / str(self._copied_folders)
        shutil.copytree(record["local_dir"], copy, dirs_exist_ok=True)
        return {**record, "local_dir": str(copy.resolve())}

    def _retry_backlog(self, force: bool = False) -> None:
        if not self._unsynced or (not force and time.monotonic() < self._next_retry):
            return
        self._next_retry = time.monotonic() + self.retry_every_s
        if not server_answers(mlflow.get_tracking_uri()):
            return
        sent, error = send_records(self.client, self.run_id, self._unsynced)
        self._unsynced = self._unsynced[sent:]
        write_spool(self.spool_path, self.run_id, mlflow.get_tracking_uri(), self._unsynced)
        if error is None:
            log.info(
                "MLflow at %s answers again: synced %d buffered records of run %s",
                mlflow.get_tracking_uri(),
                sent,
                self.run_id,
            )


class ReplicaTracker(Tracker):
    """The tracker of every rank but the main one in a multi-process run: it keeps the metric history (which
    checkpoints hold) and sends nothing, so the run has one MLflow run, logged by the main rank."""

    def __init__(self) -> None:
        super().__init__(run_id="")

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def continue_run(self) -> None:
        pass

    def finish(self, status: str) -> None:
        pass

    def _send(self, records: list[dict]) -> None:
        pass


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys for MLflow params: ``{"algorithm": {"top_k": 1}}`` -> ``{"algorithm.top_k": "1"}``."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            text = str(value)
            flat[name] = text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 1] + "…"
    return flat


@contextlib.contextmanager
def tracked_run(
    resolved: DictConfig,
    tags: dict[str, str],
    run_name: str | None,
    spool_dir: str | Path = ".",
    retry_every_s: float = 30.0,
    run_id: str | None = None,
) -> Iterator[Tracker]:
    """An MLflow run holding the flattened config as params and the resolved YAML as an artifact.

    Opening the run needs the server (it was probed just before, so failing here fails before training);
    after that, logging and ending the run never raise for a server that went away (see :class:`Tracker`).
    ``run_id``: continue that run (a killed one's), whose spool is in ``spool_dir``.
    """
    with bounded_http():
        run = mlflow.start_run(run_id=run_id, run_name=run_name, tags=tags)
    tracker = Tracker(run.info.run_id, spool_dir, retry_every_s, experiment_id=run.info.experiment_id)
    status = "FAILED"
    try:
        if run_id is not None:
            tracker.continue_run()
        params = flatten(OmegaConf.to_container(resolved, resolve=True))
        if run_id is not None:  # a resumed run keeps its params; only where its outputs go changed
            params = {key: value for key, value in params.items() if key not in run.data.params}
        tracker.log_params(params)
        with bounded_http():
            mlflow.log_text(OmegaConf.to_yaml(resolved, resolve=True), RESOLVED_CONFIG)
        yield tracker
        status = "FINISHED"
    except Preempted:
        status = "KILLED"  # resumable: re-running the command continues this run
        raise
    finally:
        tracker.finish(status)  # what was sampled before a crash is kept too
