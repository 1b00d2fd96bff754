"""Held-out evaluation per prompt source, saved policies, and the best-of-N baseline."""

import math

import mlflow
import pytest
from conftest import compose_config, run_cli
from tolerances import fp64_tolerance

from superhf_lab.algorithms.best_of_n import best_per_prompt
from superhf_lab.core.errors import ConfigError
from superhf_lab.launch.compose import validate_config
from superhf_lab.metrics.diversity import meteor_pair_scores
from superhf_lab.metrics.overoptimisation import best_of_n_kl
from superhf_lab.metrics.statistics import mean_and_ci95
from superhf_lab.training.completions import Completion
from superhf_lab.training.evaluation import evaluation_metrics, evaluation_prompts


def _completion(prompt_index: int, text: str, reward: float, heldout: float = math.nan, tokens: int = 3) -> Completion:
    return Completion(f"\n\nHuman: q{prompt_index}\n\nAssistant:", prompt_index, text, tokens, True, reward, heldout)


def test_metrics_are_per_source_and_pooled_overall():
    completions = [
        _completion(0, "the cat sat on the mat", 1.0, 0.5),
        _completion(1, "the cat sat on the mat", 3.0, 0.5),
        _completion(2, "a dog ran far away", -1.0, 0.0, tokens=5),
        _completion(3, "green tea is hot", 0.0, 1.0),
    ]
    sources = ["harmful", "harmful", "helpful", "helpful"]
    kl = {"kl": [0.1, 0.3, 0.0, 0.2], "kl_sequence": [1.0, 3.0, 0.0, 2.0]}
    metrics = evaluation_metrics(completions, sources, kl, 128, seed=0)
    # Rewards, held-out rewards, lengths and sequence KLs here are small integers and halves: their means are exact.
    assert metrics["eval/harmful/reward/mean"] == 2.0 and metrics["eval/helpful/reward/mean"] == -0.5
    assert metrics["eval/all/reward/mean"] == 0.75 and metrics["eval/all/prompts"] == 4
    assert metrics["eval/harmful/diversity/meteor_similarity"] > 0.99, "identical completions: mode collapse"
    assert metrics["eval/helpful/diversity/meteor_similarity"] < 0.2
    assert metrics["eval/all/diversity/meteor_similarity"] == pytest.approx(  # two float64 means of 2: 4 roundings
        (metrics["eval/harmful/diversity/meteor_similarity"] + metrics["eval/helpful/diversity/meteor_similarity"]) / 2,
        rel=fp64_tolerance(4),
    ), "overall METEOR pools the pairs drawn within each source, never across sources"
    # (0.1 + 0.3) / 2: the literals' and the sum's roundings
    assert metrics["eval/harmful/kl"] == pytest.approx(0.2, rel=fp64_tolerance(2))
    assert metrics["eval/all/kl_sequence"] == 1.5
    assert metrics["eval/helpful/heldout_reward/mean"] == 0.5
    assert metrics["eval/helpful/completion/length_tokens_mean"] == 4.0


def test_meteor_pairs_are_seeded_scored_both_ways_and_capped():
    texts = [f"answer number {i} talks about topic {i % 3}" for i in range(12)]
    prompts = [f"q{i}" for i in range(12)]
    scores = meteor_pair_scores(texts, prompts, num_pairs=20, seed=1)
    assert len(scores) == 20 and scores == meteor_pair_scores(texts, prompts, num_pairs=20, seed=1)
    assert scores != meteor_pair_scores(texts, prompts, num_pairs=20, seed=2)
    assert len(meteor_pair_scores(texts[:4], prompts[:4], num_pairs=128, seed=0)) == 6, "fewer pairs: all of them"
    mean, half_width = mean_and_ci95([0.2, 0.4, 0.6])
    # float64: a 3-term mean; the std's 3 deviations (cancelling to a third of the inputs' size), squares, sum and
    # sqrt, then x 1.96 / sqrt(3): 16 roundings, at 3 x the result's scale.
    assert mean == pytest.approx(0.4, rel=fp64_tolerance(3))
    assert half_width == pytest.approx(1.96 * 0.2 / math.sqrt(3), rel=fp64_tolerance(16, 3))


def test_best_of_n_keeps_the_top_reward_per_prompt_and_bounds_its_kl():
    samples = [_completion(0, "a", 0.1), _completion(0, "b", 0.9), _completion(1, "c", -2.0), _completion(1, "d", -3.0)]
    assert [c.text for c in best_per_prompt(samples)] == ["b", "c"]
    assert best_of_n_kl(1) == 0.0  # exact: log 1 - 0 / 1
    # float64: a log, a division and a difference (2.77 - 0.94), each side
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16, rel=fp64_tolerance(3, 2))


def test_evaluation_prompts_sample_each_source_with_the_eval_seed_alone(tiny_world):
    config = validate_config(compose_config([f"tiny_world.dir={tiny_world.root}", "eval.prompts_per_source=10"]))
    chosen = evaluation_prompts(config)
    assert chosen.counts == {"helpful": 10, "harmful": 10, "open": 10}
    config.seed = 1
    assert evaluation_prompts(config).prompts == chosen.prompts, "every training seed is judged on the same prompts"
    config.eval.seed = 1
    assert evaluation_prompts(config).prompts != chosen.prompts
    with pytest.raises(ConfigError, match="eval.prompts_per_source=1 is invalid"):
        validate_config(compose_config(["eval.prompts_per_source=1"]))


@pytest.mark.slow
def test_trained_policies_are_saved_and_evaluated_like_base_and_best_of_n(tiny_world, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = [
        f"tiny_world.dir={tiny_world.root}",
        f"mlflow.tracking_uri={uri}",
        "eval.prompts_per_source=8",
        "eval.meteor_pairs_per_source=16",
    ]
    client = mlflow.MlflowClient(uri)

    def latest_run():
        return client.search_runs(
            [client.get_experiment_by_name("tiny_world").experiment_id],
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )[0]

    def run(args):
        result = run_cli([*args, *common], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        return latest_run()

    trained = run(["algorithm.num_superbatches=4", "algorithm.superbatch_size=4", "eval.every_n_steps=2"])
    assert [m.step for m in client.get_metric_history(trained.info.run_id, "eval/harmful/reward/mean")] == [1, 3]
    assert {f"data.count.train.{s}" for s in ("helpful", "harmful", "open")} <= set(trained.data.params)
    assert trained.data.metrics["eval/all/prompts"] == 24 and trained.data.metrics["eval/all/kl"] > 0
    assert {"eval/completions_step_1.json", "eval/completions_step_3.json"} == {
        a.path for a in client.list_artifacts(trained.info.run_id, "eval")
    }

    def history(run, name):
        return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]

    # the over-optimisation path: the starting policy at step 0, then each evaluation after the steps trained
    path = history(trained, "overoptimisation/sqrt_kl")
    assert [step for step, _ in path] == [0, 2, 4] and path[0][1] == 0.0 and all(d > 0 for _, d in path[1:])
    assert [step for step, _ in history(trained, "overoptimisation/alpha")] == [4], "fitted once, at the end"
    policy_uri = trained.data.tags["superhf_lab.policy_uri"]

    evaluated = run(["mode=eval", f"eval.policy={policy_uri}"])
    assert evaluated.data.metrics["eval/all/kl"] > 0, "the saved policy moved away from the starting one"
    base = run(["mode=eval"])
    # exact: the starting policy's KL is 0 by definition, not computed
    assert base.data.metrics["eval/all/kl"] == 0.0 and base.data.metrics["eval/open/prompts"] == 8

    lora = run(
        [
            "algorithm.num_superbatches=2",
            "algorithm.superbatch_size=4",
            "algorithm.lora.enabled=true",
            "algorithm.learning_rate=0.01",
            "eval.at_end=false",
        ]
    )
    assert "adapter_config.json" in {a.path.split("/")[-1] for a in client.list_artifacts(lora.info.run_id, "policy")}
    adapter = run(["mode=eval", f"eval.policy={lora.data.tags['superhf_lab.policy_uri']}"])
    assert adapter.data.metrics["eval/all/kl"] > 0, "the adapter is applied to the starting policy"

    best = run(["algorithm=best_of_n", "algorithm.n=4", "algorithm.pool=8"])
    assert [value for _, value in history(best, "best_of_n/n")] == [1, 2, 4, 8], "one pool gives the whole curve"
    for (_, d), n in zip(history(best, "overoptimisation/sqrt_kl"), [1, 2, 4, 8]):
        assert d == pytest.approx(math.sqrt(best_of_n_kl(n)), rel=fp64_tolerance(4))
    proxy = [value for _, value in history(best, "overoptimisation/proxy")]
    # the proxy's favourite among more draws scores at least as high, in expectation (24 prompts' mean, float64)
    assert all(later >= earlier - fp64_tolerance(24 * 8) for earlier, later in zip(proxy, proxy[1:]))
    assert best.data.metrics["overoptimisation/r_squared_best_of_n"] <= 1
    # the mean over the 24 prompts of the same bound: 24 float64 additions
    assert best.data.metrics["eval/all/kl_sequence_bound"] == pytest.approx(best_of_n_kl(4), rel=fp64_tolerance(24))
    assert "eval/all/kl_sequence" not in best.data.metrics and "eval/all/kl" not in best.data.metrics
    assert 0 < best.data.metrics["diversity/meteor_similarity_within_prompt"] < 1
    assert best.data.metrics["reward/mean"] == best.data.metrics["eval/all/reward/mean"], "exact: one number, two names"
    assert best.data.metrics["eval/all/reward/mean"] > base.data.metrics["eval/all/reward/mean"], (
        "picking the best of 4 by the reward model raises the reward model's score"
    )

    result = run_cli(["mode=eval", "eval.policy=runs:/0123456789abcdef/policy", *common], cwd=tmp_path)
    assert (
        result.returncode == 2
        and "eval.policy='runs:/0123456789abcdef/policy' could not be downloaded" in result.stderr
    )
