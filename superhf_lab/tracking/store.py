"""The tracking store: probing it, and the queries sweeps, reports and runs make of it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import mlflow
import requests

from superhf_lab.config.schema import MlflowConfig
from superhf_lab.core.errors import ConfigError
from superhf_lab.core.faults import reach

log = logging.getLogger(__name__)

# MLflow 3's UI opens an experiment as GenAI (traces) or model training (runs and charts) by this tag.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"


MODEL_TRAINING = "custom_model_development"


SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # what the UI's ?viewStateShareKey=<key> reads


# MLflow's defaults retry a dead server for minutes (7 retries, exponential backoff, 120 s timeout);
# a run's own logging gives up after a few seconds instead and keeps what it could not send.
_BOUNDED_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
HEALTH_TIMEOUT_S = float(_BOUNDED_HTTP["MLFLOW_HTTP_REQUEST_TIMEOUT"])  # the /health probe waits as long as a request


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


def _health_error(tracking_uri: str) -> Exception | None:
    """Why an HTTP tracking server fails its ``/health`` probe (None: it answers, or the store is not a server)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    try:
        requests.get(tracking_uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S).raise_for_status()
    except requests.RequestException as error:
        return error
    return None


def server_answers(tracking_uri: str) -> bool:
    """A cheap probe before sending a backlog; stores that are not HTTP servers always count as up."""
    return _health_error(tracking_uri) is None


def check_tracking_store(config: MlflowConfig) -> str:
    """Set and probe the tracking store before any model loads, so a dead server costs seconds, not a run.

    ``mlflow.tracking_uri`` in the config wins; otherwise MLflow's own MLFLOW_TRACKING_URI or its default
    (``sqlite:///mlflow.db`` in the working directory).
    """
    if config.tracking_uri:
        mlflow.set_tracking_uri(config.tracking_uri)
    uri = mlflow.get_tracking_uri()
    error = _health_error(uri)
    if error is not None:
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
        return client.search_runs(
            [experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
            order_by=["attributes.start_time ASC"],
        )


def metric_history(run_id: str, key: str, client: mlflow.MlflowClient | None = None) -> list[float]:
    """A metric's values in step order."""
    client = client or mlflow.MlflowClient()
    with bounded_http():
        return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def set_terminated_or_warn(run_id: str, status: str) -> None:
    """End another run (a sweep's parent) without letting a dead server fail the job that trained."""
    try:
        with bounded_http():
            mlflow.MlflowClient().set_terminated(run_id, status)
    except Exception as error:
        log.warning("could not mark MLflow run %s %s (%s)", run_id, status, str(error).splitlines()[0])
