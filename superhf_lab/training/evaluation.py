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

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from superhf_lab.config.schema import RunConfig
from superhf_lab.core.faults import reach
from superhf_lab.metrics.diversity import meteor_pair_scores
from superhf_lab.metrics.names import OVERALL, eval_metric
from superhf_lab.metrics.statistics import mean_and_ci95
from superhf_lab.runtime.distributed import ONE_PROCESS, Processes
from superhf_lab.tracking.tracker import Tracker
from superhf_lab.training.completions import Completion, score_completions
from superhf_lab.training.data import PromptSet, load_prompts
from superhf_lab.training.models import autocast
from superhf_lab.training.policies import StartingPolicy
from superhf_lab.training.rewards import RewardScorer
from superhf_lab.training.sampling import sample_completions
from superhf_lab.training.sequences import completion_batch, completion_ce_and_kl

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
) -> tuple[list[float], list[float]]:
    """Exact KL(policy || starting policy) on each completion: (mean per completion token, sum over its tokens)."""
    was_training = policy.training
    policy.eval()
    per_token, per_sequence = [], []
    for start in range(0, len(completions), batch_size):
        inputs, completion_mask = completion_batch(
            tokenizer, conversation_prompt, completions[start : start + batch_size], device
        )
        with autocast(device, precision):
            logits = policy(**inputs).logits
        reference = starting.logits(device, precision, **inputs)
        _, kl = completion_ce_and_kl(logits, reference, inputs["input_ids"], completion_mask)
        tokens = completion_mask[:, 1:].sum(-1).clamp(min=1)
        per_token += kl.tolist()
        per_sequence += (kl * tokens).tolist()
    policy.train(was_training)
    return per_token, per_sequence


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
        self, policy: PreTrainedModel, starting: StartingPolicy | None, tracker: Tracker, step: int
    ) -> dict[str, float]:
        """One completion per prompt; ``starting`` None means the policy is the starting policy (KL 0).

        Sampling draws from its own generator, seeded by ``eval.seed`` and the step: every policy is judged with the
        same draws, evaluating never moves the training's random state, and a re-run evaluation (a continued run)
        gives what the first would have. Several processes each sample, score and measure their share of the prompts,
        then join the results.
        """
        run, settings, processes = self.config, self.config.eval.sampling, self.processes
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(int(np.random.SeedSequence([run.eval.seed, step, processes.rank]).generate_state(1)[0]))
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
            kl = {"kl": [0.0] * len(completions), "kl_sequence": [0.0] * len(completions)}
        else:
            share, real = processes.even_share(completions)
            kl_token, kl_sequence = completion_kl(
                self.tokenizer,
                policy,
                starting,
                share,
                settings.conversation_prompt,
                run.eval.batch_size,
                self.device,
                run.precision,
            )
            kl = {"kl": processes.gather(kl_token[:real]), "kl_sequence": processes.gather(kl_sequence[:real])}
        metrics = evaluation_metrics(
            completions, self.prompts.sources, kl, run.eval.meteor_pairs_per_source, run.eval.seed
        )
        tracker.log_metrics(metrics, step=step)
        log_evaluation_table(tracker, completion_table(step, completions, self.prompts.sources, kl), step)
        return metrics


def log_evaluation_table(tracker, table: pd.DataFrame, step: int) -> None:
    tracker.log_table(table, artifact_file=f"eval/completions_step_{step}.json")
