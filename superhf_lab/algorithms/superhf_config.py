"""SuperHF's settings (arXiv 2310.16763); ``kl_coef`` lives at the top level of the run config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from superhf_lab.config.schema import LoraSettings, SamplingSettings, check_training_limits
from superhf_lab.core.errors import require

LR_SCHEDULES = ("cosine", "linear", "constant")


KL_DIRECTIONS = ("policy_to_reference", "reference_to_policy")  # KL(pi || pi_ref) or the reference's KL(pi_ref || pi)


LOSS_REDUCTIONS = ("mean", "reference")


KL_MASKS = ("shifted", "unshifted")  # logits that predict completion tokens, or the logits at completion tokens


LENGTH_PENALTY_FORMS = ("linear", "log")  # per character of the stripped completion, or x log(characters)


@dataclass
class SuperHFConfig(SamplingSettings):
    """SuperHF hyperparameters. The sampling keys (``algorithm.temperature``, ...) are :class:`SamplingSettings`'."""

    # Unlike SamplingSettings' 1.0: the reference trainer's value (its generation_top_k of 50 is not kept: 0, off).
    repetition_penalty: float = field(default=1.05, metadata={"help": "generate's repetition penalty; 1.0 is none"})
    name: str = field(default="superhf", metadata={"help": "the algorithm plugin (algorithm=superhf)"})
    num_superbatches: int = field(
        default=40, metadata={"help": "superbatches to run: the learning-rate schedule's length"}
    )
    prompt_accumulation_steps: int = field(default=2, metadata={"help": "prompts per superbatch"})
    superbatch_size: int = field(default=16, metadata={"help": "completions sampled per prompt"})
    top_k: int = field(default=1, metadata={"help": "completions kept per prompt"})
    length_penalty: float = field(
        default=0.0, metadata={"help": "subtracted from the reward for selection only, see length_penalty_form"}
    )
    length_penalty_form: str = field(
        default="linear", metadata={"help": "linear: x characters; log: x log(characters), as the reference"}
    )
    kl_direction: str = field(
        default="policy_to_reference",
        metadata={
            "help": "policy_to_reference: KL(pi || pi_ref); reference_to_policy: the reference's KL(pi_ref || pi)"
        },
    )
    loss_reduction: str = field(
        default="mean",
        metadata={"help": "mean: over a minibatch's completions; reference: the reference trainer's sums"},
    )
    kl_mask: str = field(
        default="shifted",
        metadata={
            "help": "shifted: the logits that predict completion tokens; unshifted: the logits at them (the reference)"
        },
    )
    learning_rate: float = field(default=2e-5, metadata={"help": "AdamW's peak learning rate"})
    lr_schedule: str = field(default="cosine", metadata={"help": "after warmup: cosine or linear decay, or constant"})
    warmup_superbatches: int = field(default=0, metadata={"help": "superbatches of linear learning-rate warmup"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW's weight decay"})
    max_grad_norm: Optional[float] = field(
        default=1.0, metadata={"help": "gradient norm clipped to this per optimizer step; null: no clipping"}
    )
    minibatch_size_generating: int = field(default=32, metadata={"help": "completions sampled per generate call"})
    minibatch_size_scoring: int = field(default=32, metadata={"help": "completions per reward-model forward"})
    minibatch_size_finetuning: int = field(default=8, metadata={"help": "kept completions per optimizer step"})
    max_nonfinite_losses: int = field(
        default=10, metadata={"help": "stop the run after this many skipped NaN/inf losses"}
    )
    max_oom_halvings: int = field(
        default=4, metadata={"help": "out of memory halves that phase's minibatch, at most this often per phase"}
    )
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "LoRA adapters on the policy"})

    def check(self, prefix: str = "algorithm") -> None:
        positive = (
            "num_superbatches",
            "prompt_accumulation_steps",
            "superbatch_size",
            "top_k",
            "minibatch_size_generating",
            "minibatch_size_scoring",
            "minibatch_size_finetuning",
        )
        for name in positive:
            require(getattr(self, name) > 0, f"{prefix}.{name}", getattr(self, name), "use a positive integer")
        require(
            self.top_k <= self.superbatch_size,
            f"{prefix}.top_k",
            self.top_k,
            f"keep at most {prefix}.superbatch_size={self.superbatch_size} completions per prompt",
        )
        super().check(prefix)
        require(self.learning_rate > 0, f"{prefix}.learning_rate", self.learning_rate, "use a value > 0")
        require(
            self.lr_schedule in LR_SCHEDULES, f"{prefix}.lr_schedule", self.lr_schedule, f"use one of {LR_SCHEDULES}"
        )
        require(
            0 <= self.warmup_superbatches <= self.num_superbatches,
            f"{prefix}.warmup_superbatches",
            self.warmup_superbatches,
            f"use 0..{prefix}.num_superbatches={self.num_superbatches}",
        )
        check_training_limits(self, prefix)
        for name, allowed in (
            ("length_penalty_form", LENGTH_PENALTY_FORMS),
            ("kl_direction", KL_DIRECTIONS),
            ("loss_reduction", LOSS_REDUCTIONS),
            ("kl_mask", KL_MASKS),
        ):
            require(getattr(self, name) in allowed, f"{prefix}.{name}", getattr(self, name), f"use one of {allowed}")
        self.lora.check(f"{prefix}.lora")
