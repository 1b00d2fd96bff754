"""Diversity metrics for completions: METEOR similarity (the paper's mode-collapse signal) and distinct-n.

One definition of METEOR similarity everywhere: a pair of completions is compared on whitespace tokens,
scored in both directions (METEOR is asymmetric) and the two scores averaged. ``meteor_similarity`` pairs
completions to *different* prompts (what the paper's evaluation measures), ``..._within_prompt`` pairs
completions to the same prompt (only algorithms that sample several per prompt have any).
"""

from __future__ import annotations

import math
import random
from itertools import combinations

import numpy as np

from superhf_lab.metrics.meteor import MeteorTexts


def symmetric_meteor(texts: list[str], pairs: list[tuple[int, int]]) -> list[float]:
    """For each pair (i, j): (METEOR(reference i, hypothesis j) + METEOR(reference j, hypothesis i)) / 2.

    Each METEOR equals nltk's ``meteor_score([reference.split()], hypothesis.split())`` exactly; it is computed by
    :class:`superhf_lab.metrics.meteor.MeteorTexts`, which stems and looks up synonyms once per text, not per pair.
    """
    scorer = MeteorTexts(texts)
    return [(scorer.score(i, j) + scorer.score(j, i)) / 2 for i, j in pairs]


def pairs_between_prompts(prompts: list[str]) -> list[tuple[int, int]]:
    """Index pairs (i < j) of completions whose prompts differ."""
    return [(i, j) for i, j in combinations(range(len(prompts)), 2) if prompts[i] != prompts[j]]


def pairs_within_prompts(prompts: list[str]) -> list[tuple[int, int]]:
    """Index pairs (i < j) of completions to the same prompt, in index order."""
    groups: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(index)
    return sorted(pair for group in groups.values() for pair in combinations(group, 2))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def meteor_similarity(texts: list[str], prompts: list[str]) -> float:
    """Mean symmetric METEOR over every pair of completions to different prompts; NaN when there is none.

    ``prompts[i]`` is the prompt ``texts[i]`` answers. 1.0 means identical answers to different questions:
    mode collapse.
    """
    return _mean(symmetric_meteor(texts, pairs_between_prompts(prompts)))


def meteor_similarity_within_prompt(texts: list[str], prompts: list[str]) -> float:
    """Mean symmetric METEOR over every pair of completions to the same prompt; NaN when there is none."""
    return _mean(symmetric_meteor(texts, pairs_within_prompts(prompts)))


def meteor_pair_scores(texts: list[str], prompts: list[str], num_pairs: int, seed: int) -> list[float]:
    """Symmetric METEOR of ``num_pairs`` seeded random pairs of completions to different prompts.

    The evaluation's estimate of :func:`meteor_similarity` (test sets are too large for every pair); with
    fewer such pairs than ``num_pairs``, every pair is used.
    """
    every_pair = pairs_between_prompts(prompts)
    pairs = every_pair if len(every_pair) <= num_pairs else random.Random(seed).sample(every_pair, num_pairs)
    return symmetric_meteor(texts, pairs)


def distinct_n(completions: list[str], n: int) -> float:
    """Unique n-grams over all n-grams in the completions (whitespace tokens); NaN when there are none."""
    ngrams = [
        tuple(tokens[i : i + n])
        for tokens in (completion.split() for completion in completions)
        for i in range(len(tokens) - n + 1)
    ]
    return len(set(ngrams)) / len(ngrams) if ngrams else float("nan")
