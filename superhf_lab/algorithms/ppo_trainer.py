"""PPO-based RLHF baseline on TRL's ``PPOTrainer`` (trl 1.12, ``trl.experimental.ppo``).

Three things are added on top of TRL so PPO and SuperHF are comparable metric for metric:

- :class:`TextRewardModel` lets TRL's reward call score *decoded text*: the policy's tokens are decoded
  and cut at the next turn exactly as SuperHF does (:func:`superhf_lab.core.text.decode_completion`), then
  scored by the reward model through its own tokenizer. TRL alone would feed the policy's token ids
  into the reward model, which is wrong whenever the tokenizers differ (Pythia policy, DeBERTa RM).
- :class:`AdaptiveKLController`, a callback, since TRL 1.12 dropped adaptive KL control: after every
  update it moves ``kl_coef`` towards a target KL (Ziegler et al. 2019), as the paper's Table 3 used.
- :class:`~superhf_lab.algorithms.trl_glue.TrackerBridge`, the callback every TRL plugin shares, logs every
  update under SuperHF's metric names (``PPO_RENAMES``, and :func:`ppo_derived_metrics` for what TRL's log lacks).

The top-level ``kl_coef`` is PPO's (initial) KL penalty coefficient. ``kl_sequence_estimate`` is the quantity
PPO penalises: TRL's sampled estimate, summed over a completion's tokens and averaged over the batch. With
the default ``k3`` estimator every token's term is >= 0, so it is never negative; ``k1`` (log-ratio) terms
can be negative on individual samples although their expectation is the true KL. It is not SuperHF's
``kl`` (the exact per-token mean), which is why it has its own name; the evaluation logs the exact ``kl``
and ``kl_sequence`` for both algorithms.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, TrainerCallback
from transformers.modeling_outputs import BaseModelOutput

from superhf_lab.algorithms.ppo_config import PPOAlgorithmConfig
from superhf_lab.algorithms.registry import register_algorithm
from superhf_lab.algorithms.trl_glue import TrackerBridge
from superhf_lab.config.schema import TextConfig
from superhf_lab.core.errors import require
from superhf_lab.core.text import decode_completion
from superhf_lab.training.completions import (
    COMPLETION_METRIC_NAMES,
    PROGRESS_METRIC_NAMES,
    Completion,
    score_completions,
)
from superhf_lab.training.context import RunContext, finish_training, training_setup
from superhf_lab.training.evaluation import evaluation_metric_names
from superhf_lab.training.policies import StartingPolicy
from superhf_lab.training.rewards import RewardScorer
from superhf_lab.training.sampling import completion_length

METRIC_NAMES = (
    *(name for name in COMPLETION_METRIC_NAMES if name != "diversity/meteor_similarity_within_prompt"),
    "kl_sequence_estimate",
    "kl_coef",
    "loss/total",
    "loss/policy",
    "loss/value",
    "lr",
    "ppo/clipfrac",
    "ppo/entropy",
    "ppo/approx_kl",
    "time/scoring_s",
    "time/step_s",
    *PROGRESS_METRIC_NAMES,
    *evaluation_metric_names(),
)

# TRL's per-update statistics under SuperHF's names.
PPO_RENAMES = {
    "objective/kl": "kl_sequence_estimate",
    "loss/policy_avg": "loss/policy",
    "loss/value_avg": "loss/value",
    "lr": "lr",
    "policy/clipfrac_avg": "ppo/clipfrac",
    "objective/entropy": "ppo/entropy",
    "policy/approxkl_avg": "ppo/approx_kl",
}


class _DecodeAndScore(nn.Module):
    """The 'backbone' TRL's ``get_reward`` calls: returns each row's reward at every position."""

    def __init__(self, owner: TextRewardModel) -> None:
        super().__init__()
        self._owner = [owner]  # a list, so the owner is not registered as a submodule (no cycle)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> BaseModelOutput:
        rewards = self._owner[0].score_token_rows(input_ids, attention_mask)
        hidden = rewards.to(input_ids.device).view(-1, 1, 1).expand(-1, input_ids.shape[1], 1)
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=(hidden,))


class TextRewardModel(nn.Module):
    """Adapts a text reward function to TRL's token-level reward-model interface.

    TRL calls ``get_reward(model, query_responses, pad_token_id, context_length)``, which runs
    ``getattr(model, model.base_model_prefix)`` and then ``model.score`` on the last hidden state and
    reads the value at each row's last token. Here the backbone decodes each row (prompt = the first
    ``context_length`` columns, set per rollout by :class:`ContextLengthTracker`), scores the text and
    puts that reward at every position; ``score`` is the identity.
    """

    base_model_prefix = "backbone"

    def __init__(
        self, tokenizer, scorer: RewardScorer, heldout_scorer: RewardScorer | None, prompts: list[str], text: TextConfig
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.text = text
        self.scorer = scorer
        self.heldout_scorer = heldout_scorer
        self.prompt_by_ids = {tuple(tokenizer(prompt).input_ids): prompt for prompt in prompts}
        self.backbone = _DecodeAndScore(self)
        self.score = nn.Identity()
        self.context_length: int | None = None
        self.scored: list[Completion] = []  # completions scored since the metrics bridge last read them
        self.scoring_seconds = 0.0

    def split_row(self, ids: list[int], mask: list[bool]) -> Completion:
        prompt_ids = [t for t, real in zip(ids[: self.context_length], mask[: self.context_length]) if real]
        response_ids = [t for t, real in zip(ids[self.context_length :], mask[self.context_length :]) if real]
        prompt = self.prompt_by_ids.get(tuple(prompt_ids)) or self.tokenizer.decode(
            prompt_ids, skip_special_tokens=True
        )
        text, generated, finished = decode_completion(self.tokenizer, response_ids, self.text.cut)
        return Completion(
            prompt,
            len(self.scored),
            text,
            completion_length(self.tokenizer, text),
            finished,
            generated_tokens=generated,
        )

    @torch.no_grad()
    def score_token_rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.context_length is None:
            raise RuntimeError("TextRewardModel.context_length is unset: wrap the dataloader in ContextLengthTracker")
        started = time.perf_counter()
        rows = zip(input_ids.tolist(), attention_mask.bool().tolist())
        completions = [self.split_row(ids, mask) for ids, mask in rows]
        score_completions(completions, self.text.reward_input, self.scorer, self.heldout_scorer)
        self.scored.extend(completions)
        self.scoring_seconds += time.perf_counter() - started
        return torch.tensor([c.reward for c in completions], dtype=torch.float32)

    def take_scored(self) -> tuple[list[Completion], float]:
        scored, seconds = self.scored, self.scoring_seconds
        self.scored, self.scoring_seconds = [], 0.0
        return scored, seconds


class ContextLengthTracker:
    """Wraps TRL's rollout dataloader to tell the reward adapter where each batch's prompts end."""

    def __init__(self, dataloader, reward_model: TextRewardModel) -> None:
        self.dataloader = dataloader
        self.reward_model = reward_model

    def __iter__(self):
        for batch in self.dataloader:
            self.reward_model.context_length = batch["input_ids"].shape[1]
            yield batch

    def __len__(self) -> int:
        return len(self.dataloader)


class AdaptiveKLController(TrainerCallback):
    """Proportional control of ``kl_coef`` towards a target KL, updated after every PPO batch."""

    def __init__(self, target: float, horizon: float, batch_size: int) -> None:
        self.target = target
        self.horizon = horizon
        self.batch_size = batch_size

    def update(self, coef: float, current_kl: float) -> float:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        return coef * (1 + error * self.batch_size / self.horizon)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "objective/kl" in logs:
            args.kl_coef = self.update(args.kl_coef, logs["objective/kl"])


def ppo_derived_metrics(args, logs: dict[str, float]) -> dict[str, float]:
    """What PPO logs beyond TRL's renamed statistics: the total loss and the KL coefficient that penalised this
    update's rollout (read before :class:`AdaptiveKLController` moves it)."""
    return {"kl_coef": args.kl_coef, "loss/total": logs["loss/policy_avg"] + args.vf_coef * logs["loss/value_avg"]}


def rollout_measure(context: RunContext, reward_model: TextRewardModel):
    """The :class:`TrackerBridge` measure of PPO's rollouts: the completions every process scored since the last
    update, gathered, and the seconds this process spent scoring them."""

    def measure() -> tuple[list[Completion], dict[str, float]]:
        completions, scoring_seconds = reward_model.take_scored()
        return context.processes.gather(completions), {"time/scoring_s": scoring_seconds}

    return measure


def per_process_batch_size(cfg: PPOAlgorithmConfig, world_size: int) -> int:
    """Prompts per update on each process; every process's share must split into ``num_mini_batches``."""
    require(
        cfg.batch_size % (world_size * cfg.num_mini_batches) == 0,
        "algorithm.batch_size",
        cfg.batch_size,
        f"use a multiple of {world_size} processes x algorithm.num_mini_batches={cfg.num_mini_batches}",
    )
    return cfg.batch_size // world_size


def build_ppo_trainer(context: RunContext):
    """TRL's PPOTrainer on the shared setup (prompts, policy, scorers), with a value model initialised from the
    policy; TRL applies the LoRA adapters and keeps the reference itself."""
    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    run = context.config
    cfg: PPOAlgorithmConfig = run.algorithm
    per_process = per_process_batch_size(cfg, context.processes.world_size)
    setup = training_setup(context, cfg.max_new_tokens, cfg.rollout_minibatch_size, lora=None)
    prompts, policy, tokenizer = setup.prompts.prompts, setup.policy, setup.tokenizer
    value_model = AutoModelForSequenceClassification.from_pretrained(
        run.model.name_or_path,
        revision=run.model.revision,
        num_labels=1,
        trust_remote_code=run.model.trust_remote_code,
    )
    value_model.config.pad_token_id = tokenizer.pad_token_id
    reward_model = TextRewardModel(tokenizer, setup.reward_scorer, setup.heldout_scorer, prompts, run.text)
    args = PPOConfig(
        output_dir=str(Path(run.output_dir) / "ppo"),
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=run.seed,
        bf16=run.precision == "bf16",
        fp16=run.precision == "fp16",
        use_cpu=context.device.type == "cpu",
        gradient_checkpointing=False,
        disable_tqdm=False,
        # One optimizer step per minibatch: TRL's micro-batch loop then takes each whole minibatch at once,
        # and accelerate's accumulation (which TRL also uses to size its statistics) stays at 1. Several processes
        # share an update's prompts, so batch_size stays the global number of prompts per update.
        per_device_train_batch_size=per_process,
        gradient_accumulation_steps=1,
        num_mini_batches=cfg.num_mini_batches,
        total_episodes=cfg.num_updates * cfg.batch_size,
        num_ppo_epochs=cfg.num_ppo_epochs,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_schedule,
        response_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        stop_token="eos",
        missing_eos_penalty=cfg.missing_eos_penalty,
        kl_coef=run.kl_coef,
        kl_estimator=cfg.kl_estimator,
        cliprange=cfg.cliprange,
        cliprange_value=cfg.cliprange_value,
        vf_coef=cfg.vf_coef,
        gamma=cfg.gamma,
        lam=cfg.lam,
        whiten_rewards=cfg.whiten_rewards,
        local_rollout_forward_batch_size=cfg.rollout_minibatch_size,
        num_sample_generations=0,
    )
    peft_config = cfg.lora.to_peft() if cfg.lora.enabled else None
    dataset = Dataset.from_dict({"input_ids": [tokenizer(prompt).input_ids for prompt in prompts]})
    # One completion per prompt; non-finite values are logged, as SuperHF logs them.
    bridge = TrackerBridge(
        context,
        rollout_measure(context, reward_model),
        PPO_RENAMES,
        cfg.batch_size,
        cfg.batch_size,
        derive=ppo_derived_metrics,
        finite_only=False,
    )
    callbacks: list[TrainerCallback] = [bridge]
    if cfg.adaptive_kl.enabled:  # after the bridge, so each update logs the coefficient it was penalised with
        callbacks.append(AdaptiveKLController(cfg.adaptive_kl.target, cfg.adaptive_kl.horizon, cfg.batch_size))
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=None,
        reward_model=reward_model,
        train_dataset=dataset,
        value_model=value_model,
        eval_dataset=dataset.select(range(1)),
        callbacks=callbacks,
        peft_config=peft_config,
    )
    trainer.dataloader = ContextLengthTracker(trainer.dataloader, reward_model)
    return trainer, setup


@register_algorithm("ppo", PPOAlgorithmConfig, METRIC_NAMES, transformers_trainer=True)
def train_ppo(context: RunContext) -> None:
    """Run TRL's PPO loop (the callbacks log every update), then evaluate and save the final policy."""
    trainer, setup = build_ppo_trainer(context)
    trainer.train()
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    starting = (
        StartingPolicy(trainer.ref_model, adapters_disabled=False)
        if trainer.ref_model is not None
        else StartingPolicy(policy, adapters_disabled=True)
    )  # with LoRA TRL keeps no copy
    finish_training(context, setup, policy, starting, last_step=context.algorithm.num_updates - 1)
