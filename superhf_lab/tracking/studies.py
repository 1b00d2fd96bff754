"""Optuna's study storage as configured: an SQLAlchemy URL, or journal:<file> for a shared file system."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from superhf_lab.config.resources import resource_dir

JOURNAL = "journal:"
STUDY_SETTINGS = ("hydra", "sweeper", "optuna_study.yaml")  # the sweeper settings every study of sweeps/ uses


def configured_storage() -> str:
    """The storage the studies' sweeper settings name (OPTUNA_STORAGE, else their sqlite file), read from there."""
    return OmegaConf.load(resource_dir("conf").joinpath(*STUDY_SETTINGS)).storage


def optuna_storage(storage: str | None) -> Any:
    """What Optuna is given for a configured study storage: an SQLAlchemy URL as it is, or for ``journal:<file>``
    Optuna's JournalStorage appending to that file (a shared file system is enough; no database server)."""
    if storage is None or not storage.startswith(JOURNAL):
        return storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(storage.removeprefix(JOURNAL)))
