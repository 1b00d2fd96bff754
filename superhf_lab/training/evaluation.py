"""Held-out evaluation of a policy, the way the paper judges one: on test prompts, per prompt source.

Training reward alone hides reward hacking, so a policy is sampled once per test prompt and judged by
the training reward model, a held-out reward model (the gold reward in the tiny world), METEOR
similarity between completions to different prompts (mode collapse), and KL to the starting policy.
Metrics are logged as ``eval/<source>/<name>`` and ``eval/all/<name>``:

- ``reward/mean``, ``heldout_reward/mean``
- ``diversity/meteor_similarity`` and ``diversity/meteor_similarity_ci95`` (half-width of the 95% interval),
  over ``eval.meteor_pairs_per_source`` seeded pairs of completions to different prompts per source
  (``all`` pools every source's pairs)
- ``kl``: exact KL(policy || start) per completion token, averaged; ``kl_sequence``: summed over the
  completion's tokens, averaged. Best-of-N has no per-token distribution and logs the upper bound
  ``log N - (N-1)/N`` on its sequence KL as ``kl_sequence_bound`` instead.
- ``completion/length_tokens_mean``, ``prompts``

Which test prompts and METEOR pairs are drawn depends on ``eval.seed`` alone, so every run, whatever its
training seed, is judged on the same prompts.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from superhf_lab.config.schema import RunConfig
from superhf_lab.core.faults import reach
from superhf_lab.metrics.diversity import meteor_pair_scores
from superhf_lab.metrics.names import OVERALL, eval_metric
from superhf_lab.metrics.overoptimisation import FIT_NAMES, PATH_NAMES, PEAK_NAMES, path_fit, path_point
from superhf_lab.metrics.statistics import mean_and_ci95
from superhf_lab.runtime.distributed import ONE_PROCESS, Processes
from superhf_lab.tracking.tracker import Tracker
from superhf_lab.training.completions import Completion, score_completions
from superhf_lab.training.data import PromptSet, load_prompts
from superhf_lab.training.models import autocast
from superhf_lab.training.policies import StartingPolicy
from superhf_lab.training.rewards import RewardScorer
from superhf_lab.training.sampling import sample_completions
from superhf_lab.training.sequences import KL_ESTIMATE_NAMES, completion_batch, loss_terms

EVAL_METRIC_NAMES = (
    "reward/mean",
    "heldout_reward/mean",
    "diversity/meteor_similarity",
    "diversity/meteor_similarity_ci95",
    "kl",
    "kl_sequence",
    "completion/length_tokens_mean",
    "prompts",
)
# What a training run evaluating every eval.every_n_steps logs besides: its over-optimisation path and its fit.
TRACE_METRIC_NAMES = (*PATH_NAMES, *FIT_NAMES, *PEAK_NAMES)
BOUND_METRIC_NAMES = ("kl_sequence_bound",)  # in place of kl and kl_sequence, for policies known only by a bound
# The overall evaluation numbers that algorithms without training steps (best-of-N, evaluate) also log under
# the training names at step 0, to overlay with training charts.
SHARED_NAMES = ("reward/mean", "heldout_reward/mean", "diversity/meteor_similarity", "completion/length_tokens_mean")


def evaluation_metric_names(kl_names: tuple[str, ...] = ("kl", "kl_sequence")) -> tuple[str, ...]:
    """The overall ``eval/all/*`` names an evaluation logs (per-source names depend on the data mix)."""
    return tuple(eval_metric(name) for name in EVAL_METRIC_NAMES if name not in ("kl", "kl_sequence")) + tuple(
        eval_metric(name) for name in kl_names
    )


def shared_view(metrics: dict[str, float]) -> dict[str, float]:
    """The overall evaluation numbers under the training names (see ``SHARED_NAMES``)."""
    return {name: metrics[eval_metric(name)] for name in SHARED_NAMES if eval_metric(name) in metrics}


def evaluation_prompts(config: RunConfig) -> PromptSet:
    """A seeded sample of ``eval.prompts_per_source`` test prompts from each source of the data mix."""
    test = load_prompts(config.data, "test", config.eval.seed)
    wanted = config.eval.prompts_per_source
    rng = random.Random(config.eval.seed)
    chosen: list[int] = []
    for source in dict.fromkeys(test.sources):
        indices = [i for i, name in enumerate(test.sources) if name == source]
        chosen += sorted(rng.sample(indices, wanted)) if wanted is not None and wanted < len(indices) else indices
    chosen.sort()
    sources = [test.sources[i] for i in chosen]
    return PromptSet([test.prompts[i] for i in chosen], sources, {s: sources.count(s) for s in test.counts})


@dataclass
class CompletionKL:
    """KL(policy || starting policy) on each completion: exact per completion token (mean) and over its tokens (sum),
    and Schulman's k1, k2 and k3 estimates from its sampled tokens (token means, one list per estimator)."""

    per_token: list[float]
    per_sequence: list[float]
    estimates: dict[str, list[float]]

    @classmethod
    def joined(cls, parts: list[CompletionKL]) -> CompletionKL:
        """The completions of every part, in order."""
        return cls(
            [value for part in parts for value in part.per_token],
            [value for part in parts for value in part.per_sequence],
            {name: [value for part in parts for value in part.estimates[name]] for name in KL_ESTIMATE_NAMES},
        )

    def means(self) -> dict[str, float]:
        """``kl`` and ``kl_estimate/k1`` .. ``k3``, averaged over the completions: the same tokens for each."""
        return {"kl": float(np.mean(self.per_token)), **{n: float(np.mean(v)) for n, v in self.estimates.items()}}

    def gathered(self, processes: Processes, real: int | None = None) -> CompletionKL:
        """Every process's values (the first ``real`` of each: the rest is padding of an even share)."""
        return CompletionKL(
            processes.gather(self.per_token[:real]),
            processes.gather(self.per_sequence[:real]),
            {name: processes.gather(values[:real]) for name, values in self.estimates.items()},
        )


@torch.no_grad()
def completion_kl(
    tokenizer: PreTrainedTokenizerBase,
    policy: PreTrainedModel,
    starting: StartingPolicy,
    completions: list[Completion],
    conversation_prompt: str,
    batch_size: int,
    device: torch.device,
    precision: str,
) -> CompletionKL:
    """Exact KL(policy || starting policy) on each completion, with Schulman's estimates on the same tokens."""
    was_training = policy.training
    policy.eval()
    measured = CompletionKL([], [], {name: [] for name in KL_ESTIMATE_NAMES})
    for start in range(0, len(completions), batch_size):
        inputs, completion_mask = completion_batch(
            tokenizer, conversation_prompt, completions[start : start + batch_size], device
        )
        with autocast(device, precision):
            logits = policy(**inputs).logits
        reference = starting.logits(device, precision, **inputs)
        terms = loss_terms(logits, reference, inputs["input_ids"], completion_mask)
        measured.per_token += terms.kl.tolist()
        measured.per_sequence += (terms.kl * terms.tokens.clamp(min=1)).tolist()
        for name, column in zip(KL_ESTIMATE_NAMES, terms.estimates.T.tolist(), strict=True):
            measured.estimates[name] += column
    policy.train(was_training)
    return measured


def evaluation_metrics(
    completions: list[Completion],
    sources: list[str],
    kl: dict[str, list[float]],
    meteor_pairs: int,
    seed: int,
) -> dict[str, float]:
    """Per-source and overall metrics of one completion per test prompt (``sources[i]`` is prompt i's source).

    ``kl`` maps KL metric names (``kl`` and ``kl_sequence``, or ``kl_sequence_bound``) to a value per completion.
    """
    metrics: dict[str, float] = {}
    pooled_meteor: list[float] = []
    scopes = {source: [i for i, s in enumerate(sources) if s == source] for source in dict.fromkeys(sources)}
    for scope, indices in [*scopes.items(), (OVERALL, list(range(len(sources))))]:
        chosen = [completions[i] for i in indices]
        if scope == OVERALL:
            meteor = pooled_meteor
        else:
            nonempty = [c for c in chosen if c.text.strip()]
            meteor = meteor_pair_scores([c.text for c in nonempty], [c.prompt for c in nonempty], meteor_pairs, seed)
            pooled_meteor += meteor
        meteor_mean, meteor_ci = mean_and_ci95(meteor)
        values = {
            "reward/mean": np.mean([c.reward for c in chosen]),
            "diversity/meteor_similarity": meteor_mean,
            "diversity/meteor_similarity_ci95": meteor_ci,
            **{name: np.mean([values[i] for i in indices]) for name, values in kl.items()},
            "completion/length_tokens_mean": np.mean([c.num_tokens for c in chosen]),
            "prompts": len(indices),
        }
        heldout = [c.heldout_reward for c in chosen]
        if not all(math.isnan(value) for value in heldout):
            values["heldout_reward/mean"] = np.mean(heldout)
        metrics.update({eval_metric(name, scope): float(value) for name, value in values.items()})
    return metrics


def completion_table(
    step: int, completions: list[Completion], sources: list[str], kl: dict[str, list[float]]
) -> pd.DataFrame:
    """One row per test prompt: its completion, rewards and per-completion KL values."""
    return pd.DataFrame(
        [
            {
                "step": step,
                "source": source,
                "prompt": c.prompt,
                "completion": c.text,
                "reward": c.reward,
                "heldout_reward": c.heldout_reward,
                **{name: values[i] for name, values in kl.items()},
                "num_tokens": c.num_tokens,
            }
            for i, (c, source) in enumerate(zip(completions, sources, strict=True))
        ]
    )


class PolicyEvaluator:
    """Samples, scores and measures a policy on the run's evaluation prompts; logs under ``eval/``."""

    def __init__(
        self,
        config: RunConfig,
        tokenizer: PreTrainedTokenizerBase,
        reward_scorer: RewardScorer,
        heldout_scorer: RewardScorer | None,
        device: torch.device,
        processes: Processes = ONE_PROCESS,
    ) -> None:
        self.config = config
        self.processes = processes
        self.tokenizer = tokenizer
        self.reward_scorer = reward_scorer
        self.heldout_scorer = heldout_scorer
        self.device = device
        self.prompts = evaluation_prompts(config)

    def evaluate(
        self,
        policy: PreTrainedModel,
        starting: StartingPolicy | None,
        tracker: Tracker,
        step: int,
        path_step: int | None = None,
    ) -> dict[str, float]:
        """One completion per prompt, logged at ``step``; ``starting`` None means the policy is the starting policy
        (KL 0). A training run also gives ``path_step`` (the steps trained): the over-optimisation path's point."""
        completions, kl = self.measure(policy, starting, [self.config.eval.seed, step])
        metrics = evaluation_metrics(
            completions, self.prompts.sources, kl, self.config.eval.meteor_pairs_per_source, self.config.eval.seed
        )
        tracker.log_metrics(metrics, step=step)
        log_evaluation_table(tracker, completion_table(step, completions, self.prompts.sources, kl), step)
        if path_step is not None:
            tracker.log_metrics(self.path_point(completions, kl), step=path_step)
        return metrics

    def evaluate_start(self, policy: PreTrainedModel, tracker: Tracker) -> None:
        """The over-optimisation path's first point, at step 0: ``policy`` before training (the starting policy), on
        draws of its own."""
        completions, kl = self.measure(policy, None, [self.config.eval.seed])
        tracker.log_metrics(self.path_point(completions, kl), step=0)

    def log_path_fit(self, tracker: Tracker, step: int) -> None:
        """Gao et al.'s RL form fitted to the path logged so far (a continued run's earlier points included)."""
        tracker.log_metrics(path_fit(tracker.history, "rl"), step=step)

    def path_point(self, completions: list[Completion], kl: dict[str, list[float]]) -> dict[str, float]:
        return path_point(
            float(np.mean(kl["kl_sequence"])),
            float(np.mean([c.heldout_reward for c in completions])),
            float(np.mean([c.reward for c in completions])),
        )

    def measure(
        self, policy: PreTrainedModel, starting: StartingPolicy | None, draw: list[int]
    ) -> tuple[list[Completion], dict[str, list[float]]]:
        """The completions, scored, and their KL values.

        Sampling draws from its own generator, seeded by ``draw`` (``eval.seed`` and the step) and the process: every
        policy is judged with the same draws, evaluating never moves the training's random state, and a re-run
        evaluation (a continued run) gives what the first would have. Several processes each sample, score and
        measure their share of the prompts, then join the results.
        """
        run, settings, processes = self.config, self.config.eval.sampling, self.processes
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(int(np.random.SeedSequence([*draw, processes.rank]).generate_state(1)[0]))
            completions = sample_completions(
                policy,
                self.tokenizer,
                self.prompts.prompts,
                1,
                settings,
                run.eval.batch_size,
                self.device,
                run.precision,
                run.eval.cut,
                progress="evaluation",
                processes=processes,
            )
        score_completions(completions, run.eval.reward_input, self.reward_scorer, self.heldout_scorer)
        reach("evaluation")
        completions = processes.gather(completions)
        if starting is None:
            return completions, {"kl": [0.0] * len(completions), "kl_sequence": [0.0] * len(completions)}
        share, real = processes.even_share(completions)
        measured = completion_kl(
            self.tokenizer,
            policy,
            starting,
            share,
            settings.conversation_prompt,
            run.eval.batch_size,
            self.device,
            run.precision,
        )
        measured = measured.gathered(processes, real)
        return completions, {"kl": measured.per_token, "kl_sequence": measured.per_sequence}


def log_evaluation_table(tracker, table: pd.DataFrame, step: int) -> None:
    tracker.log_table(table, artifact_file=f"eval/completions_step_{step}.json")
