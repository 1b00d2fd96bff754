"""SuperHF (Mukobi et al., arXiv 2310.16763): sample, score, keep the best, fine-tune, repeat.

Per superbatch: ``prompt_accumulation_steps`` prompts, ``superbatch_size`` sampled completions each, scored
by the reward model through its own tokenizer; empty completions are dropped and the top-K per prompt
kept; the policy is fine-tuned on them with cross-entropy on completion tokens plus ``kl_coef`` x KL to
the frozen starting policy.

The loss, per kept completion, averages over that completion's tokens only:
    CE  = mean_t -log pi(y_t | x, y_<t)
    KL  = mean_t KL(pi(. | x, y_<t) || pi_ref(. | x, y_<t))     (exact, over the vocabulary)
and both are then averaged over the completions of a minibatch, so ``kl_coef`` weighs two per-token
quantities and means the same whatever the completion length or minibatch size. The reference trainer
uses KL(pi_ref || pi) and sums it over a minibatch; we use the policy-first direction that PPO-based RLHF
penalises, so one ``kl_coef`` sweep reads the same for both algorithms.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from superhf_lab.completions import Completion, completion_metrics, completion_rows, score_completions
from superhf_lab.config import LoraSettings, require
from superhf_lab.data import PromptStream, load_training_prompts, log_source_counts
from superhf_lab.models import autocast, load_policy
from superhf_lab.registry import RunContext, register_algorithm
from superhf_lab.rewards import RewardScorer, build_scorers
from superhf_lab.text import decode_completion, with_conversation_prompt

LR_SCHEDULES = ("cosine", "linear", "constant")

# Stable metric names, shared with every algorithm that wants to be overlaid with SuperHF in MLflow.
METRIC_NAMES = (
    "reward/mean", "reward/std", "reward/kept_mean", "reward/kept_std",
    "heldout_reward/mean", "heldout_reward/std", "heldout_reward/kept_mean",
    "kl", "loss/total", "loss/ce", "loss/kl_penalty", "lr",
    "diversity/meteor_similarity", "diversity/distinct_1", "diversity/distinct_2",
    "completion/length_tokens_mean", "completion/empty_fraction", "completion/truncated_fraction",
    "time/generation_s", "time/scoring_s", "time/finetuning_s", "time/step_s",
    "progress/prompts_seen", "progress/completions_generated", "train/nonfinite_losses_skipped",
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
    length_penalty: float = 0.0  # subtracted from the reward per character of completion, for selection only
    learning_rate: float = 2e-5
    lr_schedule: str = "cosine"
    warmup_superbatches: int = 0
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    minibatch_size_generating: int = 32
    minibatch_size_scoring: int = 32
    minibatch_size_finetuning: int = 8
    max_nonfinite_losses: int = 10  # stop the run after this many skipped NaN/inf losses
    lora: LoraSettings = field(default_factory=LoraSettings)

    def check(self) -> None:
        positive = (
            "num_superbatches", "prompt_accumulation_steps", "superbatch_size", "top_k", "max_new_tokens",
            "minibatch_size_generating", "minibatch_size_scoring", "minibatch_size_finetuning",
        )
        for name in positive:
            require(getattr(self, name) > 0, f"algorithm.{name}", getattr(self, name), "use a positive integer")
        require(self.top_k <= self.superbatch_size, "algorithm.top_k", self.top_k,
                f"keep at most algorithm.superbatch_size={self.superbatch_size} completions per prompt")
        require(self.temperature > 0, "algorithm.temperature", self.temperature,
                "SuperHF samples its completions; use a temperature > 0 (1.0 in the paper)")
        require(0 < self.top_p <= 1, "algorithm.top_p", self.top_p, "use a value in (0, 1]")
        require(self.generation_top_k >= 0, "algorithm.generation_top_k", self.generation_top_k, "use 0 (off) or more")
        require(self.repetition_penalty > 0, "algorithm.repetition_penalty", self.repetition_penalty,
                "use a value > 0 (1.0 is no penalty)")
        require(self.no_repeat_ngram_size >= 0, "algorithm.no_repeat_ngram_size", self.no_repeat_ngram_size,
                "use 0 (off) or more")
        require(self.learning_rate > 0, "algorithm.learning_rate", self.learning_rate, "use a value > 0")
        require(self.lr_schedule in LR_SCHEDULES, "algorithm.lr_schedule", self.lr_schedule, f"use one of {LR_SCHEDULES}")
        require(0 <= self.warmup_superbatches <= self.num_superbatches, "algorithm.warmup_superbatches",
                self.warmup_superbatches, f"use 0..algorithm.num_superbatches={self.num_superbatches}")
        require(self.max_grad_norm is None or self.max_grad_norm > 0, "algorithm.max_grad_norm",
                self.max_grad_norm, "use null (no clipping) or a value > 0")
        require(self.max_nonfinite_losses >= 0, "algorithm.max_nonfinite_losses", self.max_nonfinite_losses, "use 0 or more")
        self.lora.check("algorithm.lora")


def select_top_k(completions: list[Completion], top_k: int, length_penalty: float = 0.0) -> list[int]:
    """Indices of the ``top_k`` highest-reward non-empty completions of each prompt."""
    by_prompt: dict[int, list[int]] = {}
    for index, completion in enumerate(completions):
        if completion.text.strip():
            by_prompt.setdefault(completion.prompt_index, []).append(index)
    kept = []
    for indices in by_prompt.values():
        ranked = sorted(
            indices, key=lambda i: completions[i].reward - length_penalty * len(completions[i].text), reverse=True
        )
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


def completion_ce_and_kl(
    logits: torch.Tensor, reference_logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example mean cross-entropy and mean KL(policy || reference) over completion tokens.

    Logits at position t predict token t+1, so logits drop their last position and the targets and
    the mask drop their first: the mask selects the logits that predict completion tokens.
    """
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    reference_log_probs = F.log_softmax(reference_logits[:, :-1].float(), dim=-1)
    targets = input_ids[:, 1:]
    mask = completion_mask[:, 1:].float()
    token_ce = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    token_kl = (log_probs.exp() * (log_probs - reference_log_probs)).sum(-1)
    tokens = mask.sum(-1).clamp(min=1)
    return (token_ce * mask).sum(-1) / tokens, (token_kl * mask).sum(-1) / tokens


class SuperHFTrainer:
    """Runs superbatches: :meth:`generate`, :meth:`score`, :func:`select_top_k`, :meth:`finetune`."""

    def __init__(
        self,
        config: SuperHFConfig,
        kl_coef: float,
        policy: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        reward_scorer: RewardScorer,
        heldout_scorer: RewardScorer | None,
        device: torch.device,
        precision: str,
    ) -> None:
        self.config = config
        self.kl_coef = kl_coef
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

    def _prepare_policy(self, policy: PreTrainedModel) -> tuple[PreTrainedModel, PreTrainedModel | None]:
        if not self.config.lora.enabled:
            return policy, copy.deepcopy(policy).eval().requires_grad_(False)
        from peft import get_peft_model

        return get_peft_model(policy, self.config.lora.to_peft()), None

    def _reference_logits(self, **inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(self.device, self.precision):
            if self.frozen_reference is not None:
                return self.frozen_reference(**inputs).logits
            with self.policy.disable_adapter():
                return self.policy(**inputs).logits

    @torch.no_grad()
    def generate(self, prompts: list[str]) -> list[Completion]:
        """``superbatch_size`` sampled completions per prompt, cut where the model starts a new turn."""
        cfg = self.config
        jobs = [(index, prompt) for index, prompt in enumerate(prompts) for _ in range(cfg.superbatch_size)]
        self.policy.eval()
        completions = []
        for start in range(0, len(jobs), cfg.minibatch_size_generating):
            batch = jobs[start : start + cfg.minibatch_size_generating]
            encoded = self.tokenizer(
                [with_conversation_prompt(cfg.conversation_prompt, prompt) for _, prompt in batch],
                return_tensors="pt", padding=True,
            ).to(self.device)
            with autocast(self.device, self.precision):
                output = self.policy.generate(
                    **encoded, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                    top_k=cfg.generation_top_k, repetition_penalty=cfg.repetition_penalty,
                    no_repeat_ngram_size=cfg.no_repeat_ngram_size, max_new_tokens=cfg.max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                )
            new_tokens = output[:, encoded["input_ids"].shape[1] :].tolist()
            for (prompt_index, prompt), tokens in zip(batch, new_tokens):
                completions.append(self._decode(prompt_index, prompt, tokens))
        return completions

    def _decode(self, prompt_index: int, prompt: str, tokens: list[int]) -> Completion:
        text, num_tokens, finished = decode_completion(self.tokenizer, tokens)
        return Completion(prompt, prompt_index, text, num_tokens=num_tokens, finished=finished)

    def score(self, completions: list[Completion]) -> None:
        """Reward (and held-out reward) of prompt+completion, each scorer using its own tokenizer."""
        score_completions(completions, self.reward_scorer, self.heldout_scorer)

    def training_example(self, completion: Completion) -> tuple[list[int], list[int]]:
        context = with_conversation_prompt(self.config.conversation_prompt, completion.prompt)
        prompt_ids = self.tokenizer(context).input_ids
        completion_ids = self.tokenizer(completion.text, add_special_tokens=False).input_ids
        if completion.finished:
            completion_ids.append(self.tokenizer.eos_token_id)
        return prompt_ids, completion_ids

    def finetune(self, kept: list[Completion]) -> dict[str, float]:
        """One optimizer step per minibatch of kept completions; non-finite losses are skipped and counted."""
        self.policy.train()
        sums = {"loss/total": 0.0, "loss/ce": 0.0, "kl": 0.0}
        steps = 0
        size = self.config.minibatch_size_finetuning
        for start in range(0, len(kept), size):
            prompt_ids, completion_ids = zip(*(self.training_example(c) for c in kept[start : start + size]))
            input_ids, attention_mask, completion_mask = (
                t.to(self.device)
                for t in pad_examples(list(prompt_ids), list(completion_ids), self.tokenizer.pad_token_id, "right")
            )
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
                      "position_ids": position_ids_for(attention_mask)}
            reference_logits = self._reference_logits(**inputs)
            with autocast(self.device, self.precision):
                logits = self.policy(**inputs).logits
            ce, kl = completion_ce_and_kl(logits, reference_logits, input_ids, completion_mask)
            loss = ce.mean() + self.kl_coef * kl.mean()
            self.optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                self._skip_nonfinite_loss()
                continue
            self.grad_scaler.scale(loss).backward()
            if self.config.max_grad_norm is not None:
                self.grad_scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
            for name, value in (("loss/total", loss), ("loss/ce", ce.mean()), ("kl", kl.mean())):
                sums[name] += value.item()
            steps += 1
        means = {name: total / steps if steps else math.nan for name, total in sums.items()}
        means["loss/kl_penalty"] = self.kl_coef * means["kl"]
        return means

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
        kept_indices = select_top_k(completions, self.config.top_k, self.config.length_penalty)
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
    reward_scorer, heldout_scorer = build_scorers(run, context.device, cfg.minibatch_size_scoring)
    trainer = SuperHFTrainer(cfg, run.kl_coef, policy, tokenizer, reward_scorer, heldout_scorer, context.device, run.precision)
    return trainer, stream


@register_algorithm("superhf", SuperHFConfig, METRIC_NAMES)
def train_superhf(context: RunContext) -> None:
    """Run every superbatch and log its metrics and sample completions to the tracker."""
    cfg: SuperHFConfig = context.algorithm
    trainer, stream = build_trainer(context)
    progress = tqdm(range(cfg.num_superbatches), desc="SuperHF superbatches", unit="superbatch")
    for step in progress:
        metrics, completions, kept_indices = trainer.step(stream.take(cfg.prompt_accumulation_steps))
        metrics["progress/prompts_seen"] = stream.position
        metrics["progress/completions_generated"] = (step + 1) * cfg.prompt_accumulation_steps * cfg.superbatch_size
        context.tracker.log_metrics(metrics, step=step)
        context.tracker.log_completions(
            completion_rows(step, completions, kept_indices, context.config.mlflow.completions_logged_per_superbatch)
        )
        progress.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['kl']:.4f}")
