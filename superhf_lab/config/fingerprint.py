"""What a run computes, as one hash: how a re-run finds its checkpoints and `make results` finds finished runs."""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

# Sections that say where a run's outputs go, how it is tracked or whether it resumes: not what it computes.
OUTSIDE_COMPUTATION = ("output_dir", "checkpoint", "mlflow")


def computes(key: str) -> bool:
    """Whether a dotted config key (as MLflow params name them) is part of what a run computes."""
    return key.split(".", 1)[0] not in OUTSIDE_COMPUTATION


def run_fingerprint(cfg: DictConfig) -> str:
    """A short hash of everything that determines what the run computes (interpolations as written, so
    Hydra-only resolvers such as the output folder are never needed)."""
    container = OmegaConf.to_container(cfg, resolve=False)
    for key in OUTSIDE_COMPUTATION:
        container.pop(key, None)
    container["mlflow_experiment"] = OmegaConf.select(cfg, "mlflow.experiment_name")  # one run per experiment
    text = json.dumps(container, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
