"""DPO's and FeedME's shared settings: methods that learn from preference pairs and sample only to measure."""

from __future__ import annotations

from dataclasses import dataclass, field

from superhf_lab.config.schema import LoraSettings
from superhf_lab.core.errors import require


@dataclass
class PairTrainingConfig:
    """Settings shared by the methods that train on the preference pairs and sample only to measure (DPO, FeedME)."""

    num_steps: int = field(default=40, metadata={"help": "optimizer steps"})
    learning_rate: float = field(default=1e-6, metadata={"help": "peak learning rate"})
    lr_schedule: str = field(
        default="linear", metadata={"help": "learning-rate schedule over the run (transformers' lr_scheduler_type)"}
    )
    max_length: int = field(
        default=512, metadata={"help": "tokens of prompt + response; longer examples are truncated"}
    )
    probe_prompts: int = field(
        default=16, metadata={"help": "training prompts sampled at every step to measure the policy"}
    )
    minibatch_size_scoring: int = field(default=32, metadata={"help": "completions per reward-model forward"})
    lora: LoraSettings = field(
        default_factory=LoraSettings, metadata={"help": "LoRA adapters on the policy (TRL applies them)"}
    )

    def check(self) -> None:
        for key in ("num_steps", "max_length", "probe_prompts", "minibatch_size_scoring"):
            require(getattr(self, key) > 0, f"algorithm.{key}", getattr(self, key), "use a positive integer")
        require(self.learning_rate > 0, "algorithm.learning_rate", self.learning_rate, "use a value > 0")
        self.lora.check("algorithm.lora")
