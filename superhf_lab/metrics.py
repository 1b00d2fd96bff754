"""Diversity metrics for completions: METEOR similarity (the paper's mode-collapse signal) and distinct-n."""

from __future__ import annotations

import math
import random
from itertools import combinations, permutations

import numpy as np

_wordnet_ready = False


def _meteor(reference: list[str], hypothesis: list[str]) -> float:
    global _wordnet_ready
    if not _wordnet_ready:
        from superhf_lab.wordnet import ensure_wordnet

        ensure_wordnet()
        _wordnet_ready = True
    from nltk.translate.meteor_score import meteor_score

    return meteor_score([reference], hypothesis)


def meteor_similarity(completions: list[str]) -> float:
    """Mean METEOR score over all ordered pairs of completions, on whitespace tokens.

    This is the SuperHF reference's ``_calculate_meteor_similarity``: METEOR is asymmetric, so both
    directions of every pair count. 1.0 means identical texts (mode collapse); NaN for fewer than 2.
    """
    if len(completions) < 2:
        return float("nan")
    tokenized = [completion.split() for completion in completions]
    return float(np.mean([_meteor(reference, hypothesis) for reference, hypothesis in permutations(tokenized, 2)]))


def meteor_pair_scores(completions: list[str], num_pairs: int, seed: int) -> list[float]:
    """METEOR similarity of ``num_pairs`` seeded random pairs of completions, each scored both ways and averaged.

    The paper's measure of mode collapse at evaluation time (whitespace tokens, prompts removed); with
    fewer possible pairs than ``num_pairs`` every pair is used.
    """
    tokenized = [completion.split() for completion in completions]
    every_pair = list(combinations(range(len(tokenized)), 2))
    pairs = every_pair if len(every_pair) <= num_pairs else random.Random(seed).sample(every_pair, num_pairs)
    return [(_meteor(tokenized[i], tokenized[j]) + _meteor(tokenized[j], tokenized[i])) / 2 for i, j in pairs]


def mean_and_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% interval (normal approximation, 1.96 standard errors)."""
    if not values:
        return float("nan"), float("nan")
    array = np.asarray(values, dtype=float)
    half_width = 1.96 * array.std(ddof=1) / math.sqrt(len(array)) if len(array) > 1 else float("nan")
    return float(array.mean()), float(half_width)


def distinct_n(completions: list[str], n: int) -> float:
    """Unique n-grams over all n-grams in the completions (whitespace tokens); NaN when there are none."""
    ngrams = [
        tuple(tokens[i : i + n])
        for tokens in (completion.split() for completion in completions)
        for i in range(len(tokens) - n + 1)
    ]
    return len(set(ngrams)) / len(ngrams) if ngrams else float("nan")
