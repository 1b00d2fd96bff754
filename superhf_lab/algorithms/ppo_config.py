"""PPO's settings; the top-level ``kl_coef`` is its (initial) KL penalty coefficient.

The sampling keys (``algorithm.temperature``, ``top_p``, ...) are :class:`SamplingSettings`', shared with SuperHF;
PPO's defaults sample from the policy's own distribution (top-p 1, no repetition penalty), so the probability
ratios PPO optimises are those of the distribution the completions came from. The implementation details Huang et
al. list for PPO-based RLHF ("The N Implementation Details of RLHF with PPO", 2023) are options here: reward
whitening, reward normalisation, the penalty for completions that never end, adaptive KL control and the value
head's initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from superhf_lab.config.schema import LoraSettings, SamplingSettings, check_training_limits
from superhf_lab.core.errors import require

KL_ESTIMATORS = ("k1", "k2", "k3", "exact")
VALUE_MODELS = ("separate", "shared_backbone")
VALUE_HEAD_INITS = ("model", "scaled", "zero")
REWARD_NORMALISATIONS = ("none", "first_rollout")
LR_SCHEDULES = ("linear", "cosine", "constant")


@dataclass
class AdaptiveKLSettings:
    """Adaptive KL control (Ziegler et al. 2019); the paper's Table 3: on, target 6, horizon 10000."""

    enabled: bool = field(default=False, metadata={"help": "move kl_coef towards the target KL after every update"})
    target: float = field(
        default=6.0, metadata={"help": "target KL per completion (kl_sequence_estimate, the penalised one), in nats"}
    )
    horizon: float = field(
        default=10000.0,
        metadata={
            "help": "horizon in prompts: an update changes kl_coef by at most 0.2 x batch_size / horizon of its value"
        },
    )


@dataclass
class PPOAlgorithmConfig(SamplingSettings):
    """PPO hyperparameters (names follow TRL's former ``PPOConfig`` where it had them)."""

    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling; 1.0 samples the policy's distribution"})
    name: str = field(default="ppo", metadata={"help": "algorithm name: selects the PPO plugin"})
    num_updates: int = field(default=40, metadata={"help": "PPO updates (rollout, then optimisation) in the run"})
    batch_size: int = field(default=32, metadata={"help": "prompts per update over all processes, one completion each"})
    num_mini_batches: int = field(
        default=4,
        metadata={"help": "minibatches each update's rollout is split into per epoch, one optimizer step each"},
    )
    num_ppo_epochs: int = field(default=4, metadata={"help": "passes over each update's rollout"})
    learning_rate: float = field(default=1.41e-5, metadata={"help": "AdamW's peak learning rate (policy and value)"})
    lr_schedule: str = field(default="linear", metadata={"help": "decay over the updates: linear, cosine, or constant"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW's weight decay"})
    max_grad_norm: Optional[float] = field(
        default=None, metadata={"help": "gradient norm clipped to this per optimizer step; null: no clipping"}
    )
    cliprange: float = field(default=0.2, metadata={"help": "clip range of the policy's probability ratio"})
    cliprange_value: float = field(
        default=0.2, metadata={"help": "clip range of the value predictions around the rollout's values"}
    )
    vf_coef: float = field(default=0.1, metadata={"help": "weight of the value loss in the total loss"})
    gamma: float = field(default=1.0, metadata={"help": "discount factor of rewards from token to token"})
    lam: float = field(default=0.95, metadata={"help": "lambda of the generalised advantage estimate (GAE)"})
    kl_estimator: str = field(
        default="k3",
        metadata={
            "help": "per-token KL of the penalty: k1 (log-ratio), k2 (half its square), k3 (never negative) on the "
            "sampled token, or exact (over the vocabulary, as SuperHF's loss)"
        },
    )
    whiten_rewards: bool = field(
        default=False, metadata={"help": "whiten each update's per-token rewards (mean kept) before GAE"}
    )
    reward_normalisation: str = field(
        default="none",
        metadata={
            "help": "none, or first_rollout: scores standardised by the mean and std of the first rollout's (the "
            "starting policy's) scores"
        },
    )
    missing_eos_penalty: Optional[float] = field(
        default=None,
        metadata={"help": "subtracted from the score of a completion that never ends (no EOS, no cut); null: none"},
    )
    value_model: str = field(
        default="separate",
        metadata={"help": "separate: a copy of the policy with a value head; shared_backbone: a head on the policy"},
    )
    value_head_init: str = field(
        default="model",
        metadata={"help": "value head weights: model (its own init), scaled (N(0, 1/(hidden+1)), bias 0), or zero"},
    )
    rollout_minibatch_size: int = field(
        default=16,
        metadata={"help": "rows per forward pass of generation, the rollout's statistics and the reward models"},
    )
    max_nonfinite_losses: int = field(
        default=10, metadata={"help": "stop the run after this many skipped NaN/inf losses"}
    )
    max_oom_halvings: int = field(
        default=4, metadata={"help": "out of memory halves that phase's minibatch, at most this often per phase"}
    )
    adaptive_kl: AdaptiveKLSettings = field(
        default_factory=AdaptiveKLSettings, metadata={"help": "adaptive control of kl_coef towards a target KL"}
    )
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "LoRA adapters on the policy"})

    def check(self, prefix: str = "algorithm") -> None:
        for name in (
            "num_updates",
            "batch_size",
            "num_mini_batches",
            "num_ppo_epochs",
            "rollout_minibatch_size",
        ):
            require(getattr(self, name) > 0, f"{prefix}.{name}", getattr(self, name), "use a positive integer")
        super().check(prefix)
        require(
            self.batch_size % self.num_mini_batches == 0,
            f"{prefix}.num_mini_batches",
            self.num_mini_batches,
            f"must divide {prefix}.batch_size={self.batch_size}",
        )
        require(self.learning_rate > 0, f"{prefix}.learning_rate", self.learning_rate, "use a value > 0")
        for name, allowed in (
            ("lr_schedule", LR_SCHEDULES),
            ("kl_estimator", KL_ESTIMATORS),
            ("value_model", VALUE_MODELS),
            ("value_head_init", VALUE_HEAD_INITS),
            ("reward_normalisation", REWARD_NORMALISATIONS),
        ):
            require(getattr(self, name) in allowed, f"{prefix}.{name}", getattr(self, name), f"use one of {allowed}")
        require(0 < self.cliprange, f"{prefix}.cliprange", self.cliprange, "use a value > 0")
        require(0 < self.cliprange_value, f"{prefix}.cliprange_value", self.cliprange_value, "use a value > 0")
        require(
            0 <= self.gamma <= 1 and 0 <= self.lam <= 1,
            f"{prefix}.gamma/lam",
            (self.gamma, self.lam),
            "use values in [0, 1]",
        )
        check_training_limits(self, prefix)
        if self.adaptive_kl.enabled:
            require(
                self.adaptive_kl.target > 0 and self.adaptive_kl.horizon > 0,
                f"{prefix}.adaptive_kl",
                (self.adaptive_kl.target, self.adaptive_kl.horizon),
                "use a positive target and horizon",
            )
        self.lora.check(f"{prefix}.lora")
