"""Exact METEOR, fast over many pairs of the same texts.

The project's METEOR of a pair is ``nltk.translate.meteor_score.meteor_score([reference.split()],
hypothesis.split())`` with nltk's defaults. Called pair by pair, nltk lower-cases, Porter-stems and looks up
WordNet synonyms for the same tokens again in every pair. :class:`MeteorTexts` does that once per text (and once
per word per process, in bounded caches) and aligns each pair from it, replaying nltk 3.10's alignment
(``_enum_align_words``) so that every score is the very float nltk returns:

1. exact stage, on lower-cased words: hypothesis tokens, last to first, each take the last free reference token
   with the same word;
2. stem stage, the same on the leftovers' Porter stems;
3. WordNet stage, on the leftovers' *stems* (nltk passes the stemmed lists on, so "automobile" is looked up as
   "automobil", which WordNet does not know): hypothesis tokens, last to first, each take the last free reference
   token whose stem is the hypothesis stem or a synonym of it (a lemma name, without "_", of
   ``wordnet.synsets(stem)``).

Stages 1 and 2 come down to: per word, then per stem, the k-th last hypothesis occurrence pairs with the k-th last
reference occurrence. Stage 3 is greedy, so it is replayed in nltk's order, on the few tokens that can take part.
"""

from __future__ import annotations

import functools
import gc
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nltk.stem.porter import PorterStemmer

# nltk's defaults for meteor_score's alpha, beta and gamma.
ALPHA = 0.9
BETA = 3.0
GAMMA = 0.5

# Per-word caches shared by all instances, since superbatches reuse a vocabulary. Bounded, least recently used
# entries going first: a synonym set holds 7 strings on average (at most a few hundred bytes to a few KB), so both
# caches together stay under about 100 MB even when full; 32 hh-rlhf replies use about 400 distinct words.
WORD_CACHE_SIZE = 1 << 16

_STEMMER = PorterStemmer()  # meteor_score's default stemmer: NLTK_EXTENSIONS mode, lower-cases
# nltk's WordNet reader seeks and reads shared file handles, and loading it reads them too, so every use of it (the
# training loop's background bookkeeping and an evaluation may start at once) holds this lock; re-entrant because
# a lookup loads the reader on its first call.
_WORDNET_LOCK = threading.RLock()


def load_wordnet() -> None:
    """Load WordNet now (0.2 s here from its cache, 2 s to parse it) rather than on the first METEOR: a missing
    WordNet then fails before training, with how to install it, and no step pays for the load in the background
    bookkeeping."""
    _wordnet()


def _wordnet():
    """nltk's WordNet reader, made loadable the project's way and loaded once per process, by one thread."""
    with _WORDNET_LOCK:
        return _load_wordnet()


@functools.cache
def _load_wordnet():
    """Its index is about half a million objects that live as long as the process; ``gc.freeze()`` moves them out of
    the garbage collector's sight, so each later full collection (about 0.25 s over them) does not scan them again.
    """
    from superhf_lab.metrics.wordnet import english_wordnet, ensure_wordnet

    ensure_wordnet()
    reader = english_wordnet()
    reader.ensure_loaded()
    gc.freeze()
    return reader


@functools.lru_cache(maxsize=WORD_CACHE_SIZE)
def porter_stem(word: str) -> str:
    """The stem nltk's METEOR gives a (lower-cased) word."""
    return _STEMMER.stem(word)


@functools.lru_cache(maxsize=WORD_CACHE_SIZE)
def wordnet_synonyms(stem: str) -> frozenset[str]:
    """The words nltk's METEOR WordNet stage accepts for ``stem``: itself and its one-word lemma names."""
    with _WORDNET_LOCK:
        lemma_names = [lemma.name() for synset in _wordnet().synsets(stem) for lemma in synset.lemmas()]
    return frozenset(name for name in lemma_names if "_" not in name) | {stem}


@dataclass(frozen=True, slots=True)
class _TextFeatures:
    """What nltk's alignment needs from one text, computed once. Positions are token indices, ascending."""

    length: int
    positions_by_word: dict[str, list[int]]  # lower-cased word -> positions
    positions_by_stem: dict[str, list[int]]
    words_by_stem: dict[str, list[str]]
    stems_by_synonym: dict[str, list[str]]  # word -> this text's stems that accept it in the WordNet stage


def _text_features(text: str) -> _TextFeatures:
    words = [token.lower() for token in text.split()]  # as callers split, then as nltk lower-cases
    positions_by_word: dict[str, list[int]] = {}
    for position, word in enumerate(words):
        positions_by_word.setdefault(word, []).append(position)
    positions_by_stem: dict[str, list[int]] = {}
    words_by_stem: dict[str, list[str]] = {}
    for word, positions in positions_by_word.items():
        stem = porter_stem(word)
        positions_by_stem.setdefault(stem, []).extend(positions)
        words_by_stem.setdefault(stem, []).append(word)
    stems_by_synonym: dict[str, list[str]] = {}
    for stem, positions in positions_by_stem.items():
        positions.sort()  # several words with one stem interleave
        for synonym in wordnet_synonyms(stem):
            stems_by_synonym.setdefault(synonym, []).append(stem)
    return _TextFeatures(len(words), positions_by_word, positions_by_stem, words_by_stem, stems_by_synonym)


def _pair_from_end(hypothesis_positions: list[int], reference_positions: list[int], ref_of_hyp: dict[int, int]):
    """nltk's ``_match_enums`` for one word: the k-th last occurrences pair up. Returns the unpaired ones."""
    paired = min(len(hypothesis_positions), len(reference_positions))
    hyp_rest = len(hypothesis_positions) - paired
    ref_rest = len(reference_positions) - paired
    ref_of_hyp.update(zip(hypothesis_positions[hyp_rest:], reference_positions[ref_rest:]))
    return hypothesis_positions[:hyp_rest], reference_positions[:ref_rest]


def _align(reference: _TextFeatures, hypothesis: _TextFeatures) -> dict[int, int]:
    """nltk's alignment of ``hypothesis`` to ``reference``: reference position by matched hypothesis position."""
    ref_of_hyp: dict[int, int] = {}
    shared_stems = hypothesis.positions_by_stem.keys() & reference.positions_by_stem.keys()
    hypothesis_leftover: dict[str, list[int]] = {}  # per shared stem, after the exact and stem stages
    reference_leftover: dict[str, list[int]] = {}
    for stem in shared_stems:
        hypothesis_words = hypothesis.words_by_stem[stem]
        reference_words = reference.words_by_stem[stem]
        if len(hypothesis_words) == 1 and hypothesis_words == reference_words:
            # One word on both sides: the exact stage pairs all it can and the stem stage finds nothing left.
            hyp_rest, ref_rest = hypothesis.positions_by_stem[stem], reference.positions_by_stem[stem]
        else:
            hyp_rest, ref_rest = [], []
            for word in {*hypothesis_words, *reference_words}:
                hyp_word_rest, ref_word_rest = _pair_from_end(
                    hypothesis.positions_by_word.get(word, []), reference.positions_by_word.get(word, []), ref_of_hyp
                )
                hyp_rest += hyp_word_rest
                ref_rest += ref_word_rest
            hyp_rest.sort()
            ref_rest.sort()
        hyp_rest, ref_rest = _pair_from_end(hyp_rest, ref_rest, ref_of_hyp)
        if hyp_rest:
            hypothesis_leftover[stem] = hyp_rest
        elif ref_rest:
            reference_leftover[stem] = ref_rest

    # WordNet stage, restricted to reference stems some hypothesis stem accepts and that have free tokens.
    free_by_reference_stem: dict[str, list[int]] = {}
    for stem in reference.positions_by_stem.keys() & hypothesis.stems_by_synonym.keys():
        if stem not in shared_stems:
            free_by_reference_stem[stem] = list(reference.positions_by_stem[stem])
        elif stem in reference_leftover:
            free_by_reference_stem[stem] = reference_leftover[stem]
    if not free_by_reference_stem:
        return ref_of_hyp
    accepted_by_hypothesis_stem: dict[str, list[str]] = {}
    for reference_stem in free_by_reference_stem:
        for hypothesis_stem in hypothesis.stems_by_synonym[reference_stem]:
            accepted_by_hypothesis_stem.setdefault(hypothesis_stem, []).append(reference_stem)
    walk = sorted(
        (
            (position, stem)
            for stem in accepted_by_hypothesis_stem
            for position in (
                hypothesis_leftover.get(stem, ()) if stem in shared_stems else hypothesis.positions_by_stem[stem]
            )
        ),
        reverse=True,
    )
    for hypothesis_position, hypothesis_stem in walk:
        best_position, best_stem = -1, ""
        for reference_stem in accepted_by_hypothesis_stem[hypothesis_stem]:
            free = free_by_reference_stem[reference_stem]
            if free and free[-1] > best_position:
                best_position, best_stem = free[-1], reference_stem
        if best_position >= 0:
            free_by_reference_stem[best_stem].pop()
            ref_of_hyp[hypothesis_position] = best_position
    return ref_of_hyp


def _chunk_count(ref_of_hyp: dict[int, int]) -> int:
    """nltk's ``_count_chunks``: one chunk per match, less one per match whose successor in both texts matched."""
    return len(ref_of_hyp) - sum(ref_of_hyp.get(h + 1) == r + 1 for h, r in ref_of_hyp.items())


def _meteor_from_alignment(hypothesis_length: int, reference_length: int, ref_of_hyp: dict[int, int]) -> float:
    """nltk's ``single_meteor_score`` arithmetic, operation for operation, so the float is the same."""
    matches_count = len(ref_of_hyp)
    if matches_count == 0:
        return 0.0  # where nltk divides by zero (also an empty hypothesis or reference) and returns 0.0
    precision = float(matches_count) / hypothesis_length
    recall = float(matches_count) / reference_length
    fmean = (precision * recall) / (ALPHA * precision + (1 - ALPHA) * recall)
    frag_frac = float(_chunk_count(ref_of_hyp)) / matches_count
    penalty = GAMMA * frag_frac**BETA
    return (1 - penalty) * fmean


class MeteorTexts:
    """Texts to score METEOR between, each split, stemmed and looked up in WordNet once.

    ``score(r, h) == meteor_score([texts[r].split()], texts[h].split())`` (nltk's defaults), bit for bit. A
    text's work happens on its first use, once per distinct text, so sampling a few pairs of many texts costs only
    the texts it touches.
    """

    def __init__(self, texts: Sequence[str]):
        _wordnet()  # fail here, saying how to install WordNet, rather than mid-scoring
        self.texts = list(texts)
        self._features: list[_TextFeatures | None] = [None] * len(self.texts)
        self._features_by_text: dict[str, _TextFeatures] = {}

    def _features_of(self, index: int) -> _TextFeatures:
        features = self._features[index]
        if features is None:
            text = self.texts[index]
            features = self._features_by_text.get(text)
            if features is None:
                features = self._features_by_text[text] = _text_features(text)
            self._features[index] = features
        return features

    def score(self, reference_index: int, hypothesis_index: int) -> float:
        """METEOR of ``texts[hypothesis_index]`` against ``texts[reference_index]``."""
        reference = self._features_of(reference_index)
        hypothesis = self._features_of(hypothesis_index)
        return _meteor_from_alignment(hypothesis.length, reference.length, _align(reference, hypothesis))

    def score_pairs(self, pairs: Iterable[tuple[int, int]]) -> list[float]:
        """:meth:`score` of each ``(reference_index, hypothesis_index)``."""
        return [self.score(reference_index, hypothesis_index) for reference_index, hypothesis_index in pairs]


def benchmark_against_nltk(texts: Sequence[str]) -> dict[str, float | int | bool]:
    """Seconds to score every ordered pair of ``texts`` with nltk pair by pair and with :class:`MeteorTexts`
    (its construction included, per-word caches emptied first), and whether every score was the same float."""
    from nltk.translate.meteor_score import meteor_score

    _wordnet()  # loading WordNet is timed by neither
    pairs = [(r, h) for r in range(len(texts)) for h in range(len(texts)) if r != h]
    tokens = [text.split() for text in texts]
    gc.collect()  # so that neither timing pays for a collection of garbage left by earlier work
    start = time.perf_counter()
    nltk_scores = [meteor_score([tokens[r]], tokens[h]) for r, h in pairs]
    nltk_s = time.perf_counter() - start

    porter_stem.cache_clear()
    wordnet_synonyms.cache_clear()
    gc.collect()
    start = time.perf_counter()
    fast_scores = MeteorTexts(texts).score_pairs(pairs)
    fast_s = time.perf_counter() - start
    return {
        "pairs": len(pairs),
        "nltk_s": round(nltk_s, 4),
        "meteor_texts_s": round(fast_s, 4),
        "speedup": round(nltk_s / fast_s, 1),
        "identical": fast_scores == nltk_scores,
    }
