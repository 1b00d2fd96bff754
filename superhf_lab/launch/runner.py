"""From a composed Hydra config to a finished MLflow run; run.py is a thin wrapper around this."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import set_seed

from superhf_lab.algorithms.registry import AlgorithmPlugin, get_algorithm
from superhf_lab.config.fingerprint import run_fingerprint
from superhf_lab.config.schema import RunConfig
from superhf_lab.core.errors import require
from superhf_lab.core.faults import reach
from superhf_lab.launch.compose import validate_config
from superhf_lab.launch.sweeps import child_tags, current_sweep_job, read_parent
from superhf_lab.reporting.summary import print_run_summary
from superhf_lab.runtime.checkpoint import CheckpointStore, stop_on_sigterm
from superhf_lab.runtime.distributed import Processes, export_submitit_environment
from superhf_lab.tracking.provenance import CODE_CONTENT_TAG, CODE_TAG, CONFIG_TAG, code_content, code_version
from superhf_lab.tracking.store import check_tracking_store, run_exists
from superhf_lab.tracking.tracker import ReplicaTracker, Tracker, tracked_run
from superhf_lab.training.context import RunContext
from superhf_lab.training.models import check_model_sources, resolve_device

log = logging.getLogger(__name__)


def paths_in_tiny_world(config: RunConfig) -> list[str]:
    """The configured model and data paths that live in the tiny world's cache folder."""
    root = Path(config.tiny_world.dir).resolve()
    candidates = [
        config.model.name_or_path,
        config.reward_model.name_or_path,
        *config.data.local_paths(),
        *config.preferences.local_paths(),
    ]
    if config.heldout_reward_model is not None:
        candidates.append(config.heldout_reward_model.name_or_path)
    return [path for path in candidates if path and Path(path).resolve().is_relative_to(root)]


def prepare(cfg: DictConfig) -> tuple[RunConfig, AlgorithmPlugin, Processes, torch.device]:
    """Everything that can fail fast: config, processes and device, objective name, tracking store, tiny world,
    model sources."""
    config = validate_config(cfg)
    export_submitit_environment()
    processes = Processes.launched(config.distributed.engine, config.device)
    device = processes.device(resolve_device(config.device, config.precision))
    plugin = get_algorithm("evaluate" if config.mode == "eval" else config.algorithm.name)
    require(
        not (processes.shards_on_cpu and plugin.transformers_trainer),
        "distributed.engine",
        "fsdp",
        f"algorithm={plugin.name} trains through a transformers Trainer, which sets accelerate up again from the "
        "launch and would run DDP on CPU processes, not FSDP; on CPU use distributed=ddp, on GPUs launch with "
        "conf/accelerate/fsdp.yaml (README, More than one GPU)",
    )
    config.objective.check_logged(plugin.metric_names, plugin.name, has_heldout=config.heldout_reward_model is not None)
    if processes.is_main:
        check_tracking_store(config.mlflow)
    if paths_in_tiny_world(config):
        from superhf_lab.tiny_world import ensure_tiny_world

        with processes.main_first():  # built once, by the main rank; the others find it
            ensure_tiny_world(config.tiny_world.dir)
    check_model_sources(config)  # model folders and hub names, reward heads: before the MLflow run opens
    return config, plugin, processes, device


def run_experiment(cfg: DictConfig) -> float | tuple[float, ...] | None:
    """Validate, seed, open the MLflow run, run the selected plugin; returns the objective for a sweeper.

    Every run has a folder in ``checkpoint.dir`` named by its configuration's fingerprint: while the main process
    runs it holds the folder's lease, and until its MLflow run has ended FINISHED the folder names that run, so the
    same command continues it (from its newest checkpoint when the plugin keeps them) wherever it was killed.

    With several processes each rank runs this; the main rank alone opens the MLflow run and returns the
    objective (the others return None), and each rank samples with its own seed (``seed`` + rank).
    """
    config, plugin, processes, device = prepare(cfg)
    set_seed(config.seed + processes.rank)
    store = CheckpointStore(Path(config.checkpoint.dir) / run_fingerprint(cfg))
    checkpoints = store if plugin.checkpoints else None
    with store.lease() if processes.is_main else contextlib.nullcontext():
        # The main process alone asks MLflow whether the folder's run exists; every process resumes as it decides.
        resume_run_id = processes.from_main(run_to_continue(store, config) if processes.is_main else None)
        resume = resume_run_id is not None
        if not processes.is_main:
            train(plugin, RunContext(config, ReplicaTracker(), device, checkpoints, resume, processes=processes))
            processes.leave()
            return None
        tags = {
            "algorithm": plugin.name,
            "output_dir": config.output_dir,
            CONFIG_TAG: run_fingerprint(cfg),
            CODE_TAG: code_version(),
            CODE_CONTENT_TAG: code_content(),
        }
        sweep_job = current_sweep_job()
        run_name = config.mlflow.run_name
        if sweep_job is None:
            run_name = run_name or plugin.run_name(config)
        else:
            tags.update(child_tags(sweep_job, read_parent(sweep_job.sweep_dir)["run_id"]))
            swept = " ".join(f"{key}={value}" for key, value in sweep_job.swept_values.items())
            run_name = run_name or swept or f"job {sweep_job.job_number}"
        with tracked_run(cfg, tags, run_name, store.folder, config.mlflow.retry_every_s, resume_run_id) as tracker:
            log.info("MLflow run %s in %s", tracker.run_id, tracker.tracking_uri)
            if not resume:
                store.start_run(tracker.run_id)
            tracker.log_params({"world_size": processes.world_size})
            train(
                plugin,
                RunContext(config, tracker, device, checkpoints, resume, processes=processes),
                lambda: log_objective(tracker, config.objective.metrics, config.objective.value(tracker.history)),
            )
        store.finish_run(tracker.run_id)
        objective = config.objective.value(tracker.history)
    print_run_summary(tracker.run_id, tracker.experiment_id, tracker.tracking_uri, config.output_dir, tracker.history)
    log.info(
        "objective %s (mean of the last %d steps) = %s", config.objective.metrics, config.objective.last_n, objective
    )
    processes.leave()
    return objective


def train(plugin: AlgorithmPlugin, context: RunContext, conclude=lambda: None) -> None:
    """The plugin's training, then ``conclude`` (the main process logs the objective). SIGTERM stops it cleanly:
    after a step with a checkpoint when the plugin keeps them, at once otherwise; one that arrives after the
    plugin's last safe point still ends the run as preempted (exit 143), and the re-run ends it."""
    with stop_on_sigterm(checkpoints=context.checkpoints is not None) as context.stop:
        plugin.train(context)
        conclude()
        reach("run_end")
        context.stop_if_requested("the run's work was done")


def run_to_continue(store: CheckpointStore, config: RunConfig) -> str | None:
    """The MLflow run this configuration's folder names and that has not ended FINISHED, if the store holds it;
    a run it lacks (another store, a deleted run) or ``checkpoint.resume=never`` sets the folder's run aside."""
    record = store.run_record()
    if record is None or record["finished"]:
        return None
    if config.checkpoint.resume == "never":
        store.set_aside("checkpoint.resume=never starts over")
        return None
    exists, why_not = run_exists(record["run_id"])
    if not exists:
        store.set_aside(f"its MLflow run {record['run_id']} is not in this tracking store ({why_not}); starting over")
        return None
    latest = store.latest_meta()
    log.info(
        "continuing MLflow run %s %s",
        record["run_id"],
        f"from its checkpoint after step {latest['step']}" if latest else "from its start (no checkpoint yet)",
    )
    return record["run_id"]


def log_objective(tracker: Tracker, metrics: list[str], objective: float | tuple[float, ...]) -> None:
    """``objective`` is the (first) value a sweeper optimises; a multi-objective run logs each one too."""
    values = objective if isinstance(objective, tuple) else (objective,)
    logged = {"objective": values[0]}
    if len(values) > 1:
        logged.update({f"objective/{name}": value for name, value in zip(metrics, values)})
    tracker.log_metrics(logged, step=0)
