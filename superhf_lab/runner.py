"""From a composed Hydra config to a finished MLflow run; run.py is a thin wrapper around this."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import torch
from omegaconf import DictConfig
from transformers import set_seed

from superhf_lab.config import RunConfig, validate_config
from superhf_lab.models import resolve_device
from superhf_lab.registry import AlgorithmPlugin, RunContext, get_algorithm
from superhf_lab.sweeps import child_tags, current_sweep_job, parent_run_id
from superhf_lab.tracking import check_tracking_store, tracked_run

log = logging.getLogger(__name__)


def paths_in_tiny_world(config: RunConfig) -> list[str]:
    """The configured model and data paths that live in the tiny world's cache folder."""
    root = Path(config.tiny_world.dir).resolve()
    candidates = [config.model.name_or_path, config.reward_model.name_or_path, *config.data.local_paths()]
    if config.heldout_reward_model is not None:
        candidates.append(config.heldout_reward_model.name_or_path)
    return [path for path in candidates if path and Path(path).resolve().is_relative_to(root)]


def prepare(cfg: DictConfig) -> tuple[RunConfig, AlgorithmPlugin, torch.device]:
    """Everything that can fail fast: config, device, objective name, tracking store, tiny world."""
    config = validate_config(cfg)
    device = resolve_device(config.device, config.precision)
    plugin = get_algorithm(config.algorithm.name)
    config.objective.check_logged(plugin.metric_names, plugin.name, has_heldout=config.heldout_reward_model is not None)
    check_tracking_store(config.mlflow)
    if paths_in_tiny_world(config):
        from superhf_lab.tiny_world import ensure_tiny_world

        ensure_tiny_world(config.tiny_world.dir)
    return config, plugin, device


def run_experiment(cfg: DictConfig) -> float | tuple[float, ...]:
    """Validate, seed, open the MLflow run, train with the selected plugin; returns the objective."""
    config, plugin, device = prepare(cfg)
    set_seed(config.seed)
    tags = {"algorithm": plugin.name, "output_dir": config.output_dir}
    sweep_job = current_sweep_job()
    run_name = config.mlflow.run_name
    if sweep_job is not None:
        parent_id = parent_run_id(sweep_job, config.mlflow.experiment_name)
        tags.update(child_tags(sweep_job, parent_id))
        swept = " ".join(f"{key}={value}" for key, value in sweep_job.swept_values.items())
        run_name = run_name or swept or f"job {sweep_job.job_number}"
    with tracked_run(cfg, tags, run_name) as tracker:
        run_id = mlflow.active_run().info.run_id
        log.info("MLflow run %s in %s", run_id, mlflow.get_tracking_uri())
        plugin.train(RunContext(config, tracker, device))
        objective = config.objective.value(tracker.history)
        log_objective(config.objective.metrics, objective)
    if sweep_job is not None:
        mlflow.MlflowClient().set_terminated(parent_id, "FINISHED")  # the parent ends with its latest job
    log.info("objective %s (mean of the last %d steps) = %s", config.objective.metrics, config.objective.last_n, objective)
    return objective


def log_objective(metrics: list[str], objective: float | tuple[float, ...]) -> None:
    """``objective`` is the (first) value a sweeper optimises; a multi-objective run logs each one too."""
    values = objective if isinstance(objective, tuple) else (objective,)
    mlflow.log_metric("objective", values[0])
    if len(values) > 1:
        mlflow.log_metrics({f"objective/{name}": value for name, value in zip(metrics, values)})
