"""Diversity metrics for completions: METEOR similarity (the paper's mode-collapse signal) and distinct-n."""

from __future__ import annotations

from itertools import permutations

import numpy as np

_wordnet_ready = False


def meteor_similarity(completions: list[str]) -> float:
    """Mean METEOR score over all ordered pairs of completions, on whitespace tokens.

    This is the SuperHF reference's ``_calculate_meteor_similarity``: METEOR is asymmetric, so both
    directions of every pair count. 1.0 means identical texts (mode collapse); NaN for fewer than 2.
    """
    global _wordnet_ready
    if len(completions) < 2:
        return float("nan")
    if not _wordnet_ready:
        from superhf_lab.wordnet import ensure_wordnet

        ensure_wordnet()
        _wordnet_ready = True
    from nltk.translate.meteor_score import meteor_score

    tokenized = [completion.split() for completion in completions]
    scores = [meteor_score([reference], hypothesis) for reference, hypothesis in permutations(tokenized, 2)]
    return float(np.mean(scores))


def distinct_n(completions: list[str], n: int) -> float:
    """Unique n-grams over all n-grams in the completions (whitespace tokens); NaN when there are none."""
    ngrams = [
        tuple(tokens[i : i + n])
        for tokens in (completion.split() for completion in completions)
        for i in range(len(tokens) - n + 1)
    ]
    return len(set(ngrams)) / len(ngrams) if ngrams else float("nan")
