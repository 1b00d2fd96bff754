"""What a run (or a sweep) prints when it ends: where its numbers went, what they say, and how to look at them."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from superhf_lab.metrics.names import eval_metric
from superhf_lab.tracking.store import child_runs, metric_history

# What a summary and a sweep's UI view show first, by name (PPO's and GRPO's KL estimates have their own names).
HEADLINE_METRICS = (
    "reward/mean",
    "heldout_reward/mean",
    "kl",
    "kl_sequence_estimate",
    "kl_token_estimate",
    "diversity/meteor_similarity",
)
EVAL_HEADLINES = (
    "reward/mean",
    "heldout_reward/mean",
    "diversity/meteor_similarity",
    "kl",
    "kl_sequence",
    "kl_sequence_bound",
)
UI_PORT = 5000


def _console() -> Console:
    """Wide enough for the tables and links even when the output is a log file, not a terminal."""
    return Console(width=max(Console().width, 180), soft_wrap=True)


def ui_base(tracking_uri: str) -> tuple[str, str]:
    """The UI's address and the command that serves it for this store (a server's own address when it is one)."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/"), f"(the server at {tracking_uri} serves the UI)"
    return f"http://127.0.0.1:{UI_PORT}", f"mlflow ui --backend-store-uri {tracking_uri} --port {UI_PORT}"


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return (
        f"{ui_base(tracking_uri)[0]}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics"
        "?workflowType=machine_learning"
    )


def sweep_link(tracking_uri: str, experiment_id: str, view_key: str) -> str:
    return (
        f"{ui_base(tracking_uri)[0]}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        f"&compareRunsMode=CHART&viewStateShareKey={view_key}"
    )


def _number(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.3f}"


def _first_to_last(history: list[float]) -> str:
    return f"{_number(history[0])} → {_number(history[-1])}" if history else "—"


def print_run_summary(
    run_id: str,
    experiment_id: str,
    tracking_uri: str,
    output_dir: str,
    history: dict[str, list[float]],
    console: Console | None = None,
) -> None:
    """First → last value of the headline metrics, the final evaluation, and where to look."""
    console = console or _console()
    table = Table(title=f"MLflow run {run_id}", show_header=True)
    table.add_column("metric")
    table.add_column("first → last", justify="right")
    for name in HEADLINE_METRICS:
        if history.get(name):
            table.add_row(name, _first_to_last(history[name]))
    for name in EVAL_HEADLINES:
        if history.get(eval_metric(name)):
            table.add_row(f"{eval_metric(name)} (test prompts)", _number(history[eval_metric(name)][-1]))
    console.print(table)
    command = ui_base(tracking_uri)[1]
    console.print(
        f"output folder: {output_dir}\nopen it: {command}\n  then {run_link(tracking_uri, experiment_id, run_id)}"
    )


def _training_kl(metrics: dict[str, float], history: Callable[[str], list[float]]) -> str:
    """A job's training KL, first → last, named when it is an estimate rather than the exact per-token ``kl``: the
    algorithms measure different quantities while training (the test KL column is exact for all of them)."""
    name = next((name for name in ("kl", "kl_sequence_estimate", "kl_token_estimate") if name in metrics), None)
    if name is None:
        return "—"
    values = _first_to_last(history(name))
    return values if name == "kl" else f"{values} ({name})"


def _test_kl(metrics: dict[str, float]) -> str:
    """Exact KL per token on the test prompts; best-of-N has only an upper bound on its sequence KL, said so."""
    if eval_metric("kl_sequence_bound") in metrics:
        return f"≤ {metrics[eval_metric('kl_sequence_bound')]:.2f} per sequence (bound)"
    return _number(metrics.get(eval_metric("kl")))


def print_sweep_summary(
    parent: dict[str, str],
    sweep_dir: str,
    console: Console | None = None,
    history: Callable[[str, str], list[float]] = metric_history,
) -> None:
    """One row per job of the sweep: status, headline metrics first → last, final test numbers; and where to look."""
    console = console or _console()
    jobs = child_runs(parent["run_id"])
    table = Table(title=f"sweep {sweep_dir}: {len(jobs)} jobs under MLflow run {parent['run_id']}")
    columns = (
        "job",
        "status",
        "reward",
        "held-out",
        "training KL",
        "METEOR",
        "test reward",
        "test held-out",
        "test KL/token",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("job", "status") else "right")
    for job in jobs:
        run_id, metrics = job.info.run_id, job.data.metrics
        table.add_row(
            job.info.run_name,
            job.info.status,
            *(_first_to_last(history(run_id, name)) for name in ("reward/mean", "heldout_reward/mean")),
            _training_kl(metrics, functools.partial(history, run_id)),
            _first_to_last(history(run_id, "diversity/meteor_similarity")),
            *(_number(metrics.get(eval_metric(name))) for name in ("reward/mean", "heldout_reward/mean")),
            _test_kl(metrics),
        )
    console.print(table)
    command = ui_base(parent["tracking_uri"])[1]
    link = sweep_link(parent["tracking_uri"], parent["experiment_id"], parent["view_key"])
    console.print(f"sweep folder: {sweep_dir}\nopen it: {command}\n  then {link}")
