"""What a run computes, as one hash: how a re-run finds its checkpoints and `make results` finds finished runs."""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

# Keys that say where outputs go or whether to resume, not what the run computes.
_NOT_FINGERPRINTED = ("output_dir", "checkpoint", "mlflow")


def run_fingerprint(cfg: DictConfig) -> str:
    """A short hash of everything that determines what the run computes (interpolations as written, so
    Hydra-only resolvers such as the output folder are never needed)."""
    container = OmegaConf.to_container(cfg, resolve=False)
    for key in _NOT_FINGERPRINTED:
        container.pop(key, None)
    container["mlflow_experiment"] = OmegaConf.select(cfg, "mlflow.experiment_name")
    text = json.dumps(container, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
