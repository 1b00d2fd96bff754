"""Diversity metrics against nltk called directly and hand-counted n-grams."""

import math
from itertools import permutations

import pytest
from nltk.translate.meteor_score import meteor_score

from superhf_lab.metrics import distinct_n, meteor_similarity
from superhf_lab.wordnet import ensure_wordnet

COMPLETIONS = [
    "First mix flour, water and yeast, then knead the dough.",
    "Knead the dough well and let it rise for an hour.",
    "I can't help with that, but a locksmith can.",
]


def test_meteor_similarity_is_the_mean_over_ordered_pairs_of_nltk_meteor():
    ensure_wordnet()
    expected = [meteor_score([a.split()], b.split()) for a, b in permutations(COMPLETIONS, 2)]
    assert len(expected) == 6
    assert meteor_similarity(COMPLETIONS) == pytest.approx(sum(expected) / 6)


def test_meteor_similarity_is_high_for_collapsed_and_low_for_diverse_completions():
    collapsed = ["Have a wonderful day, you are amazing!"] * 4
    assert meteor_similarity(collapsed) > 0.99
    assert meteor_similarity(COMPLETIONS) < 0.5
    assert math.isnan(meteor_similarity(["alone"]))


def test_distinct_n_counts_unique_ngrams_over_all_ngrams():
    completions = ["a b a b", "a b c"]
    assert distinct_n(completions, 1) == pytest.approx(3 / 7)
    assert distinct_n(completions, 2) == pytest.approx(3 / 5)  # (a b) (b a) (b c) among 5 bigrams
    assert math.isnan(distinct_n(["", "x"], 2))
