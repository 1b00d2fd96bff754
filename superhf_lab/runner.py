"""From a composed Hydra config to a finished MLflow run; run.py is a thin wrapper around this."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import torch
from omegaconf import DictConfig
from transformers import set_seed

from superhf_lab.config import ConfigError, RunConfig, validate_config
from superhf_lab.models import resolve_device
from superhf_lab.registry import AlgorithmPlugin, RunContext, get_algorithm
from superhf_lab.sweeps import child_tags, current_sweep_job, parent_run_id
from superhf_lab.tracking import check_tracking_store, tracked_run

log = logging.getLogger(__name__)


def paths_in_tiny_world(config: RunConfig) -> list[str]:
    """The configured model and data paths that live in the tiny world's cache folder."""
    root = Path(config.tiny_world.dir).resolve()
    candidates = [config.model.name_or_path, config.reward_model.name_or_path, config.data.train_path]
    if config.heldout_reward_model is not None:
        candidates.append(config.heldout_reward_model.name_or_path)
    return [path for path in candidates if path and Path(path).resolve().is_relative_to(root)]


def prepare(cfg: DictConfig) -> tuple[RunConfig, AlgorithmPlugin, torch.device]:
    """Everything that can fail fast: config, device, objective name, tracking store, tiny world."""
    config = validate_config(cfg)
    device = resolve_device(config.device, config.precision)
    plugin = get_algorithm(config.algorithm.name)
    if config.objective.metric not in plugin.metric_names:
        raise ConfigError(
            f"objective.metric={config.objective.metric!r} is invalid: {plugin.name} logs {sorted(plugin.metric_names)}"
        )
    check_tracking_store(config.mlflow)
    if paths_in_tiny_world(config):
        from superhf_lab.tiny_world import ensure_tiny_world

        ensure_tiny_world(config.tiny_world.dir)
    return config, plugin, device


def run_experiment(cfg: DictConfig) -> float:
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
        objective = tracker.objective(config.objective.metric, config.objective.last_n)
        mlflow.log_metric("objective", objective)
    if sweep_job is not None:
        mlflow.MlflowClient().set_terminated(parent_id, "FINISHED")  # the parent ends with its latest job
    log.info("objective %s (mean of the last %d) = %.4f", config.objective.metric, config.objective.last_n, objective)
    return objective
