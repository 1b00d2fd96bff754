"""MLflow bookkeeping: one run per job, params from the resolved config, metrics per step."""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from typing import Any, Iterator

import mlflow
import pandas as pd
import requests
from omegaconf import DictConfig, OmegaConf

from superhf_lab.config import ConfigError, MlflowConfig

COMPLETIONS_TABLE = "completions.json"
RESOLVED_CONFIG = "config.yaml"
_MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
_PARAMS_PER_BATCH = 100  # MLflow's limit on params per request
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # table appends would print bars


class Tracker:
    """Logs to the active MLflow run and keeps the history that the run's objective is read from.

    Completion rows are buffered and appended to the table every ``table_flush_every`` calls (each
    append rewrites the artifact) and once more when the run closes.
    """

    def __init__(self, table_flush_every: int = 25) -> None:
        self.history: dict[str, list[float]] = defaultdict(list)
        self.table_flush_every = table_flush_every
        self._pending_rows: list[dict[str, Any]] = []
        self._pending_calls = 0

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        mlflow.log_metrics({name: float(value) for name, value in metrics.items()}, step=step)
        for name, value in metrics.items():
            self.history[name].append(float(value))

    def log_completions(self, rows: list[dict[str, Any]]) -> None:
        """Queue sample rows (prompt, completion, rewards...) for the run's completions table."""
        self._pending_rows.extend(rows)
        self._pending_calls += 1
        if self._pending_calls >= self.table_flush_every:
            self.flush()

    def flush(self) -> None:
        if self._pending_rows:
            mlflow.log_table(pd.DataFrame(self._pending_rows), artifact_file=COMPLETIONS_TABLE)
        self._pending_rows, self._pending_calls = [], 0


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
        mlflow.set_experiment(config.experiment_name)
    except Exception as error:  # a corrupt or locked store surfaces as several MLflow/SQLAlchemy types
        raise ConfigError(
            f"mlflow.tracking_uri={uri!r} cannot be used ({str(error).splitlines()[0]}). Point mlflow.tracking_uri "
            "or MLFLOW_TRACKING_URI at a working store; a corrupt sqlite file can be moved aside"
        ) from error
    return uri


@contextlib.contextmanager
def tracked_run(resolved: DictConfig, tags: dict[str, str], run_name: str | None) -> Iterator[Tracker]:
    """An MLflow run holding the flattened config as params and the resolved YAML as an artifact."""
    with mlflow.start_run(run_name=run_name, tags=tags):
        params = flatten(OmegaConf.to_container(resolved, resolve=True))
        items = list(params.items())
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            mlflow.log_params(dict(items[start : start + _PARAMS_PER_BATCH]))
        mlflow.log_text(OmegaConf.to_yaml(resolved, resolve=True), RESOLVED_CONFIG)
        tracker = Tracker()
        try:
            yield tracker
        finally:
            tracker.flush()  # what was sampled before a crash is kept too
