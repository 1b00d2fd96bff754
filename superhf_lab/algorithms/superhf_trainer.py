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

import logging
import math
import time

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from superhf_lab.algorithms.registry import register_algorithm
from superhf_lab.algorithms.step_loop import StepLoop, train_and_save_policy
from superhf_lab.algorithms.superhf_config import SuperHFConfig
from superhf_lab.config.schema import TextConfig
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
    LossTerms,
    completion_batch,
    completion_token_ids,
    loss_terms,
)

log = logging.getLogger(__name__)

LOSS_METRIC_NAMES = ("loss/total", "loss/ce", "loss/kl_penalty", "kl", *KL_ESTIMATE_NAMES)
METRIC_NAMES = (
    *COMPLETION_METRIC_NAMES,
    "reward/kept_mean",
    "reward/kept_std",
    "heldout_reward/kept_mean",
    *LOSS_METRIC_NAMES,
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


def selection_score(completion: Completion, length_penalty: float, form: str) -> float:
    """The reward that ranks a completion for top-K: minus ``length_penalty`` x its stripped length in characters
    (``linear``) or x the log of that length (``log``, the reference trainer's form)."""
    if length_penalty == 0:
        return completion.reward
    characters = len(completion.text.strip())
    return completion.reward - length_penalty * (math.log(characters) if form == "log" else characters)


def select_top_k(
    completions: list[Completion], top_k: int, length_penalty: float = 0.0, length_penalty_form: str = "linear"
) -> list[int]:
    """Indices of the ``top_k`` highest-scoring non-empty completions of each prompt."""
    by_prompt: dict[int, list[int]] = {}
    for index, completion in enumerate(completions):
        if completion.text.strip():
            by_prompt.setdefault(completion.prompt_index, []).append(index)
    kept = []
    for indices in by_prompt.values():
        ranked = sorted(
            indices, key=lambda i: selection_score(completions[i], length_penalty, length_penalty_form), reverse=True
        )
        kept.extend(ranked[:top_k])
    return sorted(kept)


def minibatch_loss(
    terms: LossTerms, kl_coef: float, reduction: str, minibatch_size: int, minibatch_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE term, KL term) of a minibatch's loss contributed by the completions in ``terms`` (all of the
    minibatch, or one micro-batch of it: contributions add up to the minibatch's loss).

    ``mean``: mean over completions of per-token CE + ``kl_coef`` x per-token KL. ``reference``: CE averaged
    over all the minibatch's completion tokens, plus ``kl_coef`` x the sum over completions of KL clamped at 0.
    """
    if reduction == "reference":
        return terms.ce_sum.sum() / minibatch_tokens, kl_coef * terms.kl_loss.clamp(min=0).sum()
    ce = terms.ce_sum / terms.tokens.clamp(min=1)
    return ce.sum() / minibatch_size, kl_coef * terms.kl_loss.sum() / minibatch_size


class SuperHFTrainer(StepLoop):
    """SuperHF's trainer: owns the policy, optimizer and schedule; the superbatch loop, its checkpoints and resume
    are :class:`~superhf_lab.algorithms.step_loop.StepLoop`'s. One superbatch (:meth:`run_step`, which the benchmark
    times) is :meth:`step` (:meth:`generate`, :meth:`score`, :func:`select_top_k` and :meth:`finetune`) and its
    logging."""

    STEP = "superbatch"

    def __init__(
        self,
        config: SuperHFConfig,
        kl_coef: float,
        text: TextConfig,
        policy: PreTrainedModel,
        starting: StartingPolicy,
        tokenizer: PreTrainedTokenizerBase,
        reward_scorer: RewardScorer,
        heldout_scorer: RewardScorer | None,
        device: torch.device,
        precision: str,
        processes: Processes = ONE_PROCESS,
    ) -> None:
        self.processes = processes
        require(
            self.processes.kind != "DEEPSPEED",
            "distributed.engine",
            self.processes.kind,
            "SuperHF's trainer runs under DDP or FSDP2 (distributed=ddp or fsdp); DeepSpeed serves the "
            "TRL-based algorithms",
        )
        self.config = config
        self.kl_coef = kl_coef
        self.text = text
        self.policy = policy
        self.starting = starting
        self.tokenizer = tokenizer
        self.reward_scorer = reward_scorer
        self.heldout_scorer = heldout_scorer
        self.device = device
        self.precision = precision
        optimizer = torch.optim.AdamW(
            [p for p in policy.parameters() if p.requires_grad],
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
        )
        scheduler = get_scheduler(
            config.lr_schedule if config.lr_schedule != "constant" else "constant_with_warmup",
            optimizer,
            num_warmup_steps=config.warmup_superbatches,
            num_training_steps=config.num_superbatches,
        )
        # ``trained`` is the policy as the engine wraps it (DDP) for fine-tuning; ``policy`` stays the model that
        # generates, measures KL and is saved (FSDP shards it in place: then both are one).
        self.trained, self.optimizer, self.scheduler = self.processes.prepare(policy, optimizer, scheduler)
        self.trainable = [p for p in self.policy.parameters() if p.requires_grad]  # FSDP's, once sharded
        self.grad_scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.nonfinite_losses = 0
        max_halvings = self.out_of_memory_halvings()
        self.batch_sizes = {
            phase: HalvingBatchSize(
                f"algorithm.minibatch_size_{phase}", getattr(config, f"minibatch_size_{phase}"), max_halvings
            )
            for phase in ("generating", "scoring", "finetuning")
        }

    def generate(self, prompts: list[str], stop_at_cut: bool = True) -> list[Completion]:
        """``superbatch_size`` sampled completions per prompt (this process's share of them), cut where the model
        starts a new turn; generation stops there too unless ``stop_at_cut`` is off (the benchmark's "before")."""
        cfg = self.config
        return self.batch_sizes["generating"].run(
            lambda size: sample_completions(
                self.policy,
                self.tokenizer,
                prompts,
                cfg.superbatch_size,
                cfg.sampling,
                size,
                self.device,
                self.precision,
                self.text.cut,
                stop_at_cut=stop_at_cut,
                processes=self.processes,
            ),
            self.agree_on_oom,
        )

    def finetune(self, kept: list[Completion]) -> dict[str, float]:
        """One optimizer step per minibatch of kept completions; non-finite losses are skipped and counted.

        With several processes each computes the gradients of its share of every minibatch; they agree on out of
        memory and non-finite losses first, then sum their gradients, so every process takes the same steps.
        """
        self.policy.train()
        sums = dict.fromkeys(LOSS_METRIC_NAMES, 0.0)
        steps = 0
        size = self.config.minibatch_size_finetuning
        for start in range(0, len(kept), size):
            minibatch = kept[start : start + size]
            losses = self.batch_sizes["finetuning"].run(
                lambda micro: self._accumulate_gradients(minibatch, micro), self.agree_on_oom
            )
            if self.processes.any(losses is None):
                self.optimizer.zero_grad(set_to_none=True)
                self.skip_nonfinite_loss()
                continue
            self.processes.sum_gradients(self.trainable)
            losses = self.processes.sum(losses)
            if self.config.max_grad_norm is not None:
                self.grad_scaler.unscale_(self.optimizer)
                self.processes.clip_grad_norm(self.trainable, self.config.max_grad_norm)
            reach("finetuning")
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
            for name, value in losses.items():
                sums[name] += value
            steps += 1
        return {name: total / steps if steps else math.nan for name, total in sums.items()}

    def _accumulate_gradients(self, minibatch: list[Completion], micro_size: int) -> dict[str, float] | None:
        """Gradients of this process's share of the minibatch's loss (all of it with one process), summed over
        micro-batches of ``micro_size`` (the whole share unless memory ran out; then completions of similar length
        share a micro-batch, which changes no sum); None, with no gradients left, when the loss is not finite."""
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        totals = dict.fromkeys(LOSS_METRIC_NAMES, 0.0)
        tokens = [len(completion_token_ids(self.tokenizer, cfg.conversation_prompt, c)[1]) for c in minibatch]
        share, real = self.processes.even_share(list(zip(minibatch, tokens)))
        share = [(completion, length, index < real) for index, (completion, length) in enumerate(share)]
        if micro_size < len(share):
            share.sort(key=lambda completion_length_real: completion_length_real[1])
        for start in range(0, len(share), micro_size):
            part = [completion for completion, _, _ in share[start : start + micro_size]]
            is_real = torch.tensor([kept for _, _, kept in share[start : start + micro_size]], device=self.device)
            inputs, completion_mask = completion_batch(self.tokenizer, cfg.conversation_prompt, part, self.device)
            reference_logits = self.starting.logits(self.device, self.precision, **inputs)
            with self.processes.no_sync(self.trained):  # local until the processes agree (see finetune)
                with autocast(self.device, self.precision):
                    logits = self.trained(**inputs).logits
                terms = loss_terms(
                    logits, reference_logits, inputs["input_ids"], completion_mask, cfg.kl_direction, cfg.kl_mask
                ).only(is_real)
                ce, kl_penalty = minibatch_loss(terms, self.kl_coef, cfg.loss_reduction, len(minibatch), sum(tokens))
                loss = ce + kl_penalty
                if not self.finite(loss):
                    self.optimizer.zero_grad(set_to_none=True)
                    return None
                self.grad_scaler.scale(loss * self.processes.gradient_sum_scale).backward()
            totals["loss/total"] += loss.item()
            totals["loss/ce"] += ce.item()
            totals["loss/kl_penalty"] += kl_penalty.item()
            totals["kl"] += terms.kl.sum().item() / len(minibatch)
            for name, estimate in zip(KL_ESTIMATE_NAMES, terms.estimates.sum(0).tolist()):
                totals[name] += estimate / len(minibatch)
        return totals

    def step(self, prompts: list[str]) -> tuple[dict[str, float], list[Completion], list[int]]:
        """One superbatch; returns its metrics (but the progress and diversity metrics, which
        :meth:`run_step` adds), all completions and the indices of the kept ones."""
        started = time.perf_counter()
        completions = self.generate(prompts)
        generated = time.perf_counter()
        self.score(completions)
        completions = self.processes.gather(completions)  # every process selects from the whole superbatch
        scored = time.perf_counter()
        kept_indices = select_top_k(
            completions, self.config.top_k, self.config.length_penalty, self.config.length_penalty_form
        )
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

    def total_steps(self) -> int:
        return self.config.num_superbatches

    def run_step(
        self, step: int, stream: PromptStream, context: RunContext, bookkeeping: Bookkeeping
    ) -> tuple[dict[str, float], list[Completion], list[int]]:
        """Superbatch ``step`` as training runs it: :meth:`step` on the stream's next prompts, then, on the loop's
        path, its metrics and sample completions logged and its diversity metrics handed to ``bookkeeping`` (off
        the critical path). Returns what :meth:`step` does, the progress metrics added."""
        cfg, tracker = self.config, context.tracker
        metrics, completions, kept_indices = self.step(stream.take(cfg.prompt_accumulation_steps))
        metrics["progress/prompts_seen"] = stream.position
        metrics["progress/completions_generated"] = (step + 1) * cfg.prompt_accumulation_steps * cfg.superbatch_size
        tracker.log_metrics(metrics, step=step)
        if self.processes.is_main:  # the others log nothing
            bookkeeping.submit(step, lambda completions=completions: diversity_metrics(completions))
        tracker.log_completions(
            completion_rows(step, completions, kept_indices, context.config.mlflow.completions_logged_per_superbatch)
        )
        bookkeeping.log_ready()
        return metrics, completions, kept_indices


def superbatch_metrics(completions: list[Completion], kept_indices: list[int]) -> dict[str, float]:
    """Rewards and lengths of all completions plus the rewards of the kept ones (not the diversity metrics)."""
    rewards = np.array([c.reward for c in completions])
    kept_rewards = rewards[kept_indices] if kept_indices else np.array([math.nan])
    metrics = {
        **reward_and_length_metrics(completions),
        "reward/kept_mean": kept_rewards.mean(),
        "reward/kept_std": kept_rewards.std(),
    }
    if "heldout_reward/mean" in metrics:
        heldout = np.array([c.heldout_reward for c in completions])
        metrics["heldout_reward/kept_mean"] = heldout[kept_indices].mean() if kept_indices else math.nan
    return metrics


def build_trainer(context: RunContext) -> tuple[SuperHFTrainer, PromptStream]:
    """The trainer on the shared setup (prompts, policy with its starting policy, scorers) and its prompt stream."""
    run, cfg = context.config, context.algorithm
    setup = training_setup(context, cfg.max_new_tokens, cfg.minibatch_size_scoring, cfg.lora, cfg.conversation_prompt)
    trainer = SuperHFTrainer(
        cfg,
        run.kl_coef,
        run.text,
        setup.policy,
        setup.starting,
        setup.tokenizer,
        setup.reward_scorer,
        setup.heldout_scorer,
        context.device,
        run.precision,
        context.processes,
    )
    return trainer, PromptStream(setup.prompts.prompts, seed=run.seed, shuffle=run.data.shuffle)


@register_algorithm("superhf", SuperHFConfig, METRIC_NAMES, checkpoints=True, build=build_trainer)
def train_superhf(context: RunContext) -> None:
    """Train, evaluating on the way and at the end, then save the policy (:func:`train_and_save_policy`)."""
    train_and_save_policy(context, *build_trainer(context))
