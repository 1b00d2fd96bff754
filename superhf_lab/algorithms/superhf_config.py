"""SuperHF's settings (arXiv 2310.16763); ``kl_coef`` lives at the top level of the run config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from superhf_lab.config.schema import LoraSettings, SamplingSettings
from superhf_lab.core.errors import require

LR_SCHEDULES = ("cosine", "linear", "constant")


KL_DIRECTIONS = ("policy_to_reference", "reference_to_policy")  # KL(pi || pi_ref) or the reference's KL(pi_ref || pi)


LOSS_REDUCTIONS = ("mean", "reference")


KL_MASKS = ("shifted", "unshifted")  # logits that predict completion tokens, or the logits at completion tokens


LENGTH_PENALTY_FORMS = ("linear", "log")  # per character of the stripped completion, or x log(characters)


@dataclass
class SuperHFConfig:
    """SuperHF hyperparameters; ``kl_coef`` lives at the top level of the run config."""

    name: str = "superhf"
    num_superbatches: int = 40
    prompt_accumulation_steps: int = 2
    superbatch_size: int = 16  # completions sampled per prompt
    top_k: int = 1  # completions kept per prompt
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 0.9
    generation_top_k: int = 0  # transformers' top-k sampling filter; 0 disables it (the reference kept 50)
    repetition_penalty: float = 1.05
    no_repeat_ngram_size: int = 0
    conversation_prompt: str = ""  # prepended to every prompt the policy sees (reward models: see text.reward_input)
    length_penalty: float = 0.0  # subtracted from the reward for selection only, see length_penalty_form
    length_penalty_form: str = "linear"  # linear: x characters; log: x log(characters), as the reference
    kl_direction: str = "policy_to_reference"
    loss_reduction: str = "mean"  # mean over a minibatch's completions; reference: the reference trainer's sums
    kl_mask: str = "shifted"
    learning_rate: float = 2e-5
    lr_schedule: str = "cosine"
    warmup_superbatches: int = 0
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    minibatch_size_generating: int = 32
    minibatch_size_scoring: int = 32
    minibatch_size_finetuning: int = 8
    max_nonfinite_losses: int = 10  # stop the run after this many skipped NaN/inf losses
    max_oom_halvings: int = 4  # out of memory halves that phase's minibatch, at most this often per phase
    lora: LoraSettings = field(default_factory=LoraSettings)

    @property
    def sampling(self) -> SamplingSettings:
        return SamplingSettings(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
            generation_top_k=self.generation_top_k, repetition_penalty=self.repetition_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size, conversation_prompt=self.conversation_prompt,
        )

    def check(self) -> None:
        positive = (
            "num_superbatches", "prompt_accumulation_steps", "superbatch_size", "top_k",
            "minibatch_size_generating", "minibatch_size_scoring", "minibatch_size_finetuning",
        )
        for name in positive:
            require(getattr(self, name) > 0, f"algorithm.{name}", getattr(self, name), "use a positive integer")
        require(self.top_k <= self.superbatch_size, "algorithm.top_k", self.top_k,
                f"keep at most algorithm.superbatch_size={self.superbatch_size} completions per prompt")
        self.sampling.check("algorithm")
        require(self.learning_rate > 0, "algorithm.learning_rate", self.learning_rate, "use a value > 0")
        require(self.lr_schedule in LR_SCHEDULES, "algorithm.lr_schedule", self.lr_schedule, f"use one of {LR_SCHEDULES}")
        require(0 <= self.warmup_superbatches <= self.num_superbatches, "algorithm.warmup_superbatches",
                self.warmup_superbatches, f"use 0..algorithm.num_superbatches={self.num_superbatches}")
        require(self.max_grad_norm is None or self.max_grad_norm > 0, "algorithm.max_grad_norm",
                self.max_grad_norm, "use null (no clipping) or a value > 0")
        require(self.max_nonfinite_losses >= 0, "algorithm.max_nonfinite_losses", self.max_nonfinite_losses, "use 0 or more")
        require(self.max_oom_halvings >= 0, "algorithm.max_oom_halvings", self.max_oom_halvings, "use 0 (never) or more")
        for name, allowed in (("length_penalty_form", LENGTH_PENALTY_FORMS), ("kl_direction", KL_DIRECTIONS),
                              ("loss_reduction", LOSS_REDUCTIONS), ("kl_mask", KL_MASKS)):
            require(getattr(self, name) in allowed, f"algorithm.{name}", getattr(self, name), f"use one of {allowed}")
        self.lora.check("algorithm.lora")
