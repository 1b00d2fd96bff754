"""SuperHF (Mukobi et al., arXiv 2310.16763): sample, score, keep the best, fine-tune, repeat.

Per superbatch: ``prompt_accumulation_steps`` prompts, ``superbatch_size`` sampled completions each, scored
by the reward model through its own tokenizer; empty completions are dropped and the top-K per prompt
kept; the policy is fine-tuned on them with cross-entropy on completion tokens plus ``kl_coef`` x KL to
the frozen starting policy.

The loss by default (``loss_reduction: mean``), per kept completion, averages over its tokens only:
    CE  = mean_t -log pi(y_t | x, y_<t)
    KL  = mean_t KL(pi(. | x, y_<t) || pi_ref(. | x, y_<t))     (exact, over the vocabulary)
and both are then averaged over the completions of a minibatch, so ``kl_coef`` weighs two per-token
quantities and means the same whatever the completion length or minibatch size. The reference trainer
(``loss_reduction: reference``, ``kl_direction: reference_to_policy``, ``kl_mask: unshifted``) takes the
token mean of CE over the whole minibatch, and per completion the token mean of KL(pi_ref || pi) over the
unshifted completion positions, clamped at 0 and *summed* over the minibatch, so its ``kl_coef`` scales
with the minibatch size. The policy-first direction is what PPO-based RLHF penalises, so one ``kl_coef``
sweep reads the same for both algorithms. The logged ``kl`` is always the default term (exact, per token).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from superhf_lab.checkpoint import Preempted, capture_rng, restore_rng
from superhf_lab.completions import Completion, completion_metrics, completion_rows, score_completions
from superhf_lab.config import LoraSettings, SamplingSettings, TextConfig, require
from superhf_lab.data import PromptStream, load_training_prompts, log_source_counts
from superhf_lab.evaluation import EVAL_METRIC_NAMES, PolicyEvaluator, eval_metric, save_policy_artifact
from superhf_lab.memory import HalvingBatchSize
from superhf_lab.models import autocast, check_context_fits, load_policy
from superhf_lab.registry import RunContext, register_algorithm
from superhf_lab.rewards import RewardScorer, build_scorers
from superhf_lab.sampling import completion_token_ids, sample_completions

log = logging.getLogger(__name__)
LR_SCHEDULES = ("cosine", "linear", "constant")
KL_DIRECTIONS = ("policy_to_reference", "reference_to_policy")  # KL(pi || pi_ref) or the reference's KL(pi_ref || pi)
LOSS_REDUCTIONS = ("mean", "reference")
KL_MASKS = ("shifted", "unshifted")  # logits that predict completion tokens, or the logits at completion tokens
LENGTH_PENALTY_FORMS = ("linear", "log")  # per character of the stripped completion, or x log(characters)

# Stable metric names, shared with every algorithm that wants to be overlaid with SuperHF in MLflow.
METRIC_NAMES = (
    "reward/mean", "reward/std", "reward/kept_mean", "reward/kept_std",
    "heldout_reward/mean", "heldout_reward/std", "heldout_reward/kept_mean",
    "kl", "loss/total", "loss/ce", "loss/kl_penalty", "lr",
    "diversity/meteor_similarity", "diversity/meteor_similarity_within_prompt",
    "diversity/distinct_1", "diversity/distinct_2",
    "completion/length_tokens_mean", "completion/empty_fraction", "completion/truncated_fraction",
    "time/generation_s", "time/scoring_s", "time/finetuning_s", "time/step_s",
    "progress/prompts_seen", "progress/completions_generated", "train/nonfinite_losses_skipped",
    "memory/oom_halvings",
    *(eval_metric(name) for name in EVAL_METRIC_NAMES),
)


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
    conversation_prompt: str = ""  # prepended to every prompt the policy sees, never shown to the reward model
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


def selection_score(completion: Completion, length_penalty: float, form: str) -> float:
    """The reward that ranks a completion for top-K: minus ``length_penalty`` x its stripped length in characters
    (``linear``) or x the log of that length (``log``, the reference trainer's form)."""
    if length_penalty == 0:
        return completion.reward
    characters = len(completion.text.strip())
    return completion.reward - length_penalty * (math.log(characters) if form == "log" else characters)


def select_top_k(completions: list[Completion], top_k: int, length_penalty: float = 0.0,
                 length_penalty_form: str = "linear") -> list[int]:
    """Indices of the ``top_k`` highest-scoring non-empty completions of each prompt."""
    by_prompt: dict[int, list[int]] = {}
    for index, completion in enumerate(completions):
        if completion.text.strip():
            by_prompt.setdefault(completion.prompt_index, []).append(index)
    kept = []
    for indices in by_prompt.values():
        ranked = sorted(indices, key=lambda i: selection_score(completions[i], length_penalty, length_penalty_form),
                        reverse=True)
        kept.extend(ranked[:top_k])
    return sorted(kept)


def pad_examples(
    prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_token_id: int, padding_side: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack prompt+completion sequences; returns input ids, attention mask and a completion-token mask.

    The completion mask is 1 exactly on completion tokens, wherever the padding sits.
    """
    sequences = [p + c for p, c in zip(prompt_ids, completion_ids, strict=True)]
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    completion_mask = torch.zeros_like(input_ids)
    for row, (prompt, sequence) in enumerate(zip(prompt_ids, sequences)):
        start = length - len(sequence) if padding_side == "left" else 0
        end = start + len(sequence)
        input_ids[row, start:end] = torch.tensor(sequence)
        attention_mask[row, start:end] = 1
        completion_mask[row, start + len(prompt) : end] = 1
    return input_ids, attention_mask, completion_mask


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each sequence's first real token, so left padding does not shift them."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def completion_batch(
    tokenizer: PreTrainedTokenizerBase, conversation_prompt: str, completions: list[Completion], device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Model inputs for prompt + completion sequences (right-padded, positions counted from the first token)
    and the mask of the completion tokens, for the loss and for KL."""
    prompt_ids, completion_ids = zip(*(completion_token_ids(tokenizer, conversation_prompt, c) for c in completions))
    input_ids, attention_mask, completion_mask = (
        t.to(device) for t in pad_examples(list(prompt_ids), list(completion_ids), tokenizer.pad_token_id, "right")
    )
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids_for(attention_mask)}
    return inputs, completion_mask


@dataclass
class LossTerms:
    """Per completion: summed CE and its token count, the exact per-token KL(policy || reference) that is
    logged as ``kl``, and the KL term as the configured loss defines it (direction and mask)."""

    ce_sum: torch.Tensor
    tokens: torch.Tensor
    kl: torch.Tensor
    kl_loss: torch.Tensor


def loss_terms(logits: torch.Tensor, reference_logits: torch.Tensor, input_ids: torch.Tensor,
               completion_mask: torch.Tensor, kl_direction: str = "policy_to_reference",
               kl_mask: str = "shifted") -> LossTerms:
    """What both loss reductions are built from (see the module docstring).

    Logits at position t predict token t+1, so the shifted mask selects the logits that predict completion
    tokens; ``kl_mask: unshifted`` takes the logits at the completion tokens' own positions instead. Only the
    positions a term uses go through the softmax over the vocabulary (prompt and padding positions never do).
    """
    predicts = F.pad(completion_mask[:, 1:], (0, 1)).bool()
    kl_positions = predicts if kl_mask == "shifted" else completion_mask.bool()
    used = predicts | kl_positions
    rows = used.nonzero(as_tuple=True)[0]
    log_probs = F.log_softmax(logits[used].float(), dim=-1)
    reference_log_probs = F.log_softmax(reference_logits[used].float(), dim=-1)
    next_tokens = F.pad(input_ids[:, 1:], (0, 1))[used]
    in_ce, in_kl_loss = predicts[used].float(), kl_positions[used].float()
    token_ce = -log_probs.gather(-1, next_tokens.unsqueeze(-1)).squeeze(-1)
    token_kl = (log_probs.exp() * (log_probs - reference_log_probs)).sum(-1)
    token_kl_loss = token_kl
    if kl_direction == "reference_to_policy":
        token_kl_loss = (reference_log_probs.exp() * (reference_log_probs - log_probs)).sum(-1)

    def per_completion(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(logits.shape[0], device=values.device).index_add(0, rows, values)

    tokens = predicts.sum(-1).float()
    kl = per_completion(token_kl * in_ce) / tokens.clamp(min=1)
    kl_loss = per_completion(token_kl_loss * in_kl_loss) / kl_positions.sum(-1).clamp(min=1)
    return LossTerms(per_completion(token_ce * in_ce), tokens, kl, kl_loss)


def completion_ce_and_kl(
    logits: torch.Tensor, reference_logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example mean cross-entropy and mean exact KL(policy || reference) over completion tokens."""
    terms = loss_terms(logits, reference_logits, input_ids, completion_mask)
    return terms.ce_sum / terms.tokens.clamp(min=1), terms.kl


def minibatch_loss(terms: LossTerms, kl_coef: float, reduction: str, minibatch_size: int,
                   minibatch_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE term, KL term) of a minibatch's loss contributed by the completions in ``terms`` (all of the
    minibatch, or one micro-batch of it: contributions add up to the minibatch's loss).

    ``mean``: mean over completions of per-token CE + ``kl_coef`` x per-token KL. ``reference``: CE averaged
    over all the minibatch's completion tokens, plus ``kl_coef`` x the sum over completions of KL clamped at 0.
    """
    if reduction == "reference":
        return terms.ce_sum.sum() / minibatch_tokens, kl_coef * terms.kl_loss.clamp(min=0).sum()
    ce = terms.ce_sum / terms.tokens.clamp(min=1)
    return ce.sum() / minibatch_size, kl_coef * terms.kl_loss.sum() / minibatch_size


class SuperHFTrainer:
    """Runs superbatches: :meth:`generate`, :meth:`score`, :func:`select_top_k`, :meth:`finetune`."""

    def __init__(
        self,
        config: SuperHFConfig,
        kl_coef: float,
        text: TextConfig,
        policy: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        reward_scorer: RewardScorer,
        heldout_scorer: RewardScorer | None,
        device: torch.device,
        precision: str,
    ) -> None:
        self.config = config
        self.kl_coef = kl_coef
        self.text = text
        self.tokenizer = tokenizer
        self.reward_scorer = reward_scorer
        self.heldout_scorer = heldout_scorer
        self.device = device
        self.precision = precision
        self.policy, self.frozen_reference = self._prepare_policy(policy)
        trainable = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.scheduler = get_scheduler(
            config.lr_schedule if config.lr_schedule != "constant" else "constant_with_warmup",
            self.optimizer, num_warmup_steps=config.warmup_superbatches, num_training_steps=config.num_superbatches,
        )
        self.grad_scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.nonfinite_losses = 0
        self.batch_sizes = {
            phase: HalvingBatchSize(f"algorithm.minibatch_size_{phase}", getattr(config, f"minibatch_size_{phase}"),
                                    config.max_oom_halvings)
            for phase in ("generating", "scoring", "finetuning")
        }

    def _prepare_policy(self, policy: PreTrainedModel) -> tuple[PreTrainedModel, PreTrainedModel | None]:
        if not self.config.lora.enabled:
            return policy, copy.deepcopy(policy).eval().requires_grad_(False)
        from peft import get_peft_model

        return get_peft_model(policy, self.config.lora.to_peft()), None

    def reference_logits(self, **inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(self.device, self.precision):
            if self.frozen_reference is not None:
                return self.frozen_reference(**inputs).logits
            with self.policy.disable_adapter():
                return self.policy(**inputs).logits

    def generate(self, prompts: list[str]) -> list[Completion]:
        """``superbatch_size`` sampled completions per prompt, cut where the model starts a new turn."""
        cfg = self.config
        return self.batch_sizes["generating"].run(lambda size: sample_completions(
            self.policy, self.tokenizer, prompts, cfg.superbatch_size, cfg.sampling, size, self.device, self.precision,
            self.text.cut,
        ))

    def score(self, completions: list[Completion]) -> None:
        """Reward (and held-out reward) of prompt+completion, each scorer using its own tokenizer."""

        def score_in_minibatches_of(size: int) -> None:
            for scorer in (self.reward_scorer, self.heldout_scorer):
                if hasattr(scorer, "batch_size"):
                    scorer.batch_size = size
            score_completions(completions, self.text.reward_input, self.reward_scorer, self.heldout_scorer)

        self.batch_sizes["scoring"].run(score_in_minibatches_of)

    def finetune(self, kept: list[Completion]) -> dict[str, float]:
        """One optimizer step per minibatch of kept completions; non-finite losses are skipped and counted."""
        self.policy.train()
        sums = dict.fromkeys(("loss/total", "loss/ce", "loss/kl_penalty", "kl"), 0.0)
        steps = 0
        size = self.config.minibatch_size_finetuning
        for start in range(0, len(kept), size):
            minibatch = kept[start : start + size]
            losses = self.batch_sizes["finetuning"].run(lambda micro: self._accumulate_gradients(minibatch, micro))
            if losses is None:
                self._skip_nonfinite_loss()
                continue
            if self.config.max_grad_norm is not None:
                self.grad_scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
            for name, value in losses.items():
                sums[name] += value
            steps += 1
        return {name: total / steps if steps else math.nan for name, total in sums.items()}

    def _accumulate_gradients(self, minibatch: list[Completion], micro_size: int) -> dict[str, float] | None:
        """Gradients of the minibatch's loss, summed over micro-batches of ``micro_size`` (the whole minibatch
        unless memory ran out); None, with no gradients left, when the loss is not finite."""
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        totals = dict.fromkeys(("loss/total", "loss/ce", "loss/kl_penalty", "kl"), 0.0)
        minibatch_tokens = sum(len(completion_token_ids(self.tokenizer, cfg.conversation_prompt, c)[1])
                               for c in minibatch) if cfg.loss_reduction == "reference" else 0
        for start in range(0, len(minibatch), micro_size):
            part = minibatch[start : start + micro_size]
            inputs, completion_mask = completion_batch(self.tokenizer, cfg.conversation_prompt, part, self.device)
            reference_logits = self.reference_logits(**inputs)
            with autocast(self.device, self.precision):
                logits = self.policy(**inputs).logits
            terms = loss_terms(logits, reference_logits, inputs["input_ids"], completion_mask, cfg.kl_direction,
                               cfg.kl_mask)
            ce, kl_penalty = minibatch_loss(terms, self.kl_coef, cfg.loss_reduction, len(minibatch), minibatch_tokens)
            loss = ce + kl_penalty
            if not torch.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                return None
            self.grad_scaler.scale(loss).backward()
            totals["loss/total"] += loss.item()
            totals["loss/ce"] += ce.item()
            totals["loss/kl_penalty"] += kl_penalty.item()
            totals["kl"] += terms.kl.sum().item() / len(minibatch)
        return totals

    def state_dict(self) -> dict:
        """What continuing exactly needs besides RNG and the prompt stream: weights (only the adapters with
        LoRA), optimizer, schedule, loss scaler and the skipped-loss count."""
        if self.config.lora.enabled:
            weights = {name: p.detach().clone() for name, p in self.policy.named_parameters() if p.requires_grad}
        else:
            weights = self.policy.state_dict()
        return {"policy": weights, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "grad_scaler": self.grad_scaler.state_dict(), "nonfinite_losses": self.nonfinite_losses,
                "batch_sizes": {phase: (b.size, b.halvings) for phase, b in self.batch_sizes.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"], strict=not self.config.lora.enabled)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.grad_scaler.load_state_dict(state["grad_scaler"])
        self.nonfinite_losses = state["nonfinite_losses"]
        for phase, (size, halvings) in state["batch_sizes"].items():
            self.batch_sizes[phase].size, self.batch_sizes[phase].halvings = size, halvings

    def _skip_nonfinite_loss(self) -> None:
        self.nonfinite_losses += 1
        if self.nonfinite_losses > self.config.max_nonfinite_losses:
            raise FloatingPointError(
                f"{self.nonfinite_losses} fine-tuning losses were NaN or infinite, more than "
                f"algorithm.max_nonfinite_losses={self.config.max_nonfinite_losses}. Lower algorithm.learning_rate, "
                "use precision=fp32 or bf16, or raise the limit"
            )

    def step(self, prompts: list[str]) -> tuple[dict[str, float], list[Completion], list[int]]:
        """One superbatch; returns its metrics, all completions and the indices of the kept ones."""
        started = time.perf_counter()
        completions = self.generate(prompts)
        generated = time.perf_counter()
        self.score(completions)
        scored = time.perf_counter()
        kept_indices = select_top_k(completions, self.config.top_k, self.config.length_penalty,
                                    self.config.length_penalty_form)
        learning_rate = self.scheduler.get_last_lr()[0]
        losses = self.finetune([completions[i] for i in kept_indices])
        self.scheduler.step()
        finished = time.perf_counter()
        metrics = {
            **superbatch_metrics(completions, kept_indices),
            **losses,
            "lr": learning_rate,
            "time/generation_s": generated - started,
            "time/scoring_s": scored - generated,
            "time/finetuning_s": finished - scored,
            "train/nonfinite_losses_skipped": self.nonfinite_losses,
            "memory/oom_halvings": sum(b.halvings for b in self.batch_sizes.values()),
        }
        metrics["time/step_s"] = time.perf_counter() - started
        return metrics, completions, kept_indices


def superbatch_metrics(completions: list[Completion], kept_indices: list[int]) -> dict[str, float]:
    """Statistics of all completions plus the rewards of the kept ones."""
    rewards = np.array([c.reward for c in completions])
    kept_rewards = rewards[kept_indices] if kept_indices else np.array([math.nan])
    metrics = {**completion_metrics(completions), "reward/kept_mean": kept_rewards.mean(), "reward/kept_std": kept_rewards.std()}
    if "heldout_reward/mean" in metrics:
        heldout = np.array([c.heldout_reward for c in completions])
        metrics["heldout_reward/kept_mean"] = heldout[kept_indices].mean() if kept_indices else math.nan
    return metrics


def build_trainer(context: RunContext) -> tuple[SuperHFTrainer, PromptStream]:
    """Prompts first (cheap to validate), then the policy and the reward models."""
    run = context.config
    cfg: SuperHFConfig = run.algorithm
    prompt_set = load_training_prompts(run.data, run.seed)
    log_source_counts(prompt_set.counts, "train")
    stream = PromptStream(prompt_set.prompts, seed=run.seed, shuffle=run.data.shuffle)
    policy, tokenizer = load_policy(run.model, context.device)
    check_context_fits(tokenizer, policy.config, prompt_set.prompts, cfg.max_new_tokens, run.data.max_prompt_chars,
                       cfg.conversation_prompt)
    reward_scorer, heldout_scorer = build_scorers(run, context.device, cfg.minibatch_size_scoring)
    trainer = SuperHFTrainer(cfg, run.kl_coef, run.text, policy, tokenizer, reward_scorer, heldout_scorer,
                             context.device, run.precision)
    return trainer, stream


@register_algorithm("superhf", SuperHFConfig, METRIC_NAMES, checkpoints=True)
def train_superhf(context: RunContext) -> None:
    """Run every superbatch and log its metrics and sample completions; evaluate and save the policy.

    With checkpoints, a resumed run restores the newest checkpoint and re-runs the superbatches after it;
    the steps MLflow already holds (logged before the kill) are not logged again, so the history has
    each step once. SIGTERM ends the run after the current superbatch with a checkpoint (:class:`Preempted`).
    """
    cfg: SuperHFConfig = context.algorithm
    run = context.config
    trainer, stream = build_trainer(context)
    evaluator = None
    if run.eval.at_end or run.eval.every_n_superbatches:
        evaluator = PolicyEvaluator(run, trainer.tokenizer, trainer.reward_scorer, trainer.heldout_scorer, context.device)
    first_step, logged_steps = 0, set()
    if context.resume:
        first_step = resume_from_checkpoint(context, trainer, stream)
        logged_steps = context.tracker.logged_steps("progress/completions_generated")
    if context.checkpoints is not None:
        context.tracker.table_flush_every = math.inf  # the table is appended at checkpoints, so a resume adds no duplicates
    progress = tqdm(range(first_step, cfg.num_superbatches), desc="SuperHF superbatches", unit="superbatch",
                    initial=first_step, total=cfg.num_superbatches)
    for step in progress:
        metrics, completions, kept_indices = trainer.step(stream.take(cfg.prompt_accumulation_steps))
        metrics["progress/prompts_seen"] = stream.position
        metrics["progress/completions_generated"] = (step + 1) * cfg.prompt_accumulation_steps * cfg.superbatch_size
        already_logged = step in logged_steps
        context.tracker.log_metrics(metrics, step=step, send=not already_logged)
        if not already_logged:
            context.tracker.log_completions(
                completion_rows(step, completions, kept_indices, run.mlflow.completions_logged_per_superbatch)
            )
        progress.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['kl']:.4f}")
        last = step == cfg.num_superbatches - 1
        due = run.eval.every_n_superbatches and (step + 1) % run.eval.every_n_superbatches == 0
        if evaluator is not None and (due or (last and run.eval.at_end)):
            evaluator.evaluate(trainer.policy, trainer.reference_logits, context.tracker, step, send=not already_logged)
        if context.checkpoints is not None:
            every = run.checkpoint.every_n_superbatches
            if last or context.stop.requested or (every and (step + 1) % every == 0):
                save_checkpoint(context, trainer, stream, step, finished=last)
        if context.stop.requested and not last:
            raise Preempted(f"stopped by SIGTERM after superbatch {step}; checkpoint in {context.checkpoints.folder}")
    save_policy_artifact(context.tracker, trainer.policy, trainer.tokenizer)


def save_checkpoint(context: RunContext, trainer: SuperHFTrainer, stream: PromptStream, step: int, finished: bool) -> None:
    state = {"trainer": trainer.state_dict(), "stream_position": stream.position, "rng": capture_rng(),
             "history": dict(context.tracker.history)}
    meta = {"step": step, "run_id": context.tracker.run_id, "finished": finished}
    context.checkpoints.save(state, meta)
    context.tracker.flush()


def resume_from_checkpoint(context: RunContext, trainer: SuperHFTrainer, stream: PromptStream) -> int:
    """Restore the newest checkpoint; returns the first superbatch still to run."""
    state, meta = context.checkpoints.load()
    trainer.load_state_dict(state["trainer"])
    stream.position = state["stream_position"]
    context.tracker.history.clear()
    context.tracker.history.update(state["history"])
    restore_rng(state["rng"])
    log.info("resumed from the checkpoint after superbatch %d in %s", meta["step"], context.checkpoints.folder)
    return meta["step"] + 1
