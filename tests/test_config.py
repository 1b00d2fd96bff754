"""Bad configuration fails before any model loads, naming the key and the fix."""

import pytest
from omegaconf import open_dict

from conftest import compose_config, run_cli
from superhf_lab.config import ConfigError, ObjectiveConfig, validate_config
from superhf_lab.runner import prepare


def test_default_config_validates_into_typed_sections():
    config = validate_config(compose_config([]))
    assert type(config.algorithm).__name__ == "SuperHFConfig"
    assert config.heldout_reward_model.kind == "gold"
    assert config.model.name_or_path.endswith("tiny_world/policy")


@pytest.mark.parametrize("experiment", ["tiny", "paper_table2", "superhf_arxiv", "paper_ppo_table3"])
def test_every_experiment_validates(experiment):
    config = validate_config(compose_config([f"experiment={experiment}"]))
    assert config.algorithm.name in ("superhf", "ppo")


def test_the_tiny_experiment_serves_either_algorithm_with_the_same_budget():
    superhf = validate_config(compose_config([])).algorithm
    ppo = validate_config(compose_config(["algorithm=ppo"])).algorithm
    assert type(ppo).__name__ == "PPOAlgorithmConfig"
    completions = superhf.num_superbatches * superhf.prompt_accumulation_steps * superhf.superbatch_size
    assert completions == ppo.num_updates * ppo.batch_size == 1280


def test_paper_ppo_experiment_carries_table_3():
    config = validate_config(compose_config(["experiment=paper_ppo_table3"]))
    algo = config.algorithm
    assert (algo.batch_size, algo.num_ppo_epochs, algo.cliprange, algo.cliprange_value, algo.vf_coef) == (32, 4, 0.2, 0.2, 0.1)
    assert (algo.gamma, algo.lam, config.kl_coef) == (1.0, 0.95, 0.2)
    assert (algo.adaptive_kl.enabled, algo.adaptive_kl.target, algo.adaptive_kl.horizon) == (True, 6.0, 10000.0)


def test_paper_table2_carries_the_reports_hyperparameters():
    config = validate_config(compose_config(["experiment=paper_table2"]))
    algo = config.algorithm
    assert config.model.name_or_path == "theblackcat102/pythia-1b-deduped-sft"
    assert config.reward_model.name_or_path == "OpenAssistant/reward-model-deberta-v3-large-v2"
    assert (algo.learning_rate, algo.lr_schedule, algo.warmup_superbatches) == (1e-5, "cosine", 100)
    assert (algo.max_new_tokens, algo.repetition_penalty, algo.temperature, algo.top_p) == (64, 1.05, 1.0, 0.9)
    assert (algo.minibatch_size_generating, algo.minibatch_size_finetuning, config.precision) == (32, 8, "fp32")


def test_arxiv_experiment_uses_lora_and_a_conversation_prompt():
    config = validate_config(compose_config(["experiment=superhf_arxiv"]))
    algo = config.algorithm
    assert (algo.superbatch_size, algo.prompt_accumulation_steps, config.kl_coef, algo.learning_rate) == (16, 2, 0.35, 2e-5)
    assert (algo.lora.enabled, algo.lora.r, algo.lora.alpha, algo.lora.dropout) == (True, 4, 32, 0.05)
    assert algo.conversation_prompt.count("\n\nHuman:") == 2 and algo.num_superbatches * 2 == 10_000


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algorithm.superbatch_size=-4", "algorithm.superbatch_size=-4 is invalid"),
        ("algorithm.top_k=17", "algorithm.top_k=17 is invalid: keep at most algorithm.superbatch_size=16"),
        ("algorithm.temperature=0", "algorithm.temperature=0.0 is invalid"),
        ("kl_coef=-0.1", "kl_coef=-0.1 is invalid"),
        ("kl_coef=lots", "config key 'kl_coef'"),
        ("+algorithm.superbatchsize=8", "config key 'algorithm.superbatchsize'"),
        ("algorithm.lr_schedule=step", "algorithm.lr_schedule='step' is invalid"),
        ("precision=fp8", "precision='fp8' is invalid"),
        ("algorithm.name=dpo", "available algorithms are ['best_of_n', 'ppo', 'superhf']"),
    ],
)
def test_impossible_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_config(compose_config([override]))


def test_fail_fast_checks_run_before_any_model_is_loaded(tmp_path):
    store = f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"
    cfg = compose_config(["objective.metrics=[reward/mean,reward/median]", store])
    with pytest.raises(ConfigError, match="objective.metrics='reward/median' is invalid: superhf logs"):
        prepare(cfg)
    cfg = compose_config(["objective.metrics=[heldout_reward/mean]", "heldout_reward_model=null", store])
    with pytest.raises(ConfigError, match="objective.metrics='heldout_reward/mean' is invalid: heldout_reward_model is null"):
        prepare(cfg)
    cfg = compose_config(["device=cuda:3"])
    with pytest.raises(ConfigError, match="device='cuda:3'|no CUDA"):
        prepare(cfg)


def test_objective_averages_the_tail_and_subtracts_penalties():
    history = {"reward/mean": [0.0, 1.0, 3.0], "diversity/meteor_similarity": [0.5, 0.2, float("nan")]}
    assert ObjectiveConfig(metrics=["reward/mean"], last_n=2).value(history) == 2.0
    penalised = ObjectiveConfig(metrics=["reward/mean"], penalties={"diversity/meteor_similarity": 2.0}, last_n=2)
    assert penalised.value(history) == pytest.approx(2.0 - 2.0 * 0.35), "NaN values are left out of the mean"
    both = ObjectiveConfig(metrics=["reward/mean", "diversity/meteor_similarity"], last_n=1)
    assert both.value(history) == (3.0, 0.2)


def test_study_configs_compose_from_any_directory(tmp_path, monkeypatch):
    """sweeps/hparams_search is on Hydra's search path through the project's plugin, not the cwd."""
    monkeypatch.chdir(tmp_path)
    for study, direction in (("kl_coef", "maximize"), ("learning_rate", "maximize"),
                             ("superbatch_top_k", "maximize"), ("reward_vs_diversity", ["maximize", "minimize"])):
        cfg = compose_config([f"hparams_search={study}"], return_hydra_config=True)
        sweeper = cfg.hydra.sweeper
        assert "OptunaSweeper" in sweeper._target_ and sweeper.max_failure_rate == 1.0
        assert (sweeper.direction if isinstance(direction, str) else list(sweeper.direction)) == direction
        assert len(cfg.objective.metrics) == (2 if isinstance(direction, list) else 1)
        with open_dict(cfg):
            del cfg.hydra
        validate_config(cfg)


def test_dead_tracking_server_fails_before_training(tmp_path):
    cfg = compose_config(["mlflow.tracking_uri=http://127.0.0.1:9"])
    with pytest.raises(ConfigError, match="mlflow.tracking_uri='http://127.0.0.1:9' is unreachable"):
        prepare(cfg)


def test_cli_rejects_an_unknown_group_option_and_lists_the_options(tmp_path):
    result = run_cli(["algorithm=dpo"], cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "Could not find 'algorithm/dpo'" in result.stderr
    assert "superhf" in result.stderr  # Hydra lists the available options


def test_cli_reports_a_config_error_with_exit_code_2(tmp_path):
    result = run_cli(["algorithm.top_k=99"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "algorithm.top_k=99 is invalid" in result.stderr
    assert not (tmp_path / ".cache").exists(), "nothing is built or loaded for an invalid config"
