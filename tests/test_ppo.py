"""The PPO plugin: TRL's reward path over decoded text, adaptive KL, and a short run logged like SuperHF."""

import pytest
import torch
from conftest import compose_config, run_cli
from tolerances import fp32_tolerance, fp64_tolerance

from superhf_lab.algorithms.ppo_trainer import METRIC_NAMES as PPO_METRICS
from superhf_lab.algorithms.ppo_trainer import AdaptiveKLController, TextRewardModel
from superhf_lab.algorithms.superhf_trainer import METRIC_NAMES as SUPERHF_METRICS
from superhf_lab.config.schema import RewardModelConfig, TextConfig
from superhf_lab.training.models import load_tokenizer
from superhf_lab.training.rewards import ModelRewardScorer

PROMPTS = [
    "\n\nHuman: How do I bake bread?\n\nAssistant:",
    "\n\nHuman: What do you think about remote work for young parents?\n\nAssistant:",
]
COMPLETIONS = [" Mix flour, water and yeast, then knead the dough.", " It has good and bad sides."]


def test_trl_reward_path_scores_the_same_text_as_superhf(tiny_world):
    """TRL's get_reward on policy token ids equals the reward model on the decoded, trimmed text."""
    from trl.experimental.utils import get_reward

    policy_tokenizer = load_tokenizer(str(tiny_world.policy), None, "model.name_or_path")
    policy_tokenizer.padding_side = "left"
    scorer = ModelRewardScorer(
        RewardModelConfig(name_or_path=str(tiny_world.reward_model)),
        "reward_model",
        torch.device("cpu"),
        "fp32",
        batch_size=8,
    )
    assert policy_tokenizer(PROMPTS[0]).input_ids != scorer.tokenizer(PROMPTS[0], add_special_tokens=False).input_ids
    adapter = TextRewardModel(policy_tokenizer, scorer, None, PROMPTS, TextConfig())

    queries = policy_tokenizer(PROMPTS, return_tensors="pt", padding=True).input_ids
    # The first response runs on into a next turn, which both algorithms cut; both end with EOS, then padding.
    generated = [COMPLETIONS[0] + "\n\nHuman: thanks!", COMPLETIONS[1]]
    responses = [
        policy_tokenizer(text, add_special_tokens=False).input_ids + [policy_tokenizer.eos_token_id]
        for text in generated
    ]
    width = max(map(len, responses)) + 2
    responses = torch.tensor([r + [policy_tokenizer.pad_token_id] * (width - len(r)) for r in responses])
    adapter.context_length = queries.shape[1]
    _, trl_scores, _ = get_reward(
        adapter, torch.cat([queries, responses], 1), policy_tokenizer.pad_token_id, queries.shape[1]
    )

    expected = scorer.score(PROMPTS, COMPLETIONS, TextConfig().reward_input)
    # Exact: both paths run the same reward model on the same two texts in one batch; TRL only reads the value back.
    torch.testing.assert_close(trl_scores, torch.tensor(expected), rtol=0, atol=0)
    scored, _ = adapter.take_scored()
    assert [c.text for c in scored] == COMPLETIONS and [c.prompt for c in scored] == PROMPTS
    assert all(c.finished for c in scored)


def test_adaptive_kl_moves_the_coefficient_towards_the_target():
    controller = AdaptiveKLController(target=6.0, horizon=10000.0, batch_size=32)
    step = fp64_tolerance(6)  # either side: a handful of float64 roundings on numbers of about 1 (the factor)
    assert controller.update(0.2, 12.0) == pytest.approx(0.2 * (1 + 0.2 * 32 / 10000), rel=step)  # error clipped: 0.2
    assert controller.update(0.2, 3.0) == pytest.approx(0.2 * (1 - 0.2 * 32 / 10000), rel=step)
    assert controller.update(0.2, 6.0) == 0.2, "exact: on target the error is exactly 0 and the factor exactly 1"


def test_ppo_and_superhf_share_their_comparison_metrics():
    shared = {
        "reward/mean",
        "reward/std",
        "heldout_reward/mean",
        "loss/total",
        "lr",
        "diversity/meteor_similarity",
        "diversity/distinct_1",
        "diversity/distinct_2",
        "completion/length_tokens_mean",
        "time/step_s",
        "progress/prompts_seen",
        "progress/completions_generated",
    }
    assert shared <= set(PPO_METRICS) and shared <= set(SUPERHF_METRICS)


@pytest.mark.slow
def test_ppo_run_logs_every_metric_per_update(tiny_world, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_cli(
        [
            "algorithm=ppo",
            f"tiny_world.dir={tiny_world.root}",
            "algorithm.num_updates=3",
            "algorithm.batch_size=8",
            "algorithm.num_mini_batches=2",
            "algorithm.num_ppo_epochs=2",
            "algorithm.adaptive_kl.enabled=true",
            "algorithm.adaptive_kl.horizon=100",
            f"mlflow.tracking_uri={uri}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("tiny_world").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.tags["algorithm"] == "ppo"
    for name in PPO_METRICS:
        expected = [2] if name.startswith("eval/") else [0, 1, 2]  # the final policy is evaluated once
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, name)) == expected, name
    assert run.data.metrics["eval/all/kl"] > 0 and "superhf_lab.policy_uri" in run.data.tags
    kl = [
        m.value
        for m in sorted(client.get_metric_history(run.info.run_id, "kl_sequence_estimate"), key=lambda m: m.step)
    ]
    coef = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "kl_coef"), key=lambda m: m.step)]
    # Before the first update the policy is its own reference, so each token's log-ratio r is float error alone and
    # k3 = (exp(r) - 1) - r (r^2 / 2, below 1e-12) is computed from exp(r) rounded near 1: off by up to eps / 2 per
    # token, either sign; summed over at most max_new_tokens. Another reference model: 0.01 nats a token or more.
    tokens = compose_config(["algorithm=ppo", f"tiny_world.dir={tiny_world.root}"]).algorithm.max_new_tokens
    assert kl[0] == pytest.approx(0.0, abs=fp32_tolerance(tokens)) and min(kl) >= -fp32_tolerance(tokens)
    assert coef[0] == 0.1, "exact: the configured coefficient itself penalised the first rollout"
    assert coef[1] < coef[0], "KL far below the target of 6 lowers the coefficient"
    samples = [m.value for m in client.get_metric_history(run.info.run_id, "progress/completions_generated")]
    assert sorted(samples) == [8, 16, 24]
