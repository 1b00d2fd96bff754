"""Bad configuration fails before any model loads, naming the key and the fix."""

import re

import pytest
from conftest import ROOT, compose_config, run_cli
from omegaconf import OmegaConf, open_dict
from tolerances import fp64_tolerance

from superhf_lab.algorithms.registry import available_algorithms, get_algorithm
from superhf_lab.config.defaults import RUN_DEFAULTS, run_defaults
from superhf_lab.config.keys import config_keys
from superhf_lab.config.schema import ObjectiveConfig, RunConfig
from superhf_lab.core.errors import ConfigError
from superhf_lab.launch.compose import validate_config
from superhf_lab.launch.keys import generated_block, keys_markdown
from superhf_lab.launch.runner import prepare


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
    assert (algo.batch_size, algo.num_ppo_epochs, algo.cliprange, algo.cliprange_value, algo.vf_coef) == (
        32,
        4,
        0.2,
        0.2,
        0.1,
    )
    assert (algo.gamma, algo.lam, config.kl_coef) == (1.0, 0.95, 0.2)
    assert (algo.adaptive_kl.enabled, algo.adaptive_kl.target, algo.adaptive_kl.horizon) == (True, 6.0, 10000.0)
    assert (algo.top_p, algo.max_grad_norm, algo.kl_estimator, algo.value_model) == (1.0, None, "k1", "shared_backbone")


def test_paper_table2_carries_the_reports_hyperparameters():
    config = validate_config(compose_config(["experiment=paper_table2"]))
    algo = config.algorithm
    assert config.model.name_or_path == "theblackcat102/pythia-1b-deduped-sft"
    assert config.reward_model.name_or_path == "OpenAssistant/reward-model-deberta-v3-large-v2"
    assert (algo.learning_rate, algo.lr_schedule, algo.warmup_superbatches) == (1e-5, "cosine", 100)
    assert (algo.max_new_tokens, algo.repetition_penalty, algo.temperature, algo.top_p) == (64, 1.05, 1.0, 0.9)
    assert (algo.minibatch_size_generating, algo.minibatch_size_finetuning, config.precision) == (32, 8, "fp32")


# openfeedback/superhf experiments/superhf/shf_iterative_v1/configs/default.yaml, key: value (and where it lands here).
REFERENCE_DEFAULT_YAML = {
    "seed": ("seed", 66),
    "learning_rate": ("algorithm.learning_rate", 2e-5),
    "scheduler_name": ("algorithm.lr_schedule", "cosine"),
    "scheduler_warmup_steps": ("algorithm.warmup_superbatches", 32),
    "kl_coefficient": ("kl_coef", 0.35),
    "max_prompt_char_length": ("data.max_prompt_chars", 1024),
    "temperature": ("algorithm.temperature", 1.0),
    "top_p": ("algorithm.top_p", 0.95),
    "prompt_accumulation_steps": ("algorithm.prompt_accumulation_steps", 2),
    "superbatch_size": ("algorithm.superbatch_size", 16),
    "completion_filter_top_k": ("algorithm.top_k", 1),
    "max_new_tokens": ("algorithm.max_new_tokens", 64),
    "max_length_rm": ("reward_model.max_length", 1024),
    "minibatch_size_generating": ("algorithm.minibatch_size_generating", 16),
    "minibatch_size_scoring": ("algorithm.minibatch_size_scoring", 8),
    "minibatch_size_finetuning": ("algorithm.minibatch_size_finetuning", 2),
    "mixed_precision": ("precision", "bf16"),
    "lora_r": ("algorithm.lora.r", 4),
    "lora_alpha": ("algorithm.lora.alpha", 32),
    "lora_dropout": ("algorithm.lora.dropout", 0.05),
    "lora_target_modules": ("algorithm.lora.target_modules", ["q_proj", "v_proj"]),
    "conversation_prompt": (
        "algorithm.conversation_prompt",
        "A human user sends a message, and a helpful and harmless AI assistant responds.",
    ),
    "repetition_penalty": ("algorithm.repetition_penalty", 1.0),
    "no_repeat_ngram_size": ("algorithm.no_repeat_ngram_size", 0),
    "length_penalty": ("algorithm.length_penalty", 0.0),
}


def test_arxiv_experiment_is_the_reference_default_yaml_key_by_key():
    cfg = compose_config(["experiment=superhf_arxiv"])
    config = validate_config(cfg)
    for reference_key, (key, value) in REFERENCE_DEFAULT_YAML.items():
        assert OmegaConf.select(cfg, key) == value, reference_key
    algo = config.algorithm
    assert algo.num_superbatches * algo.prompt_accumulation_steps == 10_000, "num_prompts"
    assert config.model.name_or_path == "huggyllama/llama-7b" and config.heldout_reward_model is None
    counts = {name: source.count for name, source in config.data.sources.items()}
    assert counts == dict.fromkeys(
        ["red_team_attempts", "helpful_base", "harmless_base", "webgpt_comparisons", "self_instruct"], 2000
    ), "prompt_dataset_names, num_prompts // 5 each"
    # Where the reference's code, not its YAML, decides: generate's default top-k, AdamW's default weight decay,
    # no gradient clipping, its loss, cut pattern and length-penalty form, and its scoring text.
    assert (algo.generation_top_k, algo.weight_decay, algo.max_grad_norm) == (50, 0.01, None)
    assert (algo.kl_direction, algo.loss_reduction, algo.kl_mask, algo.length_penalty_form) == (
        "reference_to_policy",
        "reference",
        "unshifted",
        "log",
    )
    assert config.text.cut == "reference"
    assert config.text.reward_input == algo.conversation_prompt + "{prompt} {completion}"
    assert (config.eval.prompts_per_source, config.eval.sampling.temperature, config.eval.cut) == (
        200,
        0.7,
        "reference",
    )


def test_paper_eval_preset_is_the_references_test_scoring():
    config = validate_config(compose_config(["eval=paper"]))
    sampling = config.eval.sampling
    assert (sampling.temperature, sampling.top_p, sampling.generation_top_k, sampling.max_new_tokens) == (
        0.7,
        0.95,
        50,
        128,
    )
    assert (config.eval.prompts_per_source, config.eval.meteor_pairs_per_source, sampling.conversation_prompt) == (
        200,
        128,
        "",
    )
    assert config.eval.reward_input.startswith("A human user sends a message, and a helpful and harmless AI")
    assert config.text.reward_input == "{prompt} {completion}", "training keeps its own scoring text"
    assert validate_config(compose_config([])).eval.sampling.max_new_tokens == 48, "the tiny world's own preset"


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
        ("algorithm.name=super_hf", "algorithm.name='super_hf' is invalid: available algorithms are ['best_of_n', "),
        ("text.cut=semicolon", "text.cut='semicolon' is invalid: use one of ('next_turn', 'reference')"),
        ("text.reward_input='{prompt}'", "text.reward_input='{prompt}' is invalid: write {prompt} and {completion}"),
        ("algorithm.kl_direction=both", "algorithm.kl_direction='both' is invalid"),
        ("algorithm.loss_reduction=sum", "algorithm.loss_reduction='sum' is invalid"),
    ],
)
def test_impossible_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(compose_config([override]))


def test_fail_fast_checks_run_before_any_model_is_loaded(tmp_path):
    store = f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"
    cfg = compose_config(["objective.metrics=[reward/mean,reward/median]", store])
    with pytest.raises(ConfigError, match="objective.metrics='reward/median' is invalid: superhf logs"):
        prepare(cfg)
    cfg = compose_config(["objective.metrics=[heldout_reward/mean]", "heldout_reward_model=null", store])
    with pytest.raises(
        ConfigError, match="objective.metrics='heldout_reward/mean' is invalid: heldout_reward_model is null"
    ):
        prepare(cfg)
    cfg = compose_config(["device=cuda:3"])
    with pytest.raises(ConfigError, match="device='cuda:3'|no CUDA"):
        prepare(cfg)


def test_objective_averages_the_tail_and_subtracts_penalties():
    history = {"reward/mean": [0.0, 1.0, 3.0], "diversity/meteor_similarity": [0.5, 0.2, float("nan")]}
    assert ObjectiveConfig(metrics=["reward/mean"], last_n=2).value(history) == 2.0  # exact: (1 + 3) / 2
    penalised = ObjectiveConfig(metrics=["reward/mean"], penalties={"diversity/meteor_similarity": 2.0}, last_n=2)
    # a 2-term mean, a product and a difference in float64, on numbers up to 2 (the result 1.3): 4 roundings x 2
    assert penalised.value(history) == pytest.approx(2.0 - 2.0 * 0.35, rel=fp64_tolerance(4, 2)), (
        "NaN values are left out of the mean"
    )
    both = ObjectiveConfig(metrics=["reward/mean", "diversity/meteor_similarity"], last_n=1)
    assert both.value(history) == (3.0, 0.2), "exact: the mean of one value is that value"


def test_study_configs_compose_from_any_directory(tmp_path, monkeypatch):
    """sweeps/hparams_search is on Hydra's search path through the project's plugin, not the cwd."""
    monkeypatch.chdir(tmp_path)
    for study, direction in (
        ("kl_coef", "maximize"),
        ("learning_rate", "maximize"),
        ("superbatch_top_k", "maximize"),
        ("reward_vs_diversity", ["maximize", "minimize"]),
    ):
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
    result = run_cli(["algorithm=super_hf"], cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "Could not find 'algorithm/super_hf'" in result.stderr
    assert "superhf" in result.stderr  # Hydra lists the available options


def test_cli_reports_a_config_error_with_exit_code_2(tmp_path):
    result = run_cli(["algorithm.top_k=99"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "algorithm.top_k=99 is invalid" in result.stderr
    assert not (tmp_path / ".cache").exists(), "nothing is built or loaded for an invalid config"


def test_the_readme_key_tables_are_the_generators_output():
    """A changed default or meaning fails here until `python -m superhf_lab.launch.keys --write README.md` is run."""
    readme = (ROOT / "README.md").read_text()
    assert generated_block(readme) == keys_markdown(), "run: python -m superhf_lab.launch.keys --write README.md"


@pytest.mark.parametrize(
    "config_class",
    [RunConfig, *(get_algorithm(name).config_class for name in available_algorithms())],
    ids=lambda c: c.__name__,
)
def test_every_key_has_its_meaning_next_to_its_default(config_class):
    """Every field, nested ones included, carries metadata={"help": ...} (inherited fields from their own class)."""
    keys = config_keys(config_class, "algorithm." if config_class is not RunConfig else "")
    assert keys and [key.name for key in keys if not key.help.strip()] == []


def test_composition_repeats_no_default_and_keeps_top_level_keys_overridable():
    """config.yaml's run_defaults come from RunConfig, so the top-level keys need no `+` to override."""
    cfg = compose_config(["kl_coef=0.2", "seed=3", "mlflow.retry_every_s=5", "precision=bf16"])
    assert (cfg.kl_coef, cfg.seed, cfg.mlflow.retry_every_s, cfg.precision) == (0.2, 3, 5, "bf16")
    defaults = run_defaults()
    assert set(defaults) <= set(compose_config([])) and defaults["mlflow"] == OmegaConf.to_container(
        OmegaConf.structured(RunConfig).mlflow
    )
    config_yaml = OmegaConf.load(ROOT / "conf" / "config.yaml")
    assert set(config_yaml) == {"defaults", "output_dir", "hydra"}, "conf/config.yaml holds no default of the schema"
    assert config_yaml.defaults[0] == RUN_DEFAULTS
