"""superhf_lab.metrics.meteor gives exactly nltk's METEOR: every ordered pair is compared with nltk called directly,
with ``==`` on the floats, on real hh-rlhf replies and on hand-made edge cases."""

import gzip
import json
from itertools import product
from pathlib import Path

import pytest
from nltk.translate.meteor_score import meteor_score

from superhf_lab.metrics.meteor import MeteorTexts, benchmark_against_nltk
from superhf_lab.metrics.wordnet import ensure_wordnet

# Shared data sits beside the project; a user's clone does not have it.
HH_RLHF = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"

EDGE_CASES = [
    "",
    "   ",
    "\n\t ",
    "word",
    "the",
    "the the the",
    "The THE the tHe",
    "the cat sat on the mat the end",
    "the mat the",
    "a b a b a",
    "b a b",
    "Hello, world!",
    "hello world",
    "HELLO WORLD",
    "hello , world !",
    ". , ! ? ...",
    ",",
    "running runs ran runner",
    "runs",
    "He was running; she runs.",
    "car",
    "automobile",
    "auto",
    "auto car auto",
    "car car",
    "a fast car and a quick auto",
    "a quick auto and a fast car",
    "is are be was",
    "dog dogs Dog DOGS dog.",
]


def nltk_meteor(reference: str, hypothesis: str) -> float:
    return meteor_score([reference.split()], hypothesis.split())


def assert_every_ordered_pair_matches_nltk(texts: list[str]) -> None:
    """Exact, not approximate: MeteorTexts replays nltk's float64 operations in nltk's order, so any difference, even
    an ulp, is a different alignment or formula, which a tolerance would hide."""
    scorer = MeteorTexts(texts)
    mismatches = [
        (texts[r], texts[h], scorer.score(r, h), nltk_meteor(texts[r], texts[h]))
        for r, h in product(range(len(texts)), repeat=2)
        if scorer.score(r, h) != nltk_meteor(texts[r], texts[h])
    ]
    assert not mismatches, mismatches[:5]


@pytest.fixture(scope="module", autouse=True)
def wordnet():
    ensure_wordnet()


@pytest.fixture(scope="module")
def hh_rlhf_rows() -> list[dict]:
    if not HH_RLHF.is_file():
        pytest.skip(f"hh-rlhf test split not found at {HH_RLHF} (shared data, not part of a clone)")
    with gzip.open(HH_RLHF, "rt") as lines:
        return [json.loads(line) for _, line in zip(range(40), lines)]


def final_reply(conversation: str) -> str:
    return conversation.rsplit("\n\nAssistant:", 1)[1]


def test_hh_rlhf_final_replies_match_nltk_pair_by_pair(hh_rlhf_rows):
    replies = [final_reply(row["chosen"]) for row in hh_rlhf_rows] + [final_reply(hh_rlhf_rows[0]["rejected"])]
    assert_every_ordered_pair_matches_nltk(replies)


def test_hh_rlhf_whole_conversations_match_nltk_pair_by_pair(hh_rlhf_rows):
    # Long texts with many repeated words ("Human:", "the", "you") exercise every stage and tie-break.
    assert_every_ordered_pair_matches_nltk([row["chosen"] for row in hh_rlhf_rows[:12]])


def test_edge_cases_match_nltk_pair_by_pair():
    assert_every_ordered_pair_matches_nltk(EDGE_CASES)


@pytest.mark.parametrize(
    ("reference", "hypothesis", "matches"),
    [
        ("", "", False),
        ("word", "", False),
        ("", "word", False),
        ("   ", "word", False),
        ("Hello, world!", "hello world", False),  # punctuation stays attached: no word matches
        ("HELLO WORLD", "hello world", True),  # case is ignored
        ("runs", "running", True),  # stem stage
        ("car", "auto", True),  # WordNet stage only: the stems differ
        ("quick", "fast", True),
        # nltk looks synonyms up by Porter stem, and WordNet has no "automobil": no match.
        ("car", "automobile", False),
    ],
)
def test_which_pairs_match_at_all(reference, hypothesis, matches):
    score = MeteorTexts([reference, hypothesis]).score(0, 1)
    assert score == nltk_meteor(reference, hypothesis)
    assert (score > 0) == matches


@pytest.mark.parametrize(
    ("reference", "hypothesis"),
    [
        # Taking the first free "the" instead of the last would split the match into 3 chunks, not 1.
        ("the cat sat on the mat the end", "the mat the"),
        ("auto car auto", "car car"),  # WordNet stage: the last free synonym, 2 chunks (the first gives 1)
        ("running ran running", "runs runs"),  # stem stage
    ],
)
def test_alignment_tie_breaking_matches_nltk(reference, hypothesis):
    scorer = MeteorTexts([reference, hypothesis])
    assert scorer.score(0, 1) == nltk_meteor(reference, hypothesis)
    assert scorer.score(1, 0) == nltk_meteor(hypothesis, reference)


def test_identical_texts_score_as_nltk_does():
    text = "Knead the dough well and let it rise."
    scorer = MeteorTexts([text, text])
    assert scorer.score(0, 1) == scorer.score(1, 1) == nltk_meteor(text, text)


def test_score_pairs_is_score_of_each_pair():
    scorer = MeteorTexts(EDGE_CASES)
    pairs = [(0, 1), (7, 8), (8, 7), (24, 25), (25, 25), (3, 0)]
    assert scorer.score_pairs(pairs) == [scorer.score(r, h) for r, h in pairs]
    assert scorer.score_pairs([]) == []


def test_benchmark_reports_identical_scores():
    result = benchmark_against_nltk(EDGE_CASES[:10])
    assert result["pairs"] == 90
    assert result["identical"] is True


def test_meteor_from_two_threads_at_once_equals_meteor_from_one():
    """The training loop's background bookkeeping and an evaluation may score METEOR at the same time."""
    from concurrent.futures import ThreadPoolExecutor

    from superhf_lab.metrics.meteor import porter_stem, wordnet_synonyms

    words = ["quick fast rapid swift speedy", "car auto machine motorcar", "happy glad felicitous", "run walk go"]
    texts = [f"{a} and {b}" for a in words for b in words]
    pairs = [(i, j) for i in range(len(texts)) for j in range(len(texts)) if i != j]
    porter_stem.cache_clear()
    wordnet_synonyms.cache_clear()
    with ThreadPoolExecutor(max_workers=4) as pool:
        scores = list(pool.map(lambda _: MeteorTexts(texts).score_pairs(pairs), range(8)))
    assert all(result == scores[0] for result in scores)
    assert scores[0] == [meteor_score([texts[i].split()], texts[j].split()) for i, j in pairs]


def test_the_first_use_of_wordnet_waits_for_any_other_use():
    """Loading nltk's WordNet reads its shared files, so two threads starting at once (bookkeeping and an
    evaluation) must not load it side by side: a fresh process's first MeteorTexts waits while a lookup holds
    the lock. (Unserialised, such a start once read a line spliced from two seeks: "too many values to unpack".)"""
    import subprocess
    import sys

    program = """
import threading
from superhf_lab.metrics import meteor
with meteor._WORDNET_LOCK:
    first_use = threading.Thread(target=meteor.MeteorTexts, args=(["a dog ran", "the dog runs"],))
    first_use.start()
    first_use.join(timeout=6.0)  # loading takes about 2 s here, or 0.2 s from its cache
    assert first_use.is_alive(), "WordNet was loaded while another thread held the WordNet lock"
first_use.join()
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
