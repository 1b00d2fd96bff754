"""Typed schema of a run's configuration.

Hydra composes YAML from ``conf/``; :func:`validate_config` merges it onto these dataclasses so a typo,
a wrong type or an impossible value stops the run before any model loads, with the key's full name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

DEVICES_HELP = "use 'auto', 'cpu', 'cuda' or 'cuda:N'"
PRECISIONS = ("fp32", "bf16", "fp16")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""


def require(condition: bool, key: str, value: Any, fix: str) -> None:
    """Raise a :class:`ConfigError` naming ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{key}={value!r} is invalid: {fix}")


@dataclass
class ModelConfig:
    """The policy: a hub name or a local folder written by ``save_pretrained``."""

    name_or_path: str = "???"
    revision: Optional[str] = None
    trust_remote_code: bool = False

    def check(self, prefix: str) -> None:
        require(bool(self.name_or_path.strip()), f"{prefix}.name_or_path", self.name_or_path,
                "name a hub model (org/name) or a local folder")


@dataclass
class RewardModelConfig:
    """A scorer of (prompt, completion) text.

    ``kind: hf`` is a sequence-classification model with a single-score head, run through its own
    tokenizer; ``kind: gold`` is the tiny world's programmatic gold reward (no weights).
    """

    kind: str = "hf"
    name_or_path: Optional[str] = None
    revision: Optional[str] = None
    max_length: int = 512

    def check(self, prefix: str) -> None:
        require(self.kind in ("hf", "gold"), f"{prefix}.kind", self.kind, "use 'hf' or 'gold'")
        if self.kind == "hf":
            require(bool(self.name_or_path), f"{prefix}.name_or_path", self.name_or_path,
                    "name a hub reward model or a local folder")
        require(self.max_length > 0, f"{prefix}.max_length", self.max_length, "use a positive token count")


@dataclass
class DataConfig:
    """Where the training prompts come from (hh-rlhf text format, one JSON object per line)."""

    name: str = "toy"
    train_path: str = "???"
    max_prompt_chars: int = 1024
    shuffle: bool = True

    def check(self, prefix: str) -> None:
        require(self.max_prompt_chars > 0, f"{prefix}.max_prompt_chars", self.max_prompt_chars,
                "use a positive character count")


@dataclass
class TinyWorldConfig:
    """Cache folder of the embedded tiny world, built on demand when a path points into it."""

    dir: str = ".cache/tiny_world"


@dataclass
class MlflowConfig:
    """Tracking settings. ``tracking_uri: null`` defers to MLFLOW_TRACKING_URI, else local sqlite."""

    tracking_uri: Optional[str] = None
    experiment_name: str = "superhf_lab"
    run_name: Optional[str] = None
    completions_logged_per_superbatch: int = 4

    def check(self, prefix: str) -> None:
        require(bool(self.experiment_name.strip()), f"{prefix}.experiment_name", self.experiment_name,
                "give the experiment a name")
        require(self.completions_logged_per_superbatch >= 0, f"{prefix}.completions_logged_per_superbatch",
                self.completions_logged_per_superbatch, "use 0 or more")


@dataclass
class ObjectiveConfig:
    """What run.py returns to a sweeper: the mean of ``metric`` over the run's last ``last_n`` steps."""

    metric: str = "reward/mean"
    last_n: int = 1

    def check(self, prefix: str) -> None:
        require(self.last_n >= 1, f"{prefix}.last_n", self.last_n, "average over at least 1 step")


@dataclass
class LoraSettings:
    """LoRA adapters (peft) on the policy; the KL reference is then the model with adapters disabled."""

    enabled: bool = False
    r: int = 4
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Optional[list[str]] = None  # None: peft's default for the architecture

    def check(self, prefix: str) -> None:
        if self.enabled:
            require(self.r > 0, f"{prefix}.r", self.r, "use a positive rank")
            require(0 <= self.dropout < 1, f"{prefix}.dropout", self.dropout, "use a value in [0, 1)")

    def to_peft(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, task_type="CAUSAL_LM",
                          target_modules=list(self.target_modules) if self.target_modules else None)


@dataclass
class RunConfig:
    """The whole run. ``algorithm`` is typed by the plugin that ``algorithm.name`` selects."""

    model: ModelConfig = field(default_factory=ModelConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    heldout_reward_model: Optional[RewardModelConfig] = None
    algorithm: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    tiny_world: TinyWorldConfig = field(default_factory=TinyWorldConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    kl_coef: float = 0.35
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    output_dir: str = "outputs"

    def check(self) -> None:
        for section in (self.model, self.reward_model, self.data, self.mlflow, self.objective):
            section.check(_field_name(self, section))
        if self.heldout_reward_model is not None:
            self.heldout_reward_model.check("heldout_reward_model")
        require(math.isfinite(self.kl_coef) and self.kl_coef >= 0, "kl_coef", self.kl_coef,
                "use a finite value >= 0 (0 turns the penalty off but still logs the KL)")
        require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                "device", self.device, DEVICES_HELP)
        require(self.precision in PRECISIONS, "precision", self.precision, f"use one of {PRECISIONS}")
        self.algorithm.check()


def _field_name(parent: Any, child: Any) -> str:
    return next(f.name for f in fields(parent) if getattr(parent, f.name) is child)


def validate_config(cfg: DictConfig) -> RunConfig:
    """Type-check and range-check a composed config; returns typed objects or raises ConfigError."""
    from superhf_lab.registry import get_algorithm  # plugins import this module

    algorithm_name = OmegaConf.select(cfg, "algorithm.name")
    plugin = get_algorithm(algorithm_name)
    schema = OmegaConf.structured(RunConfig)
    schema.algorithm = OmegaConf.structured(plugin.config_class)
    try:
        merged = OmegaConf.merge(schema, cfg)
        run_config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(_describe_omegaconf_error(error)) from None
    assert isinstance(run_config, RunConfig) and is_dataclass(run_config.algorithm)
    run_config.check()
    return run_config


def _describe_omegaconf_error(error: OmegaConfBaseException) -> str:
    key = getattr(error, "full_key", None) or "?"
    reason = str(error).splitlines()[0]
    return f"config key '{key}': {reason}. Check the spelling and type against conf/ and superhf_lab/config.py."
