"""FeedME, the paper's supervised baseline: fine-tuning on the preferred (chosen) responses of the ``preferences``
pairs with TRL's ``SFTTrainer`` (cross-entropy on the response tokens only). There is no KL term, so ``kl_coef``
has no effect; the exact ``kl`` to the starting policy is still measured.

Like DPO it samples nothing to train: a :class:`superhf_lab.algorithms.trl_glue.PolicyProbe` samples one completion
for each of ``probe_prompts`` training prompts at every step, so reward, held-out reward, METEOR similarity and ``kl``
are logged per step like every other algorithm's.
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
from superhf_lab.core.errors import require
from superhf_lab.training.completions import PROGRESS_METRIC_NAMES
from superhf_lab.training.context import RunContext, training_pairs, training_setup
from superhf_lab.training.policies import StartingPolicy

RENAMES = {"loss": "loss/total", "learning_rate": "lr", "mean_token_accuracy": "feedme/token_accuracy"}
METRIC_NAMES = (*PROBE_METRIC_NAMES, *RENAMES.values(), "time/step_s", *PROGRESS_METRIC_NAMES)


@dataclass
class FeedMEConfig(PairTrainingConfig):
    name: str = field(default="feedme", metadata={"help": "the algorithm plugin (algorithm=feedme)"})
    examples_per_step: int = field(
        default=32,
        metadata={
            "help": "chosen responses per optimizer step, over all processes; seen = num_steps x examples_per_step"
        },
    )
    learning_rate: float = field(default=2e-5, metadata={"help": "peak learning rate"})

    def check(self) -> None:
        super().check()
        require(
            self.examples_per_step > 0, "algorithm.examples_per_step", self.examples_per_step, "use a positive integer"
        )


@register_algorithm("feedme", FeedMEConfig, METRIC_NAMES, checkpoints=True, transformers_trainer=True)
def train_feedme(context: RunContext) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    run, cfg = context.config, context.algorithm
    setup = training_setup(context, run.eval.sampling.max_new_tokens, cfg.minibatch_size_scoring, lora=None)
    pairs = training_pairs(context).pairs
    dataset = Dataset.from_dict({"prompt": [p.prompt for p in pairs], "completion": [p.chosen for p in pairs]})
    per_device = per_process(context, cfg.examples_per_step, "algorithm.examples_per_step")
    args = SFTConfig(
        **trainer_arguments(
            context,
            cfg.num_steps,
            cfg.learning_rate,
            lr_scheduler_type=cfg.lr_schedule,
            per_device_train_batch_size=per_device,
            gradient_accumulation_steps=1,
            completion_only_loss=True,
            max_length=cfg.max_length,
        )
    )
    probe = PolicyProbe(context, setup, cfg.probe_prompts)
    probe.frozen = None if cfg.lora.enabled else StartingPolicy.frozen_copy(setup.policy)
    callbacks = [TrackerBridge(context, probe, RENAMES, cfg.examples_per_step, len(probe.prompts))]
    if context.checkpoints is not None:
        callbacks.append(CheckpointMarker(context))
    trainer = SFTTrainer(
        model=setup.policy,
        args=args,
        train_dataset=dataset,
        processing_class=setup.tokenizer,
        callbacks=callbacks,
        peft_config=cfg.lora.to_peft() if cfg.lora.enabled else None,
    )
    probe.trainer = trainer
    train_and_finish(context, trainer, setup, cfg.num_steps - 1, probe.frozen)
