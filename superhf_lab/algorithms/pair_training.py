"""DPO's and FeedME's shared settings: methods that learn from preference pairs and sample only to measure."""

from __future__ import annotations

from dataclasses import dataclass, field

from superhf_lab.config.schema import LoraSettings
from superhf_lab.core.errors import require


@dataclass
class PairTrainingConfig:
    """Settings shared by the methods that train on the preference pairs and sample only to measure (DPO, FeedME)."""

    num_steps: int = 40  # optimizer steps
    learning_rate: float = 1e-6
    lr_schedule: str = "linear"
    max_length: int = 512  # tokens of prompt + response, longer examples truncated
    probe_prompts: int = 16  # training prompts sampled at every step to measure the policy
    minibatch_size_scoring: int = 32
    lora: LoraSettings = field(default_factory=LoraSettings)

    def check(self) -> None:
        for key in ("num_steps", "max_length", "probe_prompts", "minibatch_size_scoring"):
            require(getattr(self, key) > 0, f"algorithm.{key}", getattr(self, key), "use a positive integer")
        require(self.learning_rate > 0, "algorithm.learning_rate", self.learning_rate, "use a value > 0")
        self.lora.check("algorithm.lora")
