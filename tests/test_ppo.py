"""The lab's PPO trainer: its pieces against hand computations, one update against TRL 1.12's PPOTrainer on the same
rollout (the committed fixture of tools/ppo_trl_fixture.py), and a short run logged like SuperHF."""

import math
from pathlib import Path

import pytest
import torch
from conftest import compose_config, run_cli
from tolerances import adam_tolerance, assert_within, fp32_tolerance, fp64_tolerance
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, GPTNeoXForSequenceClassification

from superhf_lab.algorithms.ppo_config import PPOAlgorithmConfig
from superhf_lab.algorithms.ppo_trainer import METRIC_NAMES as PPO_METRICS
from superhf_lab.algorithms.ppo_trainer import (
    ActorCritic,
    AdaptiveKLController,
    PPOTrainer,
    Rollout,
    generalised_advantages,
    per_token_rewards,
)
from superhf_lab.algorithms.superhf_trainer import METRIC_NAMES as SUPERHF_METRICS
from superhf_lab.config.schema import TextConfig
from superhf_lab.metrics.overoptimisation import FIT_NAMES, PATH_NAMES, PEAK_NAMES
from superhf_lab.training.policies import StartingPolicy
from superhf_lab.training.sequences import kl_estimates

FIXTURE = Path(__file__).parent / "fixtures" / "ppo_trl_1_12.pt"
CPU = torch.device("cpu")
# TRL's statistics of the update (its log) and the lab's names for them
TRL_STATISTICS = {
    "objective/kl": "kl_sequence_estimate",
    "objective/entropy": "ppo/entropy",
    "loss/policy_avg": "loss/policy",
    "loss/value_avg": "loss/value",
    "policy/clipfrac_avg": "ppo/clipfrac",
    "val/clipfrac_avg": "ppo/value_clipfrac",
    "policy/approxkl_avg": "ppo/approx_kl",
}


def test_kl_estimators_on_a_hand_made_distribution():
    """p = (0.5, 0.25, 0.25), q = (0.25, 0.25, 0.5): exact KL(p || q) = 0.5 ln 2 - 0.25 ln 2 = 0.25 ln 2. Averaged over
    the tokens weighted by p, k1 and k3 are unbiased (their expectations are the KL); k2's is 0.5 E[r^2]."""
    p, q = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64), torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    estimates = kl_estimates(p.log(), q.log())
    log2 = math.log(2)
    expected = {"k1": 0.25 * log2, "k3": 0.25 * log2}
    expected["k2"] = 0.5 * (0.5 * log2**2 + 0.25 * log2**2)  # r = ln 2, 0, -ln 2 with weights 0.5, 0.25, 0.25
    for name, value in expected.items():
        assert (p * estimates[name]).sum().item() == pytest.approx(value, abs=fp64_tolerance(10)), name
    assert (estimates["k3"] >= 0).all(), "k3 is never negative, token by token"
    assert estimates["k1"][2] < 0, "k1 is negative where the reference is more likely"


def test_rewards_and_gae_follow_the_hand_computation():
    """Two completions of 3 and 2 tokens; score on the last token, -kl_coef x KL on every token; GAE backwards."""
    mask = torch.tensor([[True, True, True], [True, True, False]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]], dtype=torch.float64)
    rewards = per_token_rewards(torch.tensor([1.0, -1.0], dtype=torch.float64), kl, 0.5, mask)
    assert rewards.tolist() == [[-0.05, -0.1, 1.0 - 0.15], [-0.2, -0.25 - 1.0, 0.0]]
    values = torch.tensor([[0.3, 0.2, 0.1], [0.5, 0.4, 7.0]], dtype=torch.float64)
    gamma, lam = 0.9, 0.8
    advantages, returns = generalised_advantages(rewards, values, mask, gamma, lam)
    for row, length in enumerate((3, 2)):
        expected, running = [0.0] * length, 0.0
        for t in reversed(range(length)):
            next_value = values[row, t + 1].item() if t + 1 < length else 0.0
            running = rewards[row, t].item() + gamma * next_value - values[row, t].item() + gamma * lam * running
            expected[t] = running
        assert advantages[row, :length].tolist() == pytest.approx(expected, abs=fp64_tolerance(20))
        assert returns[row, :length].tolist() == pytest.approx(
            [a + v for a, v in zip(expected, values[row, :length].tolist())], abs=fp64_tolerance(20)
        )
    assert advantages[1, 2] == returns[1, 2] == 0, "exact: nothing past a completion's end"


def test_a_rollout_holds_each_completion_token_and_the_logits_that_predict_it():
    rollout = Rollout.from_token_ids(
        [[5, 6], [7]], [[8, 9, 0], [3]], pad_token_id=1, scores=torch.zeros(2), finished=torch.ones(2), device=CPU
    )
    assert rollout.inputs["input_ids"].tolist() == [[5, 6, 8, 9, 0], [7, 3, 1, 1, 1]]
    assert rollout.actions.tolist() == [[8, 9, 0], [3, 0, 0]] and rollout.mask.tolist()[1] == [True, False, False]
    assert rollout.positions.tolist()[0] == [1, 2, 3] and rollout.positions.tolist()[1][0] == 0


def test_adaptive_kl_moves_the_coefficient_towards_the_target():
    controller = AdaptiveKLController(target=6.0, horizon=10000.0, batch_size=32)
    step = fp64_tolerance(6)  # either side: a handful of float64 roundings on numbers of about 1 (the factor)
    assert controller.update(0.2, 12.0) == pytest.approx(0.2 * (1 + 0.2 * 32 / 10000), rel=step)  # error clipped: 0.2
    assert controller.update(0.2, 3.0) == pytest.approx(0.2 * (1 - 0.2 * 32 / 10000), rel=step)
    assert controller.update(0.2, 6.0) == 0.2, "exact: on target the error is exactly 0 and the factor exactly 1"


def _fixture_trainer(fixture: dict, settings: dict) -> PPOTrainer:
    config = GPTNeoXConfig.from_dict(fixture["config"])
    models = {}
    for name, kind in (("policy", GPTNeoXForCausalLM), ("value_model", GPTNeoXForSequenceClassification)):
        models[name] = kind(config)
        models[name].load_state_dict(fixture["initial"][name])
    reference = GPTNeoXForCausalLM(config)
    reference.load_state_dict(fixture["initial"]["reference"])
    algorithm = PPOAlgorithmConfig(
        num_updates=1,
        batch_size=16,
        num_mini_batches=settings["num_mini_batches"],
        num_ppo_epochs=settings["num_ppo_epochs"],
        learning_rate=settings["learning_rate"],
        lr_schedule="linear",
        temperature=settings["effective_temperature"],  # TRL divides the logits by temperature + 1e-7 throughout
        cliprange=settings["cliprange"],
        cliprange_value=settings["cliprange_value"],
        vf_coef=settings["vf_coef"],
        gamma=settings["gamma"],
        lam=settings["lam"],
        kl_estimator=settings["kl_estimator"],
        whiten_rewards=settings["whiten_rewards"],
        missing_eos_penalty=settings["missing_eos_penalty"],
    )
    starting = StartingPolicy(reference.eval().requires_grad_(False), adapters_disabled=False)
    actor_critic = ActorCritic(models["policy"], models["value_model"], None)
    return PPOTrainer(
        algorithm, settings["kl_coef"], TextConfig(), actor_critic, starting, None, None, None, CPU, "fp32"
    )


def _reduction_length(config: dict, minibatch: int, positions: int) -> int:
    """The longest chain of float32 additions into one gradient entry, to first order: per layer a layer norm's and a
    projection's over the hidden size, the attention's over the positions and the MLP's, forwards and back; two
    vocabulary-long sums (the log-softmax, the output layer); the token sums of the minibatch."""
    layers = config["num_hidden_layers"] * (2 * config["hidden_size"] + config["intermediate_size"] + positions)
    return 2 * layers + 2 * config["vocab_size"] + minibatch * positions + 2


@pytest.mark.parametrize("case", ["k3", "k1_whitened_eos_penalty"])
def test_one_update_equals_trl_1_12_ppo_on_the_same_rollout(case):
    """Same weights, rollout (tokens, scores, minibatch orders) and settings as TRL 1.12's PPOTrainer update in the
    fixture: every optimizer step's gradients agree to float32 rounding of their reductions, the weights to what Adam
    makes of those differences (tolerances.adam_tolerance), TRL's logged statistics to float32 rounding. The
    completions fill the width (see tools/ppo_trl_fixture.py), where TRL's score position and the lab's coincide."""
    fixture = torch.load(FIXTURE, weights_only=True)
    recorded = fixture["cases"][case]
    trainer = _fixture_trainer(fixture, recorded["settings"])
    finished = torch.tensor([response[-1] == fixture["eos"] for response in recorded["responses"]])
    scores = trainer.scores_for(torch.tensor(recorded["scores"]), finished)
    rollout = Rollout.from_token_ids(recorded["queries"], recorded["responses"], fixture["pad"], scores, finished, CPU)
    named = list(trainer.actor_critic.named_parameters())
    steps, step = [], trainer.grad_scaler.step

    def recording(optimizer):
        steps.append({name: p.grad.detach().clone() for name, p in named if p.grad is not None})
        return step(optimizer)

    trainer.grad_scaler.step = recording
    metrics = trainer.update(rollout, permutations=recorded["orders"])

    assert len(steps) == len(recorded["steps"]) == 4
    positions = rollout.inputs["input_ids"].shape[1]
    length = _reduction_length(fixture["config"], 16 // recorded["settings"]["num_mini_batches"], positions)
    for index, (gradients, reference) in enumerate(zip(steps, recorded["steps"])):
        assert gradients.keys() == reference.keys()
        for name, gradient in reference.items():
            tolerance = fp32_tolerance(length, gradient.abs().max().item())
            torch.testing.assert_close(gradients[name], gradient, rtol=0, atol=tolerance, msg=f"step {index}: {name}")
    after = {name: p.detach() for name, p in named}
    bounds = adam_tolerance(recorded["steps"], steps, recorded["after"], recorded["settings"]["learning_rate"])
    assert_within(after, recorded["after"], bounds)
    moved = max((after[n] - fixture["initial"]["policy"][n.removeprefix("policy.")]).abs().max() for n in after if
                n.startswith("policy."))  # fmt: skip
    assert moved > recorded["settings"]["learning_rate"] / 2, "the update moved the policy"
    for trl_name, name in TRL_STATISTICS.items():
        expected = recorded["logs"][trl_name]
        assert metrics[name] == pytest.approx(expected, abs=fp32_tolerance(length, max(abs(expected), 1.0))), name


def test_ppo_and_superhf_share_their_comparison_metrics():
    shared = {
        "reward/mean",
        "reward/std",
        "heldout_reward/mean",
        "kl",
        "loss/total",
        "lr",
        "diversity/meteor_similarity",
        "diversity/distinct_1",
        "diversity/distinct_2",
        "completion/length_tokens_mean",
        "time/generation_s",
        "time/scoring_s",
        "time/finetuning_s",
        "time/step_s",
        "progress/prompts_seen",
        "progress/completions_generated",
        "train/nonfinite_losses_skipped",
        "memory/oom_halvings",
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
            "eval.every_n_steps=2",
            "eval.prompts_per_source=8",
            f"mlflow.tracking_uri={uri}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("tiny_world").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.tags["algorithm"] == "ppo"
    # evaluated after update 2 of 3 (eval.every_n_steps=2) and at the end; the over-optimisation path starts at the
    # starting policy (0), has a point after updates 2 and 3, and is fitted at its end (the peak only if it turns down)
    expected = {**dict.fromkeys(PATH_NAMES, [0, 2, 3]), **dict.fromkeys(FIT_NAMES, [3])}
    for name in (name for name in PPO_METRICS if name not in PEAK_NAMES):
        steps = expected.get(name, [1, 2] if name.startswith("eval/") else [0, 1, 2])
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, name)) == steps, name
    assert run.data.metrics["eval/all/kl"] > 0 and "superhf_lab.policy_uri" in run.data.tags
    history = {
        name: [m.value for m in sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)]
        for name in ("kl_sequence_estimate", "kl_coef", "kl")
    }
    # Before the first update the policy is its own reference, so each token's log-ratio r is float error alone and
    # k3 = (exp(-r) - 1) + r (r^2 / 2, below 1e-12) is computed from exp(-r) rounded near 1: off by up to eps / 2 per
    # token, either sign; summed over at most max_new_tokens. Another reference model: 0.01 nats a token or more.
    tokens = compose_config(["algorithm=ppo", f"tiny_world.dir={tiny_world.root}"]).algorithm.max_new_tokens
    kl = history["kl_sequence_estimate"]
    assert kl[0] == pytest.approx(0.0, abs=fp32_tolerance(tokens)) and min(kl) >= -fp32_tolerance(tokens)
    assert history["kl"][-1] > fp32_tolerance(tokens), "the exact KL of later rollouts is measured"
    coef = history["kl_coef"]
    assert coef[0] == 0.1, "exact: the configured coefficient itself penalised the first rollout"
    assert coef[1] < coef[0], "KL far below the target of 6 lowers the coefficient"
    samples = [m.value for m in client.get_metric_history(run.info.run_id, "progress/completions_generated")]
    assert sorted(samples) == [8, 16, 24]


@pytest.mark.slow
@pytest.mark.parametrize("value_model", ["separate", "shared_backbone"])
def test_a_lora_ppo_run_measures_kl_against_the_adapter_free_policy(tiny_world, tmp_path, value_model):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_cli(
        [
            "algorithm=ppo",
            f"tiny_world.dir={tiny_world.root}",
            "algorithm.num_updates=2",
            "algorithm.batch_size=8",
            "algorithm.num_mini_batches=2",
            "algorithm.lora.enabled=true",
            "algorithm.learning_rate=1e-2",
            f"algorithm.value_model={value_model}",
            "kl_coef=0",
            "eval.at_end=false",
            f"mlflow.tracking_uri={uri}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("tiny_world").experiment_id])[0]
    kl = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "kl"), key=lambda m: m.step)]
    assert kl[0] == pytest.approx(0.0, abs=fp32_tolerance(64)), "the first rollout is the starting policy's own"
    assert kl[1] > 1e-4, "KL against the adapter-free policy grows once the adapters train"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "policy")}
    assert "policy/adapter_model.safetensors" in artifacts and "policy/model.safetensors" not in artifacts


def test_deepspeed_is_refused_naming_the_key():
    """FSDP2 shards PPO's policy and value backbone (tests/test_distributed.py); DeepSpeed is not wired up, and a
    DeepSpeed launch is refused before anything trains instead of running unsharded."""
    from types import SimpleNamespace

    from superhf_lab.core.errors import ConfigError
    from superhf_lab.runtime.distributed import Processes

    config = GPTNeoXConfig(
        vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    )
    actor_critic = ActorCritic(GPTNeoXForCausalLM(config), None, torch.nn.Linear(8, 1))
    kind = SimpleNamespace(value="DEEPSPEED")
    deepspeed = Processes(SimpleNamespace(process_index=0, num_processes=2, distributed_type=kind))
    with pytest.raises(ConfigError, match=r"distributed\.engine.*FSDP2"):
        PPOTrainer(
            PPOAlgorithmConfig(), 0.1, TextConfig(), actor_critic, None, None, None, None, CPU, "fp32", deepspeed
        )
