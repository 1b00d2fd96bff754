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

    enabled: bool = field(default=False, metadata={"help": "move kl_coef towards the target KL after every update"})
    target: float = field(
        default=6.0, metadata={"help": "target KL: TRL's estimate per completion (kl_sequence_estimate), in nats"}
    )
    horizon: float = field(
        default=10000.0,
        metadata={
            "help": "horizon in prompts: an update changes kl_coef by at most 0.2 x batch_size / horizon of its value"
        },
    )


@dataclass
class PPOAlgorithmConfig:
    """PPO hyperparameters (names follow TRL's ``PPOConfig`` where they exist)."""

    name: str = field(default="ppo", metadata={"help": "algorithm name: selects the PPO plugin"})
    num_updates: int = field(default=40, metadata={"help": "PPO updates (rollout, then optimisation) in the run"})
    batch_size: int = field(default=32, metadata={"help": "prompts per update over all processes, one completion each"})
    num_mini_batches: int = field(
        default=4,
        metadata={"help": "minibatches each update's rollout is split into per epoch, one optimizer step each"},
    )
    num_ppo_epochs: int = field(default=4, metadata={"help": "passes over each update's rollout"})
    learning_rate: float = field(default=1.41e-5, metadata={"help": "peak learning rate of the policy and value model"})
    lr_schedule: str = field(
        default="linear", metadata={"help": "learning-rate schedule over the run (transformers' lr_scheduler_type)"}
    )
    max_new_tokens: int = field(
        default=64, metadata={"help": "most tokens generated per completion (TRL's response_length)"}
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "sampling temperature; TRL samples with top-p 1.0 and no top-k, as the paper's Table 3"},
    )
    cliprange: float = field(default=0.2, metadata={"help": "clip range of the policy's probability ratio"})
    cliprange_value: float = field(
        default=0.2, metadata={"help": "clip range of the value predictions around the rollout's values"}
    )
    vf_coef: float = field(default=0.1, metadata={"help": "weight of the value loss in the total loss"})
    gamma: float = field(default=1.0, metadata={"help": "discount factor of rewards from token to token"})
    lam: float = field(default=0.95, metadata={"help": "lambda of the generalised advantage estimate (GAE)"})
    kl_estimator: str = field(
        default="k3", metadata={"help": "per-token KL estimator of the penalty: k1 (log-ratio) or k3 (never negative)"}
    )
    whiten_rewards: bool = field(
        default=False, metadata={"help": "whiten each update's rewards before computing advantages"}
    )
    missing_eos_penalty: Optional[float] = field(
        default=None,
        metadata={"help": "subtracted from the reward of a completion that ends without EOS; null: no penalty"},
    )
    rollout_minibatch_size: int = field(
        default=16,
        metadata={"help": "rows per forward pass of rollout generation (per process) and of the reward models"},
    )
    adaptive_kl: AdaptiveKLSettings = field(
        default_factory=AdaptiveKLSettings, metadata={"help": "adaptive control of kl_coef towards a target KL"}
    )
    lora: LoraSettings = field(
        default_factory=LoraSettings, metadata={"help": "LoRA adapters on the policy (TRL applies them)"}
    )

    def check(self) -> None:
        for name in (
            "num_updates",
            "batch_size",
            "num_mini_batches",
            "num_ppo_epochs",
            "max_new_tokens",
            "rollout_minibatch_size",
        ):
            require(getattr(self, name) > 0, f"algorithm.{name}", getattr(self, name), "use a positive integer")
        require(
            self.batch_size % self.num_mini_batches == 0,
            "algorithm.num_mini_batches",
            self.num_mini_batches,
            f"must divide algorithm.batch_size={self.batch_size}",
        )
        require(self.temperature > 0, "algorithm.temperature", self.temperature, "PPO samples; use a temperature > 0")
        require(self.learning_rate > 0, "algorithm.learning_rate", self.learning_rate, "use a value > 0")
        require(
            self.kl_estimator in KL_ESTIMATORS,
            "algorithm.kl_estimator",
            self.kl_estimator,
            f"use one of {KL_ESTIMATORS}",
        )
        require(0 < self.cliprange, "algorithm.cliprange", self.cliprange, "use a value > 0")
        require(
            0 <= self.gamma <= 1 and 0 <= self.lam <= 1,
            "algorithm.gamma/lam",
            (self.gamma, self.lam),
            "use values in [0, 1]",
        )
        if self.adaptive_kl.enabled:
            require(
                self.adaptive_kl.target > 0 and self.adaptive_kl.horizon > 0,
                "algorithm.adaptive_kl",
                (self.adaptive_kl.target, self.adaptive_kl.horizon),
                "use a positive target and horizon",
            )
        self.lora.check("algorithm.lora")
