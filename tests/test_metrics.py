"""Every per-step metric of the README's metric table, computed on hand-made completions and checked against
a direct computation (nltk's METEOR called pair by pair, n-grams and means counted by hand)."""

import math
from statistics import mean, pstdev

import pytest
from nltk.translate.meteor_score import meteor_score
from tolerances import fp64_tolerance

from superhf_lab.algorithms.superhf_trainer import superbatch_metrics
from superhf_lab.metrics.diversity import (
    distinct_n,
    meteor_pair_scores,
    meteor_similarity,
    meteor_similarity_within_prompt,
    pairs_between_prompts,
    pairs_within_prompts,
)
from superhf_lab.metrics.wordnet import ensure_wordnet
from superhf_lab.training.completions import Completion, completion_metrics

BREAD = "\n\nHuman: How do I bake bread?\n\nAssistant:"
LOCK = "\n\nHuman: How do I pick a lock?\n\nAssistant:"
# Two prompts x three completions: one empty, one cut off by the token limit (finished=False).
COMPLETIONS = [
    Completion(BREAD, 0, " Mix flour, water and yeast, then knead the dough.", 12, True, 1.0, 0.5),
    Completion(BREAD, 0, " Knead the dough well and let it rise.", 9, True, 2.0, 1.5),
    Completion(BREAD, 0, "   ", 1, True, -1.0, -0.5),
    Completion(LOCK, 1, " I can't help with that, but a locksmith can.", 11, True, 0.5, 2.0),
    Completion(LOCK, 1, " Knead the dough well and let it rise.", 9, True, 3.0, -1.0),
    Completion(LOCK, 1, " A locksmith can open it for", 7, False, 0.0, 0.0),
]


def _symmetric(a: str, b: str) -> float:
    return (meteor_score([a.split()], b.split()) + meteor_score([b.split()], a.split())) / 2


def test_every_completion_metric_matches_its_definition():
    ensure_wordnet()
    metrics = completion_metrics(COMPLETIONS)
    rewards = [c.reward for c in COMPLETIONS]
    heldout = [c.heldout_reward for c in COMPLETIONS]
    nonempty = [c for c in COMPLETIONS if c.text.strip()]
    between = [
        _symmetric(a.text, b.text) for i, a in enumerate(nonempty) for b in nonempty[i + 1 :] if a.prompt != b.prompt
    ]
    within = [
        _symmetric(a.text, b.text) for i, a in enumerate(nonempty) for b in nonempty[i + 1 :] if a.prompt == b.prompt
    ]
    assert (len(between), len(within)) == (6, 4)
    words = [c.text.split() for c in nonempty]
    unigrams = [w for ws in words for w in ws]
    bigrams = [tuple(ws[i : i + 2]) for ws in words for i in range(len(ws) - 1)]
    expected = {
        "reward/mean": mean(rewards),
        "reward/std": pstdev(rewards),
        "heldout_reward/mean": mean(heldout),
        "heldout_reward/std": pstdev(heldout),
        "diversity/meteor_similarity": mean(between),
        "diversity/meteor_similarity_within_prompt": mean(within),
        "diversity/distinct_1": len(set(unigrams)) / len(unigrams),
        "diversity/distinct_2": len(set(bigrams)) / len(bigrams),
        "completion/length_tokens_mean": mean(c.num_tokens for c in COMPLETIONS),
        "completion/empty_fraction": 1 / 6,
        "completion/truncated_fraction": 1 / 6,
    }
    assert metrics.keys() == expected.keys()
    # numpy's float64 means and two-pass std against statistics' correctly rounded ones (the METEOR scores themselves
    # are nltk's very floats): 2 x 6 roundings, on values whose magnitudes add to at most 3 x their sum.
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=fp64_tolerance(2 * len(COMPLETIONS), 3)), name


def test_superbatch_metrics_add_the_kept_completions_rewards():
    metrics = superbatch_metrics(COMPLETIONS, kept_indices=[1, 4])
    # exact: means and deviations of these few halves and quarters are exact in float64
    assert metrics["reward/kept_mean"] == 2.5 and metrics["reward/kept_std"] == 0.5
    assert metrics["heldout_reward/kept_mean"] == 0.25


def test_same_answer_to_different_prompts_is_mode_collapse_and_counts_only_across_prompts():
    ensure_wordnet()
    collapsed = ["Have a wonderful day, you are amazing!"] * 4
    assert meteor_similarity(collapsed, ["p1", "p2", "p3", "p4"]) > 0.99
    assert math.isnan(meteor_similarity(collapsed, ["p1"] * 4)), "no pair of completions to different prompts"
    assert meteor_similarity_within_prompt(collapsed, ["p1"] * 4) > 0.99
    assert math.isnan(meteor_similarity_within_prompt(collapsed, ["p1", "p2", "p3", "p4"]))


def test_a_metric_with_no_pair_to_measure_is_left_out():
    one_prompt = [c for c in COMPLETIONS if c.prompt == BREAD]
    assert "diversity/meteor_similarity" not in completion_metrics(one_prompt)
    one_each = [COMPLETIONS[0], COMPLETIONS[3]]
    assert "diversity/meteor_similarity_within_prompt" not in completion_metrics(one_each)


def test_pairs_split_by_prompt_and_evaluation_samples_only_pairs_across_prompts():
    prompts = ["a", "b", "a", "c"]
    assert pairs_between_prompts(prompts) == [(0, 1), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert pairs_within_prompts(prompts) == [(0, 2)]
    texts = ["same words here"] * 4
    # exact: every METEOR is nltk's very float (tests/test_meteor.py), and both sides average a pair as (a + b) / 2
    assert meteor_pair_scores(texts, prompts, num_pairs=128, seed=0) == [_symmetric(*texts[:2])] * 5


def test_distinct_n_counts_unique_ngrams_over_all_ngrams():
    completions = ["a b a b", "a b c"]
    assert distinct_n(completions, 1) == 3 / 7  # exact: both are one correctly rounded division of the same counts
    assert distinct_n(completions, 2) == 3 / 5  # (a b) (b a) (b c) among 5 bigrams
    assert math.isnan(distinct_n(["", "x"], 2))


def test_bookkeeping_logs_each_steps_metrics_once_in_step_order_whatever_finishes_first():
    import threading

    from superhf_lab.metrics.bookkeeping import Bookkeeping

    class History:
        def __init__(self):
            self.logged = []

        def log_metrics(self, metrics, step):
            self.logged.append((step, metrics["value"]))

    release = threading.Event()
    tracker = History()
    with Bookkeeping(tracker) as bookkeeping:
        bookkeeping.submit(0, lambda: release.wait(5) and {"value": 0.0})
        bookkeeping.submit(1, lambda: {"value": 1.0})
        bookkeeping.log_ready()
        assert tracker.logged == [], "step 1 is done but waits behind step 0"
        release.set()
        bookkeeping.submit(2, lambda: {"value": 2.0})
    assert tracker.logged == [(0, 0.0), (1, 1.0), (2, 2.0)], "all logged when the loop ends"


def test_a_sweeps_summary_never_puts_different_kls_in_one_column_unnamed(tmp_path):
    """Algorithms log different training KLs; the summary names the estimates and compares on the exact test KL."""
    import mlflow
    from rich.console import Console

    from superhf_lab.reporting.summary import print_sweep_summary

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        client = mlflow.MlflowClient()
        experiment_id = client.create_experiment("summary")
        parent = client.create_run(experiment_id, run_name="sweep").info.run_id
        jobs = {
            "superhf": {"kl": 0.6, "eval/all/kl": 0.347},
            "ppo": {"kl_sequence_estimate": 5.67, "eval/all/kl": 0.168},
            "best_of_n": {"eval/all/kl_sequence_bound": 1.84},
        }
        for name, metrics in jobs.items():
            run_id = client.create_run(experiment_id, run_name=name, tags={"mlflow.parentRunId": parent}).info.run_id
            for key, value in metrics.items():
                client.log_metric(run_id, key, value, step=0)
        console = Console(record=True, width=250)
        parent_file = {
            "run_id": parent,
            "tracking_uri": mlflow.get_tracking_uri(),
            "experiment_id": experiment_id,
            "view_key": "sweep-x",
        }
        print_sweep_summary(parent_file, str(tmp_path), console)
    finally:
        mlflow.set_tracking_uri(previous)
    rows = {line.split("│")[1].strip(): line for line in console.export_text().splitlines() if line.count("│") > 5}
    assert "0.600 → 0.600" in rows["superhf"] and "(kl_" not in rows["superhf"] and "0.347" in rows["superhf"]
    assert "5.670 → 5.670 (kl_sequence_estimate)" in rows["ppo"] and "0.168" in rows["ppo"]
    assert "≤ 1.84 per sequence (bound)" in rows["best_of_n"]
