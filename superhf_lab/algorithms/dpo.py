"""DPO (Rafailov et al. 2023, arXiv 2305.18290) on TRL's ``DPOTrainer``: the policy learns from the human preference
pairs of ``preferences`` directly, with ``kl_coef`` as DPO's beta (the strength of the implicit KL constraint).

DPO samples nothing to train, so a :class:`superhf_lab.algorithms.trl_glue.PolicyProbe` samples one completion for
each of ``probe_prompts`` training prompts at every step: reward, held-out reward, METEOR similarity and the exact
``kl`` are logged per step like every other algorithm's; ``dpo/reward_margin`` and ``dpo/reward_accuracy`` are TRL's
implicit-reward statistics on the training pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from superhf_lab.algorithms.pair_training import PairTrainingConfig
from superhf_lab.algorithms.registry import register_algorithm
from superhf_lab.algorithms.trl_glue import (
    PROBE_METRIC_NAMES,
    CheckpointMarker,
    PolicyProbe,
    TrackerBridge,
    per_process,
    train_and_finish,
    trainer_arguments,
)
from superhf_lab.core.errors import ConfigError, require
from superhf_lab.training.completions import PROGRESS_METRIC_NAMES
from superhf_lab.training.context import RunContext, training_pairs, training_setup

RENAMES = {
    "loss": "loss/total",
    "learning_rate": "lr",
    "rewards/margins": "dpo/reward_margin",
    "rewards/accuracies": "dpo/reward_accuracy",
}
METRIC_NAMES = (*PROBE_METRIC_NAMES, *RENAMES.values(), "time/step_s", *PROGRESS_METRIC_NAMES)


@dataclass
class DPOAlgorithmConfig(PairTrainingConfig):
    name: str = field(default="dpo", metadata={"help": "the algorithm plugin (algorithm=dpo)"})
    pairs_per_step: int = field(
        default=32,
        metadata={
            "help": "preference pairs per optimizer step, over all processes; pairs seen = num_steps x pairs_per_step"
        },
    )
    loss_type: str = field(default="sigmoid", metadata={"help": "TRL's DPO loss (sigmoid: the paper's)"})

    def check(self) -> None:
        super().check()
        require(self.pairs_per_step > 0, "algorithm.pairs_per_step", self.pairs_per_step, "use a positive integer")


@register_algorithm("dpo", DPOAlgorithmConfig, METRIC_NAMES, checkpoints=True, transformers_trainer=True)
def train_dpo(context: RunContext) -> None:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    run, cfg = context.config, context.algorithm
    if run.kl_coef <= 0:
        raise ConfigError(
            f"kl_coef={run.kl_coef} is invalid for algorithm=dpo: it is DPO's beta, which must be > 0 "
            "(0 removes the preference signal); use e.g. kl_coef=0.1"
        )
    setup = training_setup(context, run.eval.sampling.max_new_tokens, cfg.minibatch_size_scoring, lora=None)
    pairs = training_pairs(context).pairs
    dataset = Dataset.from_dict(
        {
            "prompt": [p.prompt for p in pairs],
            "chosen": [p.chosen for p in pairs],
            "rejected": [p.rejected for p in pairs],
        }
    )
    per_device = per_process(context, cfg.pairs_per_step, "algorithm.pairs_per_step")
    args = DPOConfig(
        **trainer_arguments(
            context,
            cfg.num_steps,
            cfg.learning_rate,
            lr_scheduler_type=cfg.lr_schedule,
            per_device_train_batch_size=per_device,
            gradient_accumulation_steps=1,
            beta=run.kl_coef,
            loss_type=cfg.loss_type,
            max_length=cfg.max_length,
        )
    )
    probe = PolicyProbe(context, setup, cfg.probe_prompts)
    callbacks = [TrackerBridge(context, probe, RENAMES, cfg.pairs_per_step, len(probe.prompts))]
    if context.checkpoints is not None:
        callbacks.append(CheckpointMarker(context))
    trainer = DPOTrainer(
        model=setup.policy,
        ref_model=None,
        args=args,
        train_dataset=dataset,
        processing_class=setup.tokenizer,
        callbacks=callbacks,
        peft_config=cfg.lora.to_peft() if cfg.lora.enabled else None,
    )
    probe.trainer = trainer
    train_and_finish(context, trainer, setup, cfg.num_steps - 1, frozen=None)
