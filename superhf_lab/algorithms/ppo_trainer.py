"""PPO-based RLHF (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022), the lab's own trainer.

Per update: ``batch_size`` prompts, one completion each, sampled through the shared sampling (the same cut at the
next turn, conversation prompt and sampling settings as SuperHF) and scored as text by each reward model through
its own tokenizer. The completion as the lab scores it (cut, with EOS when it ended) is the action sequence. On it:
the policy's and the starting policy's log-probabilities and the value model's values; per-token rewards
``-kl_coef x KL_t`` plus the score on the last token; GAE advantages, whitened; then ``num_ppo_epochs`` passes over
shuffled minibatches, one AdamW step each, on the clipped policy objective plus ``vf_coef`` x the clipped value loss.

It equals one update of TRL 1.12's ``trl.experimental.ppo.PPOTrainer`` on the same rollout, weights and settings
(``tests/test_ppo.py`` against ``tools/ppo_trl_fixture.py``'s fixture), but where it differs on purpose:

- The score sits on a completion's last token, and values and the value loss cover the completion's tokens only.
  TRL puts the score one position *after* a completion that ended within the batch's width (on the first
  padding position) and learns a value there; with every completion as long as the batch's width the two agree.
- Old log-probabilities come from a forward pass over the rollout, not from ``generate``'s scores (which the
  sampling's logits processors changed), so the first minibatch's ratio is exactly 1.
- Advantages are whitened over the whole update's rollout on every process (TRL: each process's share).
- ``approx_kl`` is the mean over completion tokens (TRL's mean also counts padding as zeros).
- The KL penalty may also be ``k2`` or the exact KL over the vocabulary; TRL had ``k1`` and ``k3``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from superhf_lab.algorithms.ppo_config import PPOAlgorithmConfig
from superhf_lab.algorithms.registry import register_algorithm
from superhf_lab.algorithms.step_loop import StepLoop, train_and_save_policy
from superhf_lab.config.schema import ModelConfig, TextConfig
from superhf_lab.core.errors import require
from superhf_lab.core.faults import reach
from superhf_lab.metrics.bookkeeping import Bookkeeping
from superhf_lab.runtime.distributed import ONE_PROCESS, Processes
from superhf_lab.runtime.memory import HalvingBatchSize
from superhf_lab.training.completions import (
    COMPLETION_METRIC_NAMES,
    PROGRESS_METRIC_NAMES,
    Completion,
    completion_rows,
    diversity_metrics,
    reward_and_length_metrics,
)
from superhf_lab.training.context import RunContext, training_setup
from superhf_lab.training.data import PromptStream
from superhf_lab.training.evaluation import TRACE_METRIC_NAMES, evaluation_metric_names
from superhf_lab.training.models import autocast
from superhf_lab.training.policies import StartingPolicy
from superhf_lab.training.rewards import RewardScorer
from superhf_lab.training.sampling import sample_completions
from superhf_lab.training.sequences import (
    KL_ESTIMATE_NAMES,
    completion_token_ids,
    kl_estimates,
    pad_examples,
    position_ids_for,
)

log = logging.getLogger(__name__)

LOSS_METRIC_NAMES = ("loss/total", "loss/policy", "loss/value", "ppo/clipfrac", "ppo/value_clipfrac", "ppo/approx_kl")
METRIC_NAMES = (
    *(name for name in COMPLETION_METRIC_NAMES if name != "diversity/meteor_similarity_within_prompt"),
    "kl",
    *KL_ESTIMATE_NAMES,
    "kl_sequence_estimate",
    "kl_coef",
    *LOSS_METRIC_NAMES,
    "ppo/entropy",
    "lr",
    "time/generation_s",
    "time/scoring_s",
    "time/finetuning_s",
    "time/step_s",
    *PROGRESS_METRIC_NAMES,
    "train/nonfinite_losses_skipped",
    "memory/oom_halvings",
    *evaluation_metric_names(),
    *TRACE_METRIC_NAMES,
)


@dataclass
class Rollout:
    """One update's completions as tensors. Sequences are right-padded prompt + completion rows; ``(B, L)`` tensors
    hold, per completion token, the logits' column that predicts it (``positions``), the token and whether it is
    real (``mask``: rows are padded to the longest completion)."""

    inputs: dict[str, torch.Tensor]
    positions: torch.Tensor
    actions: torch.Tensor
    mask: torch.Tensor
    scores: torch.Tensor  # (B,) what the reward model gave, after normalisation and penalties
    finished: torch.Tensor  # (B,) whether the completion ended (EOS or the cut) within max_new_tokens

    @classmethod
    def from_token_ids(
        cls,
        prompt_ids: list[list[int]],
        completion_ids: list[list[int]],
        pad_token_id: int,
        scores: torch.Tensor,
        finished: torch.Tensor,
        device: torch.device,
    ) -> Rollout:
        input_ids, attention_mask, completion_mask = pad_examples(prompt_ids, completion_ids, pad_token_id, "right")
        width = max(1, max(len(ids) for ids in completion_ids))
        positions = torch.zeros(len(prompt_ids), width, dtype=torch.long)
        mask = torch.zeros(len(prompt_ids), width, dtype=torch.bool)
        for row, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids)):
            positions[row, : len(completion)] = torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1)
            mask[row, : len(completion)] = True
        actions = input_ids.gather(1, (positions + 1).clamp(max=input_ids.shape[1] - 1)) * mask
        inputs = {
            "input_ids": input_ids.to(device),
            "attention_mask": attention_mask.to(device),
            "position_ids": position_ids_for(attention_mask).to(device),
        }
        return cls(inputs, positions.to(device), actions.to(device), mask.to(device), scores.to(device), finished)

    def rows(self, index: list[int] | torch.Tensor) -> Rollout:
        """The rollout of these rows, its sequences trimmed to the longest of them (padding is on the right)."""
        index = torch.as_tensor(index, dtype=torch.long)
        on = index.to(self.mask.device)
        width = int(self.inputs["attention_mask"][on].sum(1).max().item()) if len(index) else 0
        return Rollout(
            {name: tensor[on, :width] for name, tensor in self.inputs.items()},
            self.positions[on],
            self.actions[on],
            self.mask[on],
            self.scores[on],
            self.finished[index],
        )


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum()


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Standardised over the masked entries (unbiased variance, as TRL); ``shift_mean=False`` keeps the mean."""
    mean = masked_mean(values, mask)
    count = mask.sum()
    variance = masked_mean((values - mean) ** 2, mask) * count / (count - 1).clamp(min=1)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    return whitened if shift_mean else whitened + mean


def per_token_rewards(scores: torch.Tensor, kl: torch.Tensor, kl_coef: float, mask: torch.Tensor) -> torch.Tensor:
    """``-kl_coef x KL_t`` on every completion token, plus the completion's score on its last token."""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(1) - 1).clamp(min=0)
    has_tokens = mask.any(1)
    rewards[has_tokens, last[has_tokens]] += scores[has_tokens]
    return rewards


def generalised_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016) along each completion's tokens: (advantages, returns); the state after a
    completion's last token has value 0."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_values = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    return advantages * mask, (advantages + values) * mask


class ActorCritic(nn.Module):
    """The policy and its value function as one module (one optimizer, one engine wrapper): a separate copy of the
    starting policy with a linear head, or a linear head on the policy's own last hidden state."""

    def __init__(self, policy: PreTrainedModel, value_model: PreTrainedModel | None, value_head: nn.Linear | None):
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        self.value_head = value_head

    @classmethod
    def build(cls, policy: PreTrainedModel, model: ModelConfig, kind: str, init: str, pad_token_id: int):
        if kind == "shared_backbone":
            head = nn.Linear(policy.config.hidden_size, 1)
            nn.init.normal_(head.weight, std=policy.config.initializer_range)
            nn.init.zeros_(head.bias)
            actor_critic = cls(policy, None, head.to(policy.device))
        else:
            value_model = AutoModelForSequenceClassification.from_pretrained(
                model.name_or_path, revision=model.revision, num_labels=1, trust_remote_code=model.trust_remote_code
            ).to(policy.device)
            value_model.config.pad_token_id = pad_token_id
            actor_critic = cls(policy, value_model, None)
        head = actor_critic.head
        with torch.no_grad():
            if init == "scaled":  # lm-human-preferences' head: N(0, 1 / sqrt(hidden + 1)), bias 0
                nn.init.normal_(head.weight, std=1 / math.sqrt(head.in_features + 1))
            elif init == "zero":
                nn.init.zeros_(head.weight)
            if init != "model" and head.bias is not None:
                nn.init.zeros_(head.bias)
        return actor_critic

    @property
    def head(self) -> nn.Linear:
        return self.value_head if self.value_model is None else self.value_model.score

    @property
    def value_backbone(self) -> nn.Module:
        return getattr(self.value_model, self.value_model.base_model_prefix)

    def shardable(self) -> list[nn.Module]:
        """What FSDP2 shards, each as its own root: the policy (every forward of it, generation included, enters
        there) and a separate value model's backbone. The value head stays whole on every rank: it is small, and the
        policy's hidden states reach it outside any sharded module."""
        return [self.policy] if self.value_model is None else [self.policy, self.value_backbone]

    def forward(self, positions: torch.Tensor, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the policy's logits, the values) at ``positions`` (``(B, L)`` column indices): the output layer runs
        only there (transformers' ``logits_to_keep``), not over the prompts."""
        if self.value_model is None:
            output = self.policy(**inputs, logits_to_keep=positions, output_hidden_states=True)
            hidden = output.hidden_states[-1]
            values = self.value_head(_at(hidden, positions)).squeeze(-1)
            return output.logits, values
        hidden = self.value_backbone(**inputs).last_hidden_state
        values = self.value_model.score(_at(hidden, positions)).squeeze(-1)
        return self.policy(**inputs, logits_to_keep=positions).logits, values


def _at(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``hidden`` (B, T, H) at each row's ``positions`` (B, L): (B, L, H)."""
    return hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


class AdaptiveKLController:
    """Proportional control of ``kl_coef`` towards a target KL, updated after every update (Ziegler et al. 2019)."""

    def __init__(self, target: float, horizon: float, batch_size: int) -> None:
        self.target = target
        self.horizon = horizon
        self.batch_size = batch_size

    def update(self, coef: float, current_kl: float) -> float:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        return coef * (1 + error * self.batch_size / self.horizon)


def action_log_probs(
    logits: torch.Tensor, actions: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities of ``actions`` at ``temperature``, the whole log-softmax) from the logits predicting them."""
    logits = logits.float()
    log_probs = F.log_softmax(logits / temperature if temperature != 1 else logits, dim=-1)
    return log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1), log_probs


class PPOTrainer(StepLoop):
    """PPO's trainer: owns the policy with its value function, optimizer and schedule; the update loop, its
    checkpoints and resume are :class:`~superhf_lab.algorithms.step_loop.StepLoop`'s, as SuperHF's. One update is
    :meth:`step`: :meth:`generate`, :meth:`score`, :meth:`make_rollout` and :meth:`update` (:meth:`rollout_statistics`,
    :meth:`advantages` and :meth:`optimise`)."""

    STEP = "update"

    def __init__(
        self,
        config: PPOAlgorithmConfig,
        kl_coef: float,
        text: TextConfig,
        actor_critic: ActorCritic,
        starting: StartingPolicy,
        tokenizer: PreTrainedTokenizerBase,
        reward_scorer: RewardScorer | None,
        heldout_scorer: RewardScorer | None,
        device: torch.device,
        precision: str,
        processes: Processes = ONE_PROCESS,
        seed: int = 0,
    ) -> None:
        self.processes = processes
        self.config = config
        self.kl_coef = kl_coef
        self.text = text
        self.actor_critic = actor_critic
        self.policy = actor_critic.policy
        self.starting = starting
        self.tokenizer = tokenizer
        self.reward_scorer = reward_scorer
        self.heldout_scorer = heldout_scorer
        self.device = device
        self.precision = precision
        for module in actor_critic.modules():  # PPO's ratios compare forward passes: no dropout (TRL, Huang et al.)
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        if processes.sharded_weights:  # sharded before the optimizer is built on the shards
            for module in actor_critic.shardable():
                processes.shard(module)
            processes.broadcast(list(actor_critic.head.parameters()))
        self.trainable = [p for p in actor_critic.parameters() if p.requires_grad]
        # fused: one kernel per step instead of one per tensor (as transformers' default optimizer, adamw_torch_fused)
        optimizer = torch.optim.AdamW(
            processes.parameter_groups(self.trainable),
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
            fused=_fused_adam(self.trainable),
        )
        scheduler = get_scheduler(
            config.lr_schedule, optimizer, num_warmup_steps=0, num_training_steps=config.num_updates
        )
        # ``trained``: the actor-critic as DDP wraps it; FSDP2 sharded its parts in place
        self.trained, self.optimizer, self.scheduler = (
            (actor_critic, optimizer, scheduler)
            if processes.sharded_weights
            else processes.prepare(actor_critic, optimizer, scheduler)
        )
        self.grad_scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.adaptive_kl = (
            AdaptiveKLController(config.adaptive_kl.target, config.adaptive_kl.horizon, config.batch_size)
            if config.adaptive_kl.enabled
            else None
        )
        self.score_normaliser: tuple[float, float] | None = None  # (mean, std) of the first rollout's scores
        self.shuffling = torch.Generator().manual_seed(seed)  # the minibatch orders: the same on every process
        self.nonfinite_losses = 0
        max_halvings = self.out_of_memory_halvings()
        minibatch = config.batch_size // config.num_mini_batches
        self.batch_sizes = {
            "rollout": HalvingBatchSize(
                "algorithm.rollout_minibatch_size", config.rollout_minibatch_size, max_halvings
            ),
            "scoring": HalvingBatchSize(
                "algorithm.rollout_minibatch_size", config.rollout_minibatch_size, max_halvings
            ),
            # its error says "lower algorithm.batch_size": a smaller batch has smaller minibatches
            "optimisation": HalvingBatchSize("algorithm.batch_size", minibatch, max_halvings),
        }

    # -- rollout -----------------------------------------------------------------------------------------------

    def generate(self, prompts: list[str]) -> list[Completion]:
        """One sampled completion per prompt (this process's share), cut where the model starts a new turn."""
        return self.batch_sizes["rollout"].run(
            lambda size: sample_completions(
                self.policy,
                self.tokenizer,
                prompts,
                1,
                self.config.sampling,
                size,
                self.device,
                self.precision,
                self.text.cut,
                processes=self.processes,
            ),
            self.agree_on_oom,
        )

    def scores_for(self, rewards: torch.Tensor, finished: torch.Tensor) -> torch.Tensor:
        """The scores PPO optimises: the reward model's, normalised (``reward_normalisation``: by the first rollout's
        mean and std, kept for the run) and penalised where a completion never ended (``missing_eos_penalty``)."""
        cfg = self.config
        scores = rewards.float()
        if cfg.reward_normalisation == "first_rollout":
            if self.score_normaliser is None:
                self.score_normaliser = (scores.mean().item(), scores.std().item())
            mean, std = self.score_normaliser
            scores = (scores - mean) / max(std, 1e-8)
        if cfg.missing_eos_penalty is not None:
            scores = scores - cfg.missing_eos_penalty * (~finished).float()
        return scores

    def make_rollout(self, completions: list[Completion]) -> Rollout:
        """The completions as PPO's actions (tokenised as SuperHF's fine-tuning does) with their scores."""
        ids = [completion_token_ids(self.tokenizer, self.config.conversation_prompt, c) for c in completions]
        finished = torch.tensor([c.finished for c in completions])
        scores = self.scores_for(torch.tensor([c.reward for c in completions]), finished)
        prompt_ids, completion_ids = (list(part) for part in zip(*ids))
        return Rollout.from_token_ids(
            prompt_ids, completion_ids, self.tokenizer.pad_token_id, scores, finished, self.device
        )

    @torch.no_grad()
    def rollout_statistics(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        """Per completion token, before any update: the policy's and the starting policy's log-probabilities at the
        sampling temperature, the exact KL between them there and at temperature 1 (the logged ``kl``), and the
        values. Each process computes its share of the rows; every process gets all of them."""
        rows = list(range(rollout.mask.shape[0]))
        share, real = self.processes.even_share(rows)

        def compute(size: int) -> list[dict[str, torch.Tensor]]:
            parts = []
            for start in range(0, len(share), size):
                part = rollout.rows(share[start : start + size])
                parts.append(self._statistics_of(part))
            return parts

        self.actor_critic.eval()
        parts = self.batch_sizes["rollout"].run(compute, self.agree_on_oom)
        self.actor_critic.train()
        local = {name: torch.cat([part[name] for part in parts])[:real] for name in parts[0]} if parts else {}
        if self.processes.world_size == 1:
            return local
        gathered = self.processes.gather([{name: tensor.cpu() for name, tensor in local.items()}])
        return {name: torch.cat([part[name] for part in gathered]).to(self.device) for name in gathered[0]}

    def _statistics_of(self, part: Rollout) -> dict[str, torch.Tensor]:
        temperature = self.config.temperature
        with autocast(self.device, self.precision):
            logits, values = self.actor_critic(part.positions, **part.inputs)
        reference_logits = self.starting.logits(
            self.device, self.precision, **part.inputs, logits_to_keep=part.positions
        )
        logprobs, log_probs = action_log_probs(logits, part.actions, temperature)
        reference_logprobs, reference_log_probs = action_log_probs(reference_logits, part.actions, temperature)
        exact = (log_probs.exp() * (log_probs - reference_log_probs)).sum(-1)
        if temperature != 1:
            _, plain = action_log_probs(logits, part.actions, 1.0)
            _, plain_reference = action_log_probs(reference_logits, part.actions, 1.0)
            exact_plain = (plain.exp() * (plain - plain_reference)).sum(-1)
        else:
            exact_plain = exact
        return {
            "logprobs": logprobs * part.mask,
            "reference_logprobs": reference_logprobs * part.mask,
            "exact_kl": exact * part.mask,
            "exact_kl_plain": exact_plain * part.mask,
            "values": values.float() * part.mask,
        }

    def penalty_kl(self, statistics: dict[str, torch.Tensor], estimates: dict[str, torch.Tensor]) -> torch.Tensor:
        """The per-token KL the penalty uses (``kl_estimator``): the exact one, or one of ``estimates``."""
        if self.config.kl_estimator == "exact":
            return statistics["exact_kl"]
        return estimates[self.config.kl_estimator]

    def advantages(
        self, rollout: Rollout, statistics: dict[str, torch.Tensor], penalty: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(whitened advantages, returns) of the rollout, its rewards penalised by the per-token KL ``penalty``."""
        cfg, mask = self.config, rollout.mask
        rewards = per_token_rewards(rollout.scores, penalty, self.kl_coef, mask)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
        advantages, returns = generalised_advantages(rewards, statistics["values"], mask, cfg.gamma, cfg.lam)
        return masked_whiten(advantages, mask) * mask, returns

    # -- optimisation ------------------------------------------------------------------------------------------

    def optimise(
        self,
        rollout: Rollout,
        statistics: dict[str, torch.Tensor],
        advantages: torch.Tensor,
        returns: torch.Tensor,
        permutations: list[torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """``num_ppo_epochs`` passes over the rollout in ``num_mini_batches`` shuffled minibatches, one optimizer step
        each (``permutations``: each epoch's order; by default drawn from the trainer's own seeded generator).
        Returns the losses and statistics averaged over the steps taken."""
        cfg = self.config
        size = rollout.mask.shape[0] // cfg.num_mini_batches
        sums = dict.fromkeys(LOSS_METRIC_NAMES, 0.0)
        steps = 0
        for epoch in range(cfg.num_ppo_epochs):
            order = (
                permutations[epoch]
                if permutations is not None
                else torch.randperm(rollout.mask.shape[0], generator=self.shuffling)
            )
            for start in range(0, len(order), size):
                minibatch = order[start : start + size].tolist()
                losses = self.batch_sizes["optimisation"].run(
                    lambda micro: self._accumulate_gradients(
                        rollout, statistics, advantages, returns, minibatch, micro
                    ),
                    self.agree_on_oom,
                )
                if self.processes.any(losses is None):
                    self.optimizer.zero_grad(set_to_none=True)
                    self.skip_nonfinite_loss()
                    continue
                self.processes.sum_gradients(self.trainable)
                losses = self.processes.sum(losses)
                if cfg.max_grad_norm is not None:
                    self.grad_scaler.unscale_(self.optimizer)
                    self.processes.clip_grad_norm(self.trainable, cfg.max_grad_norm)
                reach("finetuning")
                self.grad_scaler.step(self.optimizer)
                self.grad_scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                for name, value in losses.items():
                    sums[name] += value
                steps += 1
        return {name: total / steps if steps else math.nan for name, total in sums.items()}

    def _accumulate_gradients(
        self,
        rollout: Rollout,
        statistics: dict[str, torch.Tensor],
        advantages: torch.Tensor,
        returns: torch.Tensor,
        minibatch: list[int],
        micro_size: int,
    ) -> dict[str, float] | None:
        """Gradients of this process's share of the minibatch's loss, summed over micro-batches of ``micro_size``:
        the policy loss and the value loss are means over the minibatch's completion tokens, so shares and
        micro-batches add up to it exactly (a share's padding rows, under sharded weights, are masked out). None, with
        no gradients left, when the loss is not finite."""
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        tokens = rollout.mask[minibatch].sum().clamp(min=1)
        share, real = self.processes.even_share(minibatch)
        is_real = torch.arange(len(share), device=rollout.mask.device) < real
        totals = dict.fromkeys(LOSS_METRIC_NAMES, 0.0)
        for start in range(0, len(share), micro_size):
            rows = share[start : start + micro_size]
            part, mask = rollout.rows(rows), rollout.mask[rows] & is_real[start : start + micro_size, None]
            old_logprobs, old_values = statistics["logprobs"][rows], statistics["values"][rows]
            advantage, target = advantages[rows], returns[rows]
            with self.processes.no_sync(self.trained):
                with autocast(self.device, self.precision):
                    logits, values = self.trained(part.positions, **part.inputs)
                logprobs, _ = action_log_probs(logits, part.actions, cfg.temperature)
                values = values.float()
                log_ratio = (logprobs - old_logprobs) * mask
                ratio = torch.exp(log_ratio)
                policy_losses = -advantage * ratio
                clipped_policy_losses = -advantage * ratio.clamp(1 - cfg.cliprange, 1 + cfg.cliprange)
                policy_loss = (torch.max(policy_losses, clipped_policy_losses) * mask).sum() / tokens
                clipped_values = torch.clamp(values, old_values - cfg.cliprange_value, old_values + cfg.cliprange_value)
                value_losses = (values - target) ** 2
                clipped_value_losses = (clipped_values - target) ** 2
                value_loss = 0.5 * (torch.max(value_losses, clipped_value_losses) * mask).sum() / tokens
                loss = policy_loss + cfg.vf_coef * value_loss
                if not self.finite(loss):
                    self.optimizer.zero_grad(set_to_none=True)
                    return None
                self.grad_scaler.scale(loss * self.processes.gradient_sum_scale).backward()
            with torch.no_grad():
                totals["loss/total"] += loss.item()
                totals["loss/policy"] += policy_loss.item()
                totals["loss/value"] += value_loss.item()
                totals["ppo/clipfrac"] += ((clipped_policy_losses > policy_losses) * mask).sum().item() / tokens.item()
                totals["ppo/value_clipfrac"] += (
                    (clipped_value_losses > value_losses) * mask
                ).sum().item() / tokens.item()
                totals["ppo/approx_kl"] += 0.5 * (log_ratio**2).sum().item() / tokens.item()
        return totals

    # -- one update and the loop -------------------------------------------------------------------------------

    def update(self, rollout: Rollout, permutations: list[torch.Tensor] | None = None) -> dict[str, float]:
        """PPO's update on a rollout: statistics, advantages, the epochs of minibatch steps, then the schedule and the
        adaptive KL coefficient move. Returns the update's metrics (the KL ones of the rollout, before it)."""
        statistics = self.rollout_statistics(rollout)
        estimates = kl_estimates(statistics["logprobs"], statistics["reference_logprobs"])
        penalty = self.penalty_kl(statistics, estimates)
        advantages, returns = self.advantages(rollout, statistics, penalty)
        learning_rate, kl_coef = self.scheduler.get_last_lr()[0], self.kl_coef
        losses = self.optimise(rollout, statistics, advantages, returns, permutations)
        self.scheduler.step()
        mask = rollout.mask
        completions = mask.sum(1).clamp(min=1)
        penalised = (penalty * mask).sum(1).mean().item()
        metrics = {
            **losses,
            "kl": ((statistics["exact_kl_plain"] * mask).sum(1) / completions).mean().item(),
            **{f"kl_estimate/{k}": ((v * mask).sum(1) / completions).mean().item() for k, v in estimates.items()},
            "kl_sequence_estimate": penalised,
            "kl_coef": kl_coef,
            "ppo/entropy": (-statistics["logprobs"] * mask).sum(1).mean().item(),
            "lr": learning_rate,
        }
        if self.adaptive_kl is not None:
            self.kl_coef = self.adaptive_kl.update(self.kl_coef, penalised)
        return metrics

    def step(self, prompts: list[str]) -> tuple[dict[str, float], list[Completion]]:
        """One update on ``prompts``; returns its metrics (but progress and diversity) and its completions."""
        started = time.perf_counter()
        completions = self.generate(prompts)
        generated = time.perf_counter()
        self.score(completions)
        completions = self.processes.gather(completions)
        scored = time.perf_counter()
        metrics = {**reward_and_length_metrics(completions), **self.update(self.make_rollout(completions))}
        metrics.update(
            {
                "time/generation_s": generated - started,
                "time/scoring_s": scored - generated,
                "time/finetuning_s": time.perf_counter() - scored,
                "train/nonfinite_losses_skipped": self.nonfinite_losses,
                "memory/oom_halvings": sum(b.halvings for b in self.batch_sizes.values()),
            }
        )
        metrics["time/step_s"] = time.perf_counter() - started
        return metrics, completions

    def total_steps(self) -> int:
        return self.config.num_updates

    def run_step(
        self, step: int, stream: PromptStream, context: RunContext, bookkeeping: Bookkeeping
    ) -> tuple[dict[str, float], list[Completion]]:
        """Update ``step`` as training runs it: :meth:`step` on the stream's next prompts, its metrics and sample
        completions logged, its diversity metrics handed to ``bookkeeping``."""
        cfg, tracker = self.config, context.tracker
        metrics, completions = self.step(stream.take(cfg.batch_size))
        metrics["progress/prompts_seen"] = stream.position
        metrics["progress/completions_generated"] = (step + 1) * cfg.batch_size
        tracker.log_metrics(metrics, step=step)
        if self.processes.is_main:
            bookkeeping.submit(step, lambda completions=completions: diversity_metrics(completions))
        tracker.log_completions(
            completion_rows(step, completions, [], context.config.mlflow.completions_logged_per_superbatch)
        )
        bookkeeping.log_ready()
        return metrics, completions

    def checkpointed(self) -> ActorCritic:
        return self.actor_critic

    def state_dict(self) -> dict:
        """The loop's state (weights: the policy's adapters with LoRA, and the value function) and PPO's own: the KL
        coefficient (adaptive control moves it), the score normaliser and the minibatch order generator."""
        return {
            **super().state_dict(),
            "kl_coef": self.kl_coef,
            "score_normaliser": self.score_normaliser,
            "shuffling": self.shuffling.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.kl_coef = state["kl_coef"]
        self.score_normaliser = state["score_normaliser"]
        self.shuffling.set_state(state["shuffling"])


def _fused_adam(parameters: list[torch.nn.Parameter]) -> bool:
    """Whether torch's fused AdamW takes these parameters (float ones on a CPU or a CUDA device)."""
    supported = ("cpu", "cuda")
    return all(p.is_floating_point() and p.device.type in supported for p in parameters)


def per_process_batch_size(cfg: PPOAlgorithmConfig, world_size: int) -> int:
    """Prompts per update on each process (a share of the global ``batch_size``)."""
    require(
        cfg.batch_size % world_size == 0,
        "algorithm.batch_size",
        cfg.batch_size,
        f"use a multiple of the {world_size} processes",
    )
    return cfg.batch_size // world_size


def build_trainer(context: RunContext) -> tuple[PPOTrainer, PromptStream]:
    """The trainer on the shared setup (prompts, policy with its starting policy, scorers) and its prompt stream."""
    run, cfg = context.config, context.algorithm
    per_process_batch_size(cfg, context.processes.world_size)
    setup = training_setup(context, cfg.max_new_tokens, cfg.rollout_minibatch_size, cfg.lora, cfg.conversation_prompt)
    actor_critic = ActorCritic.build(
        setup.policy, run.model, cfg.value_model, cfg.value_head_init, setup.tokenizer.pad_token_id
    )
    trainer = PPOTrainer(
        cfg,
        run.kl_coef,
        run.text,
        actor_critic,
        setup.starting,
        setup.tokenizer,
        setup.reward_scorer,
        setup.heldout_scorer,
        context.device,
        run.precision,
        context.processes,
        seed=run.seed,
    )
    return trainer, PromptStream(setup.prompts.prompts, seed=run.seed, shuffle=run.data.shuffle)


@register_algorithm("ppo", PPOAlgorithmConfig, METRIC_NAMES, checkpoints=True, build=build_trainer)
def train_ppo(context: RunContext) -> None:
    """Train, evaluating on the way and at the end, then save the policy (:func:`train_and_save_policy`)."""
    train_and_save_policy(context, *build_trainer(context))
