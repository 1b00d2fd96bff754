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

import argparse
import contextlib
import json
import logging
import os
import posixpath
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import requests
from mlflow.entities import Metric, Param
from mlflow.exceptions import RestException
from omegaconf import DictConfig, OmegaConf

from superhf_lab.checkpoint import Preempted
from superhf_lab.config import MlflowConfig
from superhf_lab.errors import ConfigError
from superhf_lab.faults import reach

log = logging.getLogger(__name__)

COMPLETIONS_TABLE = "completions.json"
RESOLVED_CONFIG = "config.yaml"
SYNC_COMMAND = "python -m superhf_lab.tracking sync"
# MLflow 3's UI opens an experiment as GenAI (traces) or model training (runs and charts) by this tag.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # what the UI's ?viewStateShareKey=<key> reads
_MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
_PARAMS_PER_BATCH = 100  # MLflow's limit on params per request
_METRICS_PER_BATCH = 1000  # MLflow's limit on metrics per request
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # table appends would print bars

# MLflow's defaults retry a dead server for minutes (7 retries, exponential backoff, 120 s timeout);
# a run's own logging gives up after a few seconds instead and keeps what it could not send.
_BOUNDED_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


@contextlib.contextmanager
def bounded_http() -> Iterator[None]:
    """MLflow calls inside fail within seconds against a dead server (MLflow reads these per request)."""
    saved = {name: os.environ.get(name) for name in _BOUNDED_HTTP}
    os.environ.update(_BOUNDED_HTTP)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def server_answers(tracking_uri: str) -> bool:
    """A cheap probe before sending a backlog; stores that are not HTTP servers always count as up."""
    if not tracking_uri.startswith(("http://", "https://")):
        return True
    try:
        return requests.get(tracking_uri.rstrip("/") + "/health", timeout=2).ok
    except requests.RequestException:
        return False


def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_our_bug(error: Exception) -> bool:
    """A 4xx answer means the server is up and rejected the request: buffering would only hide the bug."""
    return isinstance(error, RestException) and 400 <= error.get_http_status_code() < 500


# Records are what a run sends to MLflow, as JSON-ready dicts (one spool line each):
#   {"kind": "metric", "key", "value", "step", "timestamp"}
#   {"kind": "table", "artifact_file", "rows"}          rows appended to a table artifact (log_table)
#   {"kind": "artifacts", "local_dir", "artifact_path"}  a folder's files (log_artifacts)
#   {"kind": "tag", "key", "value"}
#   {"kind": "end_run", "status", "end_time"}
# A spool file starts with {"kind": "run", "run_id", "tracking_uri"}.


def send_records(client: mlflow.MlflowClient, run_id: str, records: list[dict]) -> tuple[int, Exception | None]:
    """Send records in order; returns how many were sent and the error that stopped the rest (or None).

    Metrics keep their own step and timestamp. A resent metric does not duplicate: the server's database
    drops a metric whose key, step, timestamp and value it already holds.
    """
    sent = 0
    with bounded_http():
        while sent < len(records):
            try:
                reach("store_send")
                sent += _send_next(client, run_id, records, sent)
            except Exception as error:
                if _is_our_bug(error):
                    raise
                return sent, error
    return sent, None


def _send_next(client: mlflow.MlflowClient, run_id: str, records: list[dict], start: int) -> int:
    """Send ``records[start]`` (with the metrics right after it, in one request); returns how many went."""
    record = records[start]
    kind = record["kind"]
    if kind == "metric":
        batch = []
        for item in records[start : start + _METRICS_PER_BATCH]:
            if item["kind"] != "metric":
                break
            batch.append(Metric(item["key"], item["value"], item["timestamp"], item["step"]))
        client.log_batch(run_id, metrics=batch, synchronous=True)
        return len(batch)
    if kind == "table":
        held = table_steps(client, run_id, record["artifact_file"])
        rows = [row for row in record["rows"] if row.get("step") not in held]
        if rows:
            client.log_table(run_id, pd.DataFrame(rows), artifact_file=record["artifact_file"])
    elif kind == "artifacts":
        client.log_artifacts(run_id, record["local_dir"], record["artifact_path"])
    elif kind == "tag":
        client.set_tag(run_id, record["key"], record["value"])
    elif kind == "end_run":
        client.set_terminated(run_id, record["status"], record["end_time"])
    else:
        raise ValueError(f"unknown record kind {kind!r}")
    return 1


def table_steps(client: mlflow.MlflowClient, run_id: str, artifact_file: str) -> set:
    """The steps whose rows table ``artifact_file`` of the run holds (empty when there is no such table)."""
    folder = posixpath.dirname(posixpath.normpath(artifact_file)) or None
    if artifact_file not in {item.path for item in client.list_artifacts(run_id, folder)}:
        return set()
    with tempfile.TemporaryDirectory() as local:
        table = json.loads(Path(client.download_artifacts(run_id, artifact_file, local)).read_text())
    if "step" not in table.get("columns", []):
        return set()
    column = table["columns"].index("step")
    return {row[column] for row in table["data"]}


def _json_default(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)  # numpy scalars; anything else as text


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

    def __init__(self, run_id: str | None = None, spool_dir: str | Path = ".", retry_every_s: float = 30.0,
                 table_flush_every: int = 25, experiment_id: str | None = None) -> None:
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
            log.info("continuing run %s with the %d records its spool %s holds", self.run_id, len(self._unsynced),
                     self.spool_path)
            self._retry_backlog(force=True)
        with bounded_http():
            held = [metric for key in self.client.get_run(self.run_id).data.metrics
                    for metric in self.client.get_metric_history(self.run_id, key)]
        held += [Metric(record["key"], record["value"], record["timestamp"], record["step"])
                 for record in self._unsynced if record["kind"] == "metric"]
        for metric in held:
            self._values[metric.key][metric.step] = metric.value
            self._held.add((metric.key, metric.step))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record a step's metrics for the objective and send those the store does not hold yet."""
        for name, value in metrics.items():
            self._values[name][step] = float(value)
        timestamp = _now_ms()
        records = [{"kind": "metric", "key": name, "value": float(value), "step": step, "timestamp": timestamp}
                   for name, value in metrics.items() if (name, step) not in self._held]
        self._held.update((name, step) for name in metrics)
        if records:
            self._send(records)

    def log_params(self, params: dict[str, Any]) -> None:
        """Params of the run (a dead server fails this within seconds: params are logged before training)."""
        items = [(key, str(value)) for key, value in params.items()]
        with bounded_http():
            for start in range(0, len(items), _PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=[Param(key, value) for key, value in
                                                           items[start : start + _PARAMS_PER_BATCH]],
                                      synchronous=True)

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
            self._queue([{"kind": "end_run", "status": status, "end_time": _now_ms()}])
        if self._unsynced:
            log.error(
                "MLflow at %s is unreachable; %d records of run %s that it has not got (metrics, tables, artifacts, "
                "tags or the run's end status) are kept in %s. Sync them once the server is back: %s %s --tracking-uri %s",
                mlflow.get_tracking_uri(), len(self._unsynced), self.run_id, self.spool_path,
                SYNC_COMMAND, self.spool_path, mlflow.get_tracking_uri(),
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
            mlflow.get_tracking_uri(), str(error).splitlines()[0], self.run_id, self.spool_path, self.retry_every_s,
        )
        self._next_retry = time.monotonic() + self.retry_every_s
        self._queue(records[sent:])

    def _queue(self, records: list[dict]) -> None:
        """Keep records in memory and append them to the spool file, fsynced, so a crash loses nothing either (a
        kill mid-append leaves a torn last line, which :func:`read_spool` drops)."""
        records = [self._keep_local_copy(record) for record in records]
        new_file = not self.spool_path.exists()
        self._unsynced.extend(records)
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(record, default=_json_default) + "\n" for record in records)
        header = json.dumps(_spool_header(self.run_id, mlflow.get_tracking_uri())) + "\n" if new_file else ""
        half = len(text) // 2
        with self.spool_path.open("a", encoding="utf-8") as spool:
            for part, torn in ((header, False), (text[:half], True), (text[half:], False)):
                spool.write(part)
                spool.flush()
                os.fsync(spool.fileno())
                if torn:
                    reach("spool_append")

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
            log.info("MLflow at %s answers again: synced %d buffered records of run %s",
                     mlflow.get_tracking_uri(), sent, self.run_id)


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


def _spool_header(run_id: str, tracking_uri: str) -> dict:
    return {"kind": "run", "run_id": run_id, "tracking_uri": tracking_uri}


def spool_files_dir(spool_path: Path) -> Path:
    """Where a spool keeps copies of the folders its ``artifacts`` records upload."""
    return spool_path.with_suffix(".files")


def write_spool(path: Path, run_id: str, tracking_uri: str, records: list[dict]) -> None:
    """Replace the spool file with ``records``, atomically; no records removes it and its copied folders."""
    if not records:
        path.unlink(missing_ok=True)
        shutil.rmtree(spool_files_dir(path), ignore_errors=True)
        return
    partial = path.with_suffix(".partial")
    with partial.open("w", encoding="utf-8") as spool:
        spool.write(json.dumps(_spool_header(run_id, tracking_uri)) + "\n")
        spool.writelines(json.dumps(record, default=_json_default) + "\n" for record in records)
    partial.replace(path)


def read_spool(path: Path) -> tuple[dict, list[dict]]:
    """The spool file's header (run id, tracking URI) and its records. A torn last line (a kill during an append)
    is dropped with a warning; a bad line before it means the file was damaged otherwise, and is an error."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number < len(lines) or text.endswith("\n"):
                raise ValueError(f"{path}:{number}: not a JSON record; the spool is damaged beyond a torn last line "
                                 "(edit that line out to sync the rest)") from None
            log.warning("%s: dropping its torn last line (a process killed while appending it): %.80s", path, line)
    if not records or records[0].get("kind") != "run":
        raise ValueError(f"{path} is not a spool file written by superhf_lab.tracking (no run header)")
    return records[0], records[1:]


def sync_spool(path: Path, tracking_uri: str | None = None) -> int:
    """Send a spool file's records to its run; the file is removed when all are in. Returns the count sent."""
    header, records = read_spool(path)
    uri = tracking_uri or header["tracking_uri"]
    sent, error = send_records(mlflow.MlflowClient(tracking_uri=uri), header["run_id"], records)
    write_spool(path, header["run_id"], header["tracking_uri"], records[sent:])
    if error is not None:
        raise ConnectionError(f"MLflow at {uri} took {sent} of {len(records)} records ({str(error).splitlines()[0]}); "
                              f"the rest stay in {path}")
    return sent


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


def check_tracking_store(config: MlflowConfig) -> str:
    """Set and probe the tracking store before any model loads, so a dead server costs seconds, not a run.

    ``mlflow.tracking_uri`` in the config wins; otherwise MLflow's own MLFLOW_TRACKING_URI or its default
    (``sqlite:///mlflow.db`` in the working directory).
    """
    if config.tracking_uri:
        mlflow.set_tracking_uri(config.tracking_uri)
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as error:
            raise ConfigError(
                f"mlflow.tracking_uri={uri!r} is unreachable ({type(error).__name__}). Start the server "
                "(mlflow server --backend-store-uri sqlite:///mlflow.db --port 5000), or set "
                "mlflow.tracking_uri (or MLFLOW_TRACKING_URI) to a reachable server or a local sqlite:/// file"
            ) from None
    try:
        experiment = mlflow.set_experiment(config.experiment_name)
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    except Exception as error:  # a corrupt or locked store surfaces as several MLflow/SQLAlchemy types
        raise ConfigError(
            f"mlflow.tracking_uri={uri!r} cannot be used ({str(error).splitlines()[0]}). Point mlflow.tracking_uri "
            "or MLFLOW_TRACKING_URI at a working store; a corrupt sqlite file can be moved aside"
        ) from error
    return uri


@contextlib.contextmanager
def tracked_run(resolved: DictConfig, tags: dict[str, str], run_name: str | None, spool_dir: str | Path = ".",
                retry_every_s: float = 30.0, run_id: str | None = None) -> Iterator[Tracker]:
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
        with bounded_http():
            params = flatten(OmegaConf.to_container(resolved, resolve=True))
            if run_id is not None:  # a resumed run keeps its params; only where its outputs go changed
                params = {key: value for key, value in params.items() if key not in run.data.params}
            items = list(params.items())
            for start in range(0, len(items), _PARAMS_PER_BATCH):
                mlflow.log_params(dict(items[start : start + _PARAMS_PER_BATCH]))
            mlflow.log_text(OmegaConf.to_yaml(resolved, resolve=True), RESOLVED_CONFIG)
        yield tracker
        status = "FINISHED"
    except Preempted:
        status = "KILLED"  # resumable: re-running the command continues this run
        raise
    finally:
        tracker.finish(status)  # what was sampled before a crash is kept too


def run_exists(run_id: str) -> tuple[bool, str]:
    """Whether the tracking store holds ``run_id`` (and, when not, why not). Only the store's own answer that there
    is no such run (or that it was deleted) is a no: any other failure raises, since starting over on a store that
    merely failed to answer would abandon a run that is there."""
    try:
        reach("store_query")
        with bounded_http():
            run = mlflow.MlflowClient().get_run(run_id)
    except Exception as error:
        if getattr(error, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
            return False, str(error).splitlines()[0]
        raise ConfigError(
            f"mlflow.tracking_uri={mlflow.get_tracking_uri()!r} did not answer whether run {run_id} exists "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); its checkpoints are kept. "
            "Re-run the same command once the store answers"
        ) from error
    if run.info.lifecycle_stage == "deleted":
        return False, "the run was deleted"
    return True, ""


def download_artifacts(uri: str) -> str:
    """A local copy of an MLflow artifact (``runs:/<run_id>/<path>``, ``models:/...``); its folder."""
    with bounded_http():
        return mlflow.artifacts.download_artifacts(artifact_uri=uri)


def is_artifact_uri(location: str) -> bool:
    return location.startswith(("runs:/", "models:/", "mlflow-artifacts:/"))


def find_or_create_run(experiment_name: str, tags: dict[str, str], run_name: str, params: dict[str, str]) -> str:
    """The run of ``experiment_name`` carrying every one of ``tags``, created (RUNNING) when there is none, else set
    RUNNING again (a resumed study's parent); returns its id."""
    client = mlflow.MlflowClient()
    with bounded_http():
        experiment_id = client.get_experiment_by_name(experiment_name).experiment_id
        condition = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
        found = client.search_runs([experiment_id], filter_string=condition, max_results=1)
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        for key, value in params.items():
            client.log_param(run.info.run_id, key, value)
        return run.info.run_id


def share_view(experiment_name: str, key: str, state: dict[str, Any]) -> str:
    """Store an MLflow UI view state (runs filter, grouping, chart filter...) as the experiment's shared view ``key``,
    which the UI opens from ``?viewStateShareKey=<key>``; returns the experiment id."""
    client = mlflow.MlflowClient()
    with bounded_http():
        experiment_id = client.get_experiment_by_name(experiment_name).experiment_id
        client.set_experiment_tag(experiment_id, f"{SHARED_VIEW_TAG_PREFIX}{key}", json.dumps(state))
    return experiment_id


def child_runs(parent_id: str) -> list:
    """The runs nested under ``parent_id``, oldest first."""
    client = mlflow.MlflowClient()
    with bounded_http():
        experiment_id = client.get_run(parent_id).info.experiment_id
        return client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                  order_by=["attributes.start_time ASC"])


def metric_history(run_id: str, key: str) -> list[float]:
    """A metric's values in step order."""
    with bounded_http():
        return [m.value for m in sorted(mlflow.MlflowClient().get_metric_history(run_id, key), key=lambda m: m.step)]


def set_terminated_or_warn(run_id: str, status: str) -> None:
    """End another run (a sweep's parent) without letting a dead server fail the job that trained."""
    try:
        with bounded_http():
            mlflow.MlflowClient().set_terminated(run_id, status)
    except Exception as error:
        log.warning("could not mark MLflow run %s %s (%s)", run_id, status, str(error).splitlines()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m superhf_lab.tracking",
                                     description="Send what a run could not log to MLflow while its server was down.")
    commands = parser.add_subparsers(dest="command", required=True)
    sync = commands.add_parser("sync", help="send a spool file's metrics, completions and run status to its run")
    sync.add_argument("spool_file", type=Path, help="mlflow-unsynced-<run id>.jsonl in the run's output folder")
    sync.add_argument("--tracking-uri", help="default: the URI the run logged to (in the file's first line)")
    args = parser.parse_args(argv)
    try:
        sent = sync_spool(args.spool_file, args.tracking_uri)
    except (OSError, ValueError) as error:  # ConnectionError is an OSError
        print(f"sync failed: {error}", file=sys.stderr)
        return 1
    print(f"synced {sent} records from {args.spool_file} (file removed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
