"""Sampled completions and the statistics every algorithm logs about them, under the same names."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from superhf_lab.metrics import distinct_n, meteor_similarity


@dataclass
class Completion:
    """One sampled completion and what was learned about it."""

    prompt: str
    prompt_index: int
    text: str
    num_tokens: int
    finished: bool  # ended by EOS or by the start of a next turn, not by the token limit
    reward: float = math.nan
    heldout_reward: float = math.nan


def score_completions(completions: list[Completion], scorer, heldout_scorer=None) -> None:
    """Fill in each completion's reward (and held-out reward) for its prompt, in place."""
    prompts = [c.prompt for c in completions]
    texts = [c.text for c in completions]
    for completion, reward in zip(completions, scorer.score(prompts, texts), strict=True):
        completion.reward = reward
    if heldout_scorer is not None:
        for completion, reward in zip(completions, heldout_scorer.score(prompts, texts), strict=True):
            completion.heldout_reward = reward


def completion_metrics(completions: list[Completion]) -> dict[str, float]:
    """Reward, held-out reward (when scored), diversity and length statistics of one step's completions."""
    rewards = np.array([c.reward for c in completions])
    heldout = np.array([c.heldout_reward for c in completions])
    texts = [c.text for c in completions]
    nonempty = [t for t in texts if t.strip()]
    metrics = {
        "reward/mean": rewards.mean(),
        "reward/std": rewards.std(),
        "diversity/meteor_similarity": meteor_similarity(nonempty),
        "diversity/distinct_1": distinct_n(nonempty, 1),
        "diversity/distinct_2": distinct_n(nonempty, 2),
        "completion/length_tokens_mean": float(np.mean([c.num_tokens for c in completions])),
        "completion/empty_fraction": 1 - len(nonempty) / len(texts),
        "completion/truncated_fraction": float(np.mean([not c.finished for c in completions])),
    }
    if not np.isnan(heldout).all():  # a held-out reward model is configured
        metrics["heldout_reward/mean"] = heldout.mean()
        metrics["heldout_reward/std"] = heldout.std()
    return metrics


def completion_rows(step: int, completions: list[Completion], kept_indices: list[int], limit: int) -> list[dict]:
    """Sample rows for the run's completions table: the first ``limit`` completions of the step."""
    kept = set(kept_indices)
    return [
        {"step": step, "prompt": c.prompt, "completion": c.text, "reward": c.reward,
         "heldout_reward": c.heldout_reward, "kept": i in kept}
        for i, c in enumerate(completions[:limit])
    ]
