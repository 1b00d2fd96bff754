"""Sampled completions and the statistics every algorithm logs about them, under the same names."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from superhf_lab.core.faults import reach
from superhf_lab.metrics.diversity import distinct_n, meteor_similarity, meteor_similarity_within_prompt


@dataclass
class Completion:
    """One sampled completion and what was learned about it."""

    prompt: str
    prompt_index: int
    text: str
    num_tokens: int  # the text's length in policy tokens
    finished: bool  # ended by EOS or by the start of a next turn, not by the token limit
    reward: float = math.nan
    heldout_reward: float = math.nan
    generated_tokens: int = 0  # what generation spent on it: tokens up to EOS, the stop at a next turn or the limit


# What completion_metrics logs (a METEOR similarity only where it has pairs to measure), for plugins' names.
COMPLETION_METRIC_NAMES = (
    "reward/mean",
    "reward/std",
    "heldout_reward/mean",
    "heldout_reward/std",
    "diversity/meteor_similarity",
    "diversity/meteor_similarity_within_prompt",
    "diversity/distinct_1",
    "diversity/distinct_2",
    "completion/length_tokens_mean",
    "completion/empty_fraction",
    "completion/truncated_fraction",
)
PROGRESS_METRIC_NAMES = ("progress/prompts_seen", "progress/completions_generated")


def score_completions(completions: list[Completion], reward_input: str, scorer, heldout_scorer=None) -> None:
    """Fill in each completion's reward (and held-out reward) for its prompt, in place.

    ``reward_input`` is the template of what a reward model reads (``text.reward_input``).
    """
    reach("scoring")
    prompts = [c.prompt for c in completions]
    texts = [c.text for c in completions]
    for completion, reward in zip(completions, scorer.score(prompts, texts, reward_input), strict=True):
        completion.reward = reward
    if heldout_scorer is not None:
        for completion, reward in zip(completions, heldout_scorer.score(prompts, texts, reward_input), strict=True):
            completion.heldout_reward = reward


def completion_metrics(completions: list[Completion]) -> dict[str, float]:
    """Reward, held-out reward (when scored), diversity and length statistics of one step's completions."""
    return {**reward_and_length_metrics(completions), **diversity_metrics(completions)}


def reward_and_length_metrics(completions: list[Completion]) -> dict[str, float]:
    """The cheap statistics: rewards (held-out ones when scored), lengths, empty and truncated shares."""
    rewards = np.array([c.reward for c in completions])
    heldout = np.array([c.heldout_reward for c in completions])
    metrics = {
        "reward/mean": rewards.mean(),
        "reward/std": rewards.std(),
        "completion/length_tokens_mean": float(np.mean([c.num_tokens for c in completions])),
        "completion/empty_fraction": float(np.mean([not c.text.strip() for c in completions])),
        "completion/truncated_fraction": float(np.mean([not c.finished for c in completions])),
    }
    if not np.isnan(heldout).all():  # a held-out reward model is configured
        metrics["heldout_reward/mean"] = heldout.mean()
        metrics["heldout_reward/std"] = heldout.std()
    return metrics


def diversity_metrics(completions: list[Completion]) -> dict[str, float]:
    """METEOR similarity and distinct-n of the non-empty completions: nothing the next step needs, so a trainer
    may compute them off its critical path. A METEOR similarity with no pair to measure (one prompt in the step;
    one completion per prompt for the within-prompt one) is left out, not logged as NaN."""
    nonempty = [c for c in completions if c.text.strip()]
    texts, prompts = [c.text for c in nonempty], [c.prompt for c in nonempty]
    metrics = {
        "diversity/meteor_similarity": meteor_similarity(texts, prompts),
        "diversity/meteor_similarity_within_prompt": meteor_similarity_within_prompt(texts, prompts),
        "diversity/distinct_1": distinct_n(texts, 1),
        "diversity/distinct_2": distinct_n(texts, 2),
    }
    return {
        name: value
        for name, value in metrics.items()
        if not name.startswith("diversity/meteor") or not math.isnan(value)
    }


def completion_rows(step: int, completions: list[Completion], kept_indices: list[int], limit: int) -> list[dict]:
    """Sample rows for the run's completions table: the first ``limit`` completions of the step."""
    kept = set(kept_indices)
    return [
        {
            "step": step,
            "prompt": c.prompt,
            "completion": c.text,
            "reward": c.reward,
            "heldout_reward": c.heldout_reward,
            "kept": i in kept,
        }
        for i, c in enumerate(completions[:limit])
    ]
