"""PPO's settings; the top-level ``kl_coef`` is its (initial) KL penalty coefficient."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from superhf_lab.config.schema import LoraSettings
from superhf_lab.core.errors import require

KL_ESTIMATORS = ("k1", "k3")


@dataclass
class AdaptiveKLSettings:
    """Adaptive KL control (Ziegler et al. 2019); the paper's Table 3: on, target 6, horizon 10000."""

    enabled: bool = False
    target: float = 6.0
    horizon: float = 10000.0


@dataclass
class PPOAlgorithmConfig:
    """PPO hyperparameters (names follow TRL's ``PPOConfig`` where they exist)."""

    name: str = "ppo"
    num_updates: int = 40
    batch_size: int = 32  # prompts per update, one completion each
    num_mini_batches: int = 4
    num_ppo_epochs: int = 4
    learning_rate: float = 1.41e-5
    lr_schedule: str = "linear"
    max_new_tokens: int = 64
    temperature: float = 1.0  # TRL samples with top-p 1.0 and no top-k, as the paper's Table 3
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    kl_estimator: str = "k3"
    whiten_rewards: bool = False
    missing_eos_penalty: Optional[float] = None
    rollout_minibatch_size: int = 16
    adaptive_kl: AdaptiveKLSettings = field(default_factory=AdaptiveKLSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)

    def check(self) -> None:
        for name in ("num_updates", "batch_size", "num_mini_batches", "num_ppo_epochs", "max_new_tokens",
                     "rollout_minibatch_size"):
            require(getattr(self, name) > 0, f"algorithm.{name}", getattr(self, name), "use a positive integer")
        require(self.batch_size % self.num_mini_batches == 0, "algorithm.num_mini_batches", self.num_mini_batches,
                f"must divide algorithm.batch_size={self.batch_size}")
        require(self.temperature > 0, "algorithm.temperature", self.temperature, "PPO samples; use a temperature > 0")
        require(self.learning_rate > 0, "algorithm.learning_rate", self.learning_rate, "use a value > 0")
        require(self.kl_estimator in KL_ESTIMATORS, "algorithm.kl_estimator", self.kl_estimator,
                f"use one of {KL_ESTIMATORS}")
        require(0 < self.cliprange, "algorithm.cliprange", self.cliprange, "use a value > 0")
        require(0 <= self.gamma <= 1 and 0 <= self.lam <= 1, "algorithm.gamma/lam", (self.gamma, self.lam),
                "use values in [0, 1]")
        if self.adaptive_kl.enabled:
            require(self.adaptive_kl.target > 0 and self.adaptive_kl.horizon > 0, "algorithm.adaptive_kl",
                    (self.adaptive_kl.target, self.adaptive_kl.horizon), "use a positive target and horizon")
        self.lora.check("algorithm.lora")
