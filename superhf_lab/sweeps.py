"""Grouping the jobs of one Hydra multirun under one MLflow parent run.

Every job of ``python run.py -m ...`` becomes a child run (``mlflow.parentRunId``) of a parent run found
or created by the first job, keyed by the sweep's output folder (or, for an Optuna study, by the
study's name, so a resumed study keeps adding to one parent), so the MLflow UI nests the jobs and one
sweep's runs are told apart from another's. Swept values are params (the flattened config) and
``sweep.<key>`` tags, ready for the UI's compare view and parallel-coordinates plot.
"""

from __future__ import annotations

import fcntl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from omegaconf import OmegaConf

SWEEP_TAG = "superhf_lab.sweep"
ROLE_TAG = "superhf_lab.role"
STUDY_TAG = "superhf_lab.optuna_study"


JOURNAL = "journal:"


def optuna_storage(storage: str | None) -> Any:
    """What Optuna is given for a configured study storage: an SQLAlchemy URL as it is, or for ``journal:<file>``
    Optuna's JournalStorage appending to that file (a shared file system is enough; no database server)."""
    if storage is None or not storage.startswith(JOURNAL):
        return storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(storage.removeprefix(JOURNAL)))


def _as_pairs(overrides) -> dict[str, str]:
    """``key=value`` overrides as a dict; Hydra's escapes (``\\:``) removed so typed and job values compare."""
    pairs = (override.lstrip("+~").split("=", 1) for override in overrides if "=" in override)
    return {key: value.replace("\\", "") for key, value in pairs}


@dataclass(frozen=True)
class SweepJob:
    sweep_dir: str
    job_number: int
    overrides: tuple[str, ...]  # this job's command-line overrides, one value each
    swept_keys: frozenset[str]  # the keys whose values vary across the sweep
    study_name: str | None = None  # set when hydra-optuna-sweeper launched the job

    @property
    def swept_values(self) -> dict[str, str]:
        """This job's values of the keys that vary across the sweep."""
        return {key: value for key, value in _as_pairs(self.overrides).items() if key in self.swept_keys}

    @property
    def group(self) -> str:
        """What the parent run is keyed by: the Optuna study, else the sweep's output folder."""
        return f"optuna study {self.study_name}" if self.study_name else self.sweep_dir


def current_sweep_job() -> SweepJob | None:
    """This job's place in a Hydra multirun, or None for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return None
    sweep_dir = Path(hydra.sweep.dir).resolve()
    overrides = _as_pairs(hydra.overrides.task)
    if "optuna" in str(hydra.sweeper.get("_target_")):
        # The study's search space is hydra.sweeper.params; each job gets one sampled value per key.
        swept = frozenset(hydra.sweeper.params or {})
        return SweepJob(str(sweep_dir), hydra.job.num, tuple(hydra.overrides.task), swept, hydra.sweeper.study_name)
    multirun_file = sweep_dir / "multirun.yaml"  # the basic sweeper writes it before launching the jobs
    typed = _as_pairs(OmegaConf.load(multirun_file).hydra.overrides.task) if multirun_file.is_file() else {}
    swept = frozenset(key for key, value in overrides.items() if typed.get(key) != value)
    return SweepJob(str(sweep_dir), hydra.job.num, tuple(hydra.overrides.task), swept)


def parent_run_id(job: SweepJob, experiment_name: str) -> str:
    """The sweep's parent run, created by whichever job gets here first (a file lock serialises jobs).

    Jobs of one sweep share the lock; a study resumed while another invocation of it is still starting
    could create a second parent, which only splits the study's runs between two parents.
    """
    client = mlflow.MlflowClient()
    experiment_id = client.get_experiment_by_name(experiment_name).experiment_id
    lock_path = Path(job.sweep_dir) / ".mlflow_parent.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = client.search_runs(
            [experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{job.group}' and tags.`{ROLE_TAG}` = 'sweep'",
            max_results=1,
        )
        if found:
            return found[0].info.run_id
        tags = {SWEEP_TAG: job.group, ROLE_TAG: "sweep"}
        if job.study_name:
            tags[STUDY_TAG] = job.study_name
            name = job.group
        else:
            name = "sweep " + "/".join(Path(job.sweep_dir).parts[-2:])
        parent = client.create_run(experiment_id, run_name=name, tags=tags)
        client.log_param(parent.info.run_id, "sweep_dir", job.sweep_dir)
        return parent.info.run_id


def child_tags(job: SweepJob, parent_id: str) -> dict[str, str]:
    return {
        "mlflow.parentRunId": parent_id,
        SWEEP_TAG: job.group,
        ROLE_TAG: "job",
        "sweep.dir": job.sweep_dir,
        "sweep.job_number": str(job.job_number),
        "sweep.overrides": " ".join(job.overrides),
        **{f"sweep.{key}": value for key, value in job.swept_values.items()},
    }
