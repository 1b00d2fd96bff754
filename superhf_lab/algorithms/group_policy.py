"""GRPO's and RLOO's shared settings and loop on TRL's trainers: groups of completions per prompt."""

from __future__ import annotations

from dataclasses import dataclass, field

from superhf_lab.algorithms.trl_glue import (
    CheckpointMarker,
    TextReward,
    TrackerBridge,
    per_process,
    train_and_finish,
    trainer_arguments,
)
from superhf_lab.config.schema import LoraSettings
from superhf_lab.core.errors import require
from superhf_lab.training.completions import (
    COMPLETION_METRIC_NAMES,
    PROGRESS_METRIC_NAMES,
)
from superhf_lab.training.context import RunContext, training_setup
from superhf_lab.training.evaluation import TRACE_METRIC_NAMES, evaluation_metric_names
from superhf_lab.training.policies import StartingPolicy
from superhf_lab.training.sequences import KL_ESTIMATE_NAMES

GROUP_POLICY_RENAMES = {
    "loss": "loss/total",
    "learning_rate": "lr",
    "kl": "kl_token_estimate",
    "entropy": "policy/entropy",
}


GROUP_POLICY_METRIC_NAMES = (
    *COMPLETION_METRIC_NAMES,
    *GROUP_POLICY_RENAMES.values(),
    "kl",
    *KL_ESTIMATE_NAMES,
    "time/step_s",
    *PROGRESS_METRIC_NAMES,
    *evaluation_metric_names(),
    *TRACE_METRIC_NAMES,
)


@dataclass
class GroupPolicyConfig:
    """Settings shared by the group-sampling policy-gradient methods (GRPO, RLOO)."""

    num_steps: int = field(
        default=40,
        metadata={"help": "optimizer steps; completions generated = num_steps x prompts_per_step x group_size"},
    )
    prompts_per_step: int = field(default=4, metadata={"help": "prompts per optimizer step, over all processes"})
    group_size: int = field(default=8, metadata={"help": "completions sampled per prompt (TRL's num_generations)"})
    max_new_tokens: int = field(default=64, metadata={"help": "most tokens generated per completion"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature, > 0"})
    top_p: float = field(
        default=1.0, metadata={"help": "nucleus sampling's probability mass; 1.0: the full distribution"}
    )
    learning_rate: float = field(default=1e-6, metadata={"help": "peak learning rate"})
    lr_schedule: str = field(
        default="linear", metadata={"help": "learning-rate schedule over the run (transformers' lr_scheduler_type)"}
    )
    num_iterations: int = field(default=1, metadata={"help": "optimisation passes over each generated batch"})
    epsilon: float = field(default=0.2, metadata={"help": "clipping range of the probability ratio"})
    minibatch_size_scoring: int = field(default=32, metadata={"help": "completions per reward-model forward"})
    lora: LoraSettings = field(
        default_factory=LoraSettings, metadata={"help": "LoRA adapters on the policy (TRL applies them)"}
    )

    def check(self) -> None:
        for key in ("num_steps", "prompts_per_step", "max_new_tokens", "num_iterations", "minibatch_size_scoring"):
            require(getattr(self, key) > 0, f"algorithm.{key}", getattr(self, key), "use a positive integer")
        require(
            self.group_size >= 2,
            "algorithm.group_size",
            self.group_size,
            "sample at least 2 completions per prompt: advantages compare a completion with its group",
        )
        require(self.temperature > 0, "algorithm.temperature", self.temperature, "sampling needs a temperature > 0")
        require(0 < self.top_p <= 1, "algorithm.top_p", self.top_p, "use a value in (0, 1]")
        require(self.learning_rate > 0, "algorithm.learning_rate", self.learning_rate, "use a value > 0")
        self.lora.check("algorithm.lora")


def train_group_policy(context: RunContext, trainer_class, config_class) -> None:
    """Shared by GRPO and RLOO: TRL's trainer with the cut and the text reward, logged, checkpointed, evaluated."""
    from datasets import Dataset

    run, cfg = context.config, context.algorithm
    setup = training_setup(context, cfg.max_new_tokens, cfg.minibatch_size_scoring, lora=None)
    completions_per_step = cfg.prompts_per_step * cfg.group_size
    args = config_class(
        **trainer_arguments(
            context,
            cfg.num_steps,
            cfg.learning_rate,
            lr_scheduler_type=cfg.lr_schedule,
            per_device_train_batch_size=per_process(context, completions_per_step, "algorithm.prompts_per_step"),
            gradient_accumulation_steps=1,
            num_generations=cfg.group_size,
            max_completion_length=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            beta=run.kl_coef,
            num_iterations=cfg.num_iterations,
            epsilon=cfg.epsilon,
        )
    )
    reward = TextReward(setup, context)
    callbacks = [
        TrackerBridge(context, reward.take_scored, GROUP_POLICY_RENAMES, cfg.prompts_per_step, completions_per_step)
    ]
    if context.checkpoints is not None:
        callbacks.append(CheckpointMarker(context))
    frozen = None if cfg.lora.enabled or run.kl_coef > 0 else StartingPolicy.frozen_copy(setup.policy)
    trainer = trainer_class(
        model=setup.policy,
        reward_funcs=[reward],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": setup.prompts.prompts}),
        processing_class=setup.tokenizer,
        callbacks=callbacks,
        peft_config=cfg.lora.to_peft() if cfg.lora.enabled else None,
    )
    trainer.text_cut = run.text.cut
    reward.trainer, reward.frozen = trainer, frozen
    train_and_finish(context, trainer, setup, cfg.num_steps - 1, frozen)
