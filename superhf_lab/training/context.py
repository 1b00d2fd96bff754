"""What an algorithm plugin receives, and the shared steps every plugin builds on.

A plugin is a config dataclass plus a ``train(context)`` function registered with
:func:`superhf_lab.algorithms.registry.register_algorithm`. Around its own loop it uses the steps here, so every
algorithm reads prompts, loads models, scores, measures KL against the starting policy, evaluates and saves
its policy the same way, and reaches MLflow only through ``context.tracker``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from superhf_lab.config.schema import LoraSettings, RunConfig
from superhf_lab.core.faults import reach
from superhf_lab.runtime.checkpoint import CheckpointStore, Preempted, StopRequest
from superhf_lab.runtime.distributed import Processes
from superhf_lab.tracking.tracker import Tracker
from superhf_lab.training.data import PairSet, PromptSet, load_pairs, load_training_prompts
from superhf_lab.training.evaluation import PolicyEvaluator
from superhf_lab.training.models import check_context_fits, load_policy
from superhf_lab.training.policies import StartingPolicy, with_starting_policy
from superhf_lab.training.rewards import RewardScorer, build_scorers

POLICY_ARTIFACT = "policy"
POLICY_URI_TAG = "superhf_lab.policy_uri"


@dataclass
class RunContext:
    """What an algorithm receives: the validated config, where to log, the device to use and, for plugins
    that checkpoint, where checkpoints go, whether to resume from the newest one, SIGTERM's stop request, and
    the processes the run spans (one unless launched with several: :mod:`superhf_lab.runtime.distributed`)."""

    config: RunConfig
    tracker: Tracker
    device: torch.device
    checkpoints: CheckpointStore | None = None
    resume: bool = False
    stop: StopRequest = field(default_factory=StopRequest)
    processes: Processes = field(default_factory=Processes)

    @property
    def algorithm(self) -> Any:
        return self.config.algorithm

    def stop_if_requested(self, after: str) -> None:
        """Honour SIGTERM (to any of the run's processes) at a point where the checkpoint holds everything so far."""
        if self.processes.any(self.stop.requested):
            where = f"; checkpoint in {self.checkpoints.folder}" if self.checkpoints else ""
            raise Preempted(f"stopped by SIGTERM after {after}{where}")


@dataclass
class TrainingSetup:
    """The pieces every training algorithm starts from (:func:`training_setup`)."""

    prompts: PromptSet
    policy: PreTrainedModel  # with LoRA adapters when the algorithm's ``lora`` is enabled
    tokenizer: PreTrainedTokenizerBase
    starting: StartingPolicy | None  # None: the algorithm's trainer keeps its own reference (TRL's)
    reward_scorer: RewardScorer
    heldout_scorer: RewardScorer | None


def training_prompts(context: RunContext) -> PromptSet:
    """The training split of the data mix; each source's count is logged as ``data.count.train.<source>``, and its
    malformed rows skipped as ``data.skipped.train.<source>``."""
    prompt_set = load_training_prompts(context.config.data, context.config.seed)
    context.tracker.log_params({f"data.count.train.{name}": count for name, count in prompt_set.counts.items()})
    context.tracker.log_params({f"data.skipped.train.{name}": count for name, count in prompt_set.skipped.items()})
    return prompt_set


def training_pairs(context: RunContext) -> PairSet:
    """The training split of the ``preferences`` mix; each source's count is logged as ``preferences.count.*``."""
    pairs = load_pairs(context.config.preferences, "train", context.config.seed)
    context.tracker.log_params({f"preferences.count.train.{name}": count for name, count in pairs.counts.items()})
    context.tracker.log_params({f"preferences.skipped.train.{name}": count for name, count in pairs.skipped.items()})
    return pairs


def training_setup(
    context: RunContext,
    max_new_tokens: int,
    scoring_batch_size: int,
    lora: LoraSettings | None,
    conversation_prompt: str = "",
) -> TrainingSetup:
    """Prompts first (cheap to validate), then the policy (checked against its context length), with LoRA
    adapters and its starting policy, and the reward models. ``lora=None`` leaves the policy as loaded for
    trainers that apply adapters and keep a reference themselves (TRL's)."""
    run = context.config
    prompts = training_prompts(context)
    policy, tokenizer = load_policy(run.model, context.device)
    check_context_fits(
        tokenizer, policy.config, prompts.prompts, max_new_tokens, run.data.max_prompt_chars, conversation_prompt
    )
    starting = None
    if lora is not None:
        policy, starting = with_starting_policy(policy, lora)
    scorer, heldout = build_scorers(run, context.device, scoring_batch_size)
    return TrainingSetup(prompts, policy, tokenizer, starting, scorer, heldout)


def evaluator_for(context: RunContext, setup: TrainingSetup) -> PolicyEvaluator:
    return PolicyEvaluator(
        context.config, setup.tokenizer, setup.reward_scorer, setup.heldout_scorer, context.device, context.processes
    )


def finish_training(
    context: RunContext,
    setup: TrainingSetup,
    policy: PreTrainedModel,
    starting: StartingPolicy,
    last_step: int,
    evaluator: PolicyEvaluator | None = None,
    tracing: bool = False,
) -> None:
    """Evaluate the final policy on the test prompts (``eval.at_end``), then save it as the run's artifact. A run
    ``tracing`` its over-optimisation path adds the final point to it and fits it."""
    if context.config.eval.at_end:
        evaluator = evaluator or evaluator_for(context, setup)
        evaluator.evaluate(policy, starting, context.tracker, last_step, last_step + 1 if tracing else None)
        if tracing:
            evaluator.log_path_fit(context.tracker, last_step + 1)
    context.stop_if_requested("the final evaluation")
    if context.processes.is_main:
        save_policy_artifact(context.tracker, policy, setup.tokenizer)


def save_policy_artifact(
    tracker: Tracker, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, weights: dict | None = None
) -> str:
    """The trained policy (adapter weights only with LoRA) as the run's ``policy`` artifact; returns its URI.
    ``weights``: the policy's whole state dict when its own is sharded (FSDP)."""
    with tempfile.TemporaryDirectory() as folder:
        policy.save_pretrained(folder, state_dict=weights)
        tokenizer.save_pretrained(folder)
        tracker.log_artifacts(folder, POLICY_ARTIFACT)
    reach("policy_upload")
    uri = f"runs:/{tracker.run_id}/{POLICY_ARTIFACT}"
    tracker.set_tag(POLICY_URI_TAG, uri)
    return uri
