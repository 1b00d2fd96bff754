"""The baselines on the plugin API: GRPO, RLOO, DPO and FeedME log the shared metrics, cut completions as SuperHF
does and read preference pairs (resuming after a kill: tests/test_kill_anywhere.py)."""

import json
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import compose_config, run_cli

from superhf_lab.algorithms.registry import get_algorithm
from superhf_lab.algorithms.trl_glue import CutAtNextTurn
from superhf_lab.config.schema import DataConfig, DataSourceConfig, RewardModelConfig
from superhf_lab.launch.compose import validate_config
from superhf_lab.metrics.overoptimisation import FIT_NAMES, PATH_NAMES, PEAK_NAMES
from superhf_lab.training.context import RunContext
from superhf_lab.training.data import DataFileError, PreferencePair, load_pairs
from superhf_lab.training.models import load_tokenizer

BUDGET = 1280  # completions (or preference pairs) of the SuperHF tiny default


def test_every_algorithm_has_a_tiny_preset_with_superhfs_budget():
    budgets = {}
    for name in ("superhf", "ppo", "grpo", "rloo", "dpo", "feedme"):
        algorithm = validate_config(compose_config([f"algorithm={name}"])).algorithm
        budgets[name] = {
            "superhf": lambda a: a.num_superbatches * a.prompt_accumulation_steps * a.superbatch_size,
            "ppo": lambda a: a.num_updates * a.batch_size,
            "grpo": lambda a: a.num_steps * a.prompts_per_step * a.group_size,
            "rloo": lambda a: a.num_steps * a.prompts_per_step * a.group_size,
            "dpo": lambda a: a.num_steps * a.pairs_per_step,
            "feedme": lambda a: a.num_steps * a.examples_per_step,
        }[name](algorithm)
    assert budgets == dict.fromkeys(budgets, BUDGET)


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_preference_pairs_come_from_hh_rlhf_and_webgpt_rows(tmp_path):
    prefix = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How do I bake bread?\n\nAssistant:"
    hh = _write(
        tmp_path / "hh.jsonl",
        [
            {"chosen": prefix + " Knead the dough.", "rejected": prefix + " No idea."},
            {"chosen": prefix + " Same.", "rejected": prefix + " Same."},  # no preference: skipped
            {"chosen": "\n\nHuman: A\n\nAssistant: B", "rejected": "\n\nHuman: C\n\nAssistant: D"},  # diverge: skipped
        ],
    )
    webgpt = _write(
        tmp_path / "webgpt.jsonl",
        [
            {
                "question": {"full_text": "Why is the sky blue?"},
                "answer_0": "Dust.",
                "answer_1": "Rayleigh scattering.",
                "score_0": -1.0,
                "score_1": 1.0,
            },
            {"question": {"full_text": "Tie?"}, "answer_0": "a", "answer_1": "b", "score_0": 0.0, "score_1": 0.0},
        ],
    )
    config = DataConfig(
        shuffle=False,
        sources={
            "hh": DataSourceConfig(kind="hh_rlhf", path=str(hh), test_size=0),
            "webgpt": DataSourceConfig(kind="webgpt", path=str(webgpt), test_size=0),
        },
    )
    pairs = load_pairs(config, "train", seed=0)
    assert pairs.pairs == [
        PreferencePair(prefix, " Knead the dough.", " No idea."),
        PreferencePair("\n\nHuman: Why is the sky blue?\n\nAssistant:", " Rayleigh scattering.", " Dust."),
    ]
    assert pairs.counts == {"hh": 1, "webgpt": 1}
    broken = _write(tmp_path / "broken.jsonl", [{"chosen": prefix + " x"}])
    with pytest.raises(DataFileError, match="broken.jsonl:1: expected a JSON object with 'chosen' and 'rejected'"):
        load_pairs(
            DataConfig(sources={"b": DataSourceConfig(kind="hh_rlhf", path=str(broken), test_size=0)}), "train", seed=0
        )


def test_preferences_need_a_format_with_a_preference():
    from superhf_lab.core.errors import ConfigError

    with pytest.raises(ConfigError, match="preferences.sources.tiny_world.kind='prompts' is invalid: use one of"):
        validate_config(compose_config(["preferences.sources.tiny_world.kind=prompts"]))


def test_group_policy_completions_are_cut_in_the_loss_mask_as_superhf_cuts_them(tiny_world):
    tokenizer = load_tokenizer(str(tiny_world.policy), None, "model.name_or_path")

    class Generator:
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields):
            return [tokenizer(text, add_special_tokens=False).input_ids for text in generated]

    class Cutting(CutAtNextTurn, Generator):
        _tokenizer = tokenizer

    generated = [" Knead the dough.\n\nHuman: and then?", " Bake it for an hour"]
    cut = Cutting()._generate_single_turn([[1], [1]], None, {})
    assert cut[0] == tokenizer(" Knead the dough.", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    assert cut[1] == tokenizer(" Bake it for an hour", add_special_tokens=False).input_ids, "no end, no EOS"


def test_the_text_reward_scores_cut_completions_with_the_reward_models_own_tokenizer(tiny_world):
    from superhf_lab.algorithms.trl_glue import TextReward
    from superhf_lab.tracking.tracker import ReplicaTracker
    from superhf_lab.training.context import TrainingSetup
    from superhf_lab.training.rewards import ModelRewardScorer

    config = validate_config(compose_config([f"tiny_world.dir={tiny_world.root}"]))
    scorer = ModelRewardScorer(
        RewardModelConfig(name_or_path=str(tiny_world.reward_model)), "reward_model", torch.device("cpu"), "fp32", 8
    )
    tokenizer = load_tokenizer(str(tiny_world.policy), None, "model.name_or_path")
    setup = TrainingSetup(None, None, tokenizer, None, scorer, None)
    reward = TextReward(setup, RunContext(config, ReplicaTracker(), torch.device("cpu")))
    prompt = "\n\nHuman: How do I bake bread?\n\nAssistant:"
    rewards = reward([prompt], [" Knead it. Human: great answer!"], [[5, 6, tokenizer.eos_token_id]])
    expected = scorer.score([prompt], [" Knead it."], config.text.reward_input)
    assert rewards == expected, "exact: the same reward model on the same cut text, alone in its batch"
    scored, _ = reward.take_scored()
    assert [(c.text, c.finished, c.num_tokens) for c in scored] == [(" Knead it.", True, 2)]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "dpo", "feedme"])
def test_baseline_logs_the_shared_metrics_every_step_then_evaluates_and_saves(algorithm, tiny_world, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_cli(
        [
            f"algorithm={algorithm}",
            f"tiny_world.dir={tiny_world.root}",
            "algorithm.num_steps=2",
            f"mlflow.tracking_uri={uri}",
            "eval.prompts_per_source=4",
            "eval.meteor_pairs_per_source=8",
            "eval.every_n_steps=1",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("tiny_world").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.tags["algorithm"] == algorithm
    for name in get_algorithm(algorithm).metric_names:
        if name in PEAK_NAMES:
            continue  # logged only when the fitted gold gain turns down
        # every step's metrics and evaluation (eval.every_n_steps=1) at steps 0 and 1; the path starts at the
        # starting policy (0) and is fitted at its end
        expected = {**dict.fromkeys(PATH_NAMES, [0, 1, 2]), **dict.fromkeys(FIT_NAMES, [2])}.get(name, [0, 1])
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, name)) == expected, name
    assert run.data.metrics["eval/all/kl"] > 0, "the policy moved away from the starting one"
    assert "superhf_lab.policy_uri" in run.data.tags
