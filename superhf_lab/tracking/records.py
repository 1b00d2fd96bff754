"""What a run sends to MLflow, as records (one spool line each), and sending them in order."""

from __future__ import annotations

import json
import posixpath
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric
from mlflow.exceptions import RestException

from superhf_lab.core.faults import reach
from superhf_lab.tracking.store import bounded_http

_METRICS_PER_BATCH = 1000  # MLflow's limit on metrics per request


def now_ms() -> int:
    return int(time.time() * 1000)


def _is_our_bug(error: Exception) -> bool:
    """A 4xx answer means the server is up and rejected the request: buffering would only hide the bug."""
    return isinstance(error, RestException) and 400 <= error.get_http_status_code() < 500


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


def json_default(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)  # numpy scalars; anything else as text
