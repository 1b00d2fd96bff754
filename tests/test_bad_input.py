"""The README's "Bad input" table, row by row: each input fails before training, naming the key and the fix."""

from __future__ import annotations

import json
import re

import httpx2
import mlflow
import pytest
import torch
from conftest import compose_config, run_cli
from huggingface_hub import HfApi
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import RepositoryNotFoundError
from hydra.errors import MissingConfigException
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from superhf_lab.config.schema import RewardModelConfig
from superhf_lab.core.errors import ConfigError
from superhf_lab.launch.compose import validate_config
from superhf_lab.launch.runner import prepare
from superhf_lab.training.data import DataFileError, load_training_prompts
from superhf_lab.training.models import check_context_fits, load_reward_model


def _store(tmp_path) -> str:
    return f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"


def test_unknown_config_group_option_lists_the_available_ones():
    with pytest.raises(MissingConfigException, match="Could not find 'algorithm/super_hf'") as error:
        compose_config(["algorithm=super_hf"])
    listed = str(error.value).split("Available options in 'algorithm':")[1].split("\n\n")[0].split()
    assert {"superhf", "ppo", "best_of_n", "evaluate"} <= set(listed)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+algorithm.superbatchsize=8",
            "config key 'algorithm.superbatchsize': Key 'superbatchsize' not in 'SuperHFConfig'",
        ),
        ("kl_coef=lots", "config key 'kl_coef': Value 'lots' of type 'str' could not be converted to Float"),
        ("algorithm.temperature=0", "algorithm.temperature=0.0 is invalid: "),
        ("kl_coef=-0.1", "kl_coef=-0.1 is invalid: use a finite value >= 0"),
        ("algorithm.top_k=17", "algorithm.top_k=17 is invalid: keep at most algorithm.superbatch_size=16 completions"),
    ],
)
def test_misspelt_key_wrong_type_impossible_value_and_top_k_above_the_completions(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(compose_config([override]))


def test_missing_local_model_folder_names_the_key(tmp_path):
    with pytest.raises(
        ConfigError, match=r"model.name_or_path='.*/no-such-policy' is invalid: no such folder. Point it"
    ):
        prepare(compose_config([f"model.name_or_path={tmp_path}/no-such-policy", _store(tmp_path)]))
    with pytest.raises(ConfigError, match=r"reward_model.name_or_path='.*/no-such-rm' is invalid: no such folder"):
        prepare(compose_config([f"reward_model.name_or_path={tmp_path}/no-such-rm", _store(tmp_path)]))


def test_a_folder_without_a_model_names_the_key(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"model.name_or_path='.*/empty' is invalid: the folder holds no config.json"):
        prepare(compose_config([f"model.name_or_path={tmp_path}/empty", _store(tmp_path)]))


def test_an_unknown_hub_name_offline_names_the_key(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        ConfigError,
        match="model.name_or_path='no-such-org/no-such-model' is not in the local Hugging "
        "Face cache and HF_HUB_OFFLINE is set",
    ):
        prepare(compose_config(["model.name_or_path=no-such-org/no-such-model", _store(tmp_path)]))


def test_an_unknown_hub_name_with_the_hub_down_or_answering_not_found_names_the_key(tmp_path, monkeypatch):
    """Both answers of the Hub, without depending on this machine's network."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    cfg = compose_config(["reward_model.name_or_path=no-such-org/no-such-rm", _store(tmp_path)])

    def unreachable(self, repo_id, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(HfApi, "model_info", unreachable)
    with pytest.raises(
        ConfigError,
        match=r"reward_model.name_or_path='no-such-org/no-such-rm' cannot be fetched: it is "
        r"not in the local Hugging Face cache and the Hub is unreachable",
    ):
        prepare(cfg)

    def not_found(self, repo_id, **kwargs):
        url = f"https://huggingface.co/api/models/{repo_id}"
        raise RepositoryNotFoundError("404", response=httpx2.Response(404, request=httpx2.Request("GET", url)))

    monkeypatch.setattr(HfApi, "model_info", not_found)
    with pytest.raises(
        ConfigError,
        match=r"reward_model.name_or_path='no-such-org/no-such-rm' is invalid: the Hugging "
        r"Face Hub has no such model",
    ):
        prepare(cfg)


@pytest.fixture
def two_label_classifier(tiny_world, tmp_path):
    """A sequence classifier with two outputs (a sentiment-style head), saved as save_pretrained writes it."""
    config = AutoConfig.from_pretrained(tiny_world.reward_model, num_labels=2)
    folder = tmp_path / "two_label_classifier"
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_world.reward_model).save_pretrained(folder)
    return folder


def test_a_reward_model_whose_head_is_not_a_single_score_names_the_key(two_label_classifier, tmp_path):
    message = (
        r"reward_model.name_or_path='.*two_label_classifier' is invalid: its head has 2 outputs, a reward model "
        r"needs a single score \(num_labels=1\)"
    )
    with pytest.raises(ConfigError, match=message):  # found from its config before any run opens
        prepare(compose_config([f"reward_model.name_or_path={two_label_classifier}", _store(tmp_path)]))
    with pytest.raises(ConfigError, match=message):  # and when the model itself is loaded
        load_reward_model(
            RewardModelConfig(name_or_path=str(two_label_classifier)), "reward_model", torch.device("cpu")
        )


def _harmless_base_from(path) -> list[str]:
    return [
        "data=hh_harmless_base",
        f"data.sources.harmless_base.path={path}",
        f"data.sources.harmless_base.test_path={path}",
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"p\.jsonl: holds no JSON rows"),
        (
            '{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: hello"}\n{"chosen": "cut off',
            r"p\.jsonl:2: expected a JSON object",
        ),
    ],
)
def test_an_empty_or_corrupt_data_file_names_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    config = validate_config(compose_config(_harmless_base_from(path)))
    with pytest.raises(DataFileError, match=message):
        load_training_prompts(config.data, seed=0)


def test_a_prompt_longer_than_the_policys_context_names_both_fixes(tiny_world):
    tokenizer = AutoTokenizer.from_pretrained(tiny_world.policy)
    model_config = AutoConfig.from_pretrained(tiny_world.policy)
    prompts = [json.loads(line)["prompt"] for line in (tiny_world.root / "prompts" / "train.jsonl").open()][:50]
    check_context_fits(tokenizer, model_config, prompts, max_new_tokens=48, max_prompt_chars=1024)
    long_prompt = "\n\nHuman: " + " ".join(str(n) for n in range(200, 300)) + "\n\nAssistant:"  # ~400 tokens
    assert len(long_prompt) < 1024
    with pytest.raises(ConfigError) as error:
        check_context_fits(tokenizer, model_config, [*prompts, long_prompt], max_new_tokens=48, max_prompt_chars=1024)
    message = str(error.value)
    assert message.startswith(
        "algorithm.max_new_tokens=48 does not fit the policy's context: the longest training prompt"
    )
    assert f"lower data.max_prompt_chars (now 1024) to {len(long_prompt) - 1} to drop the 1 of 51" in message
    with pytest.raises(ConfigError, match=r"lower algorithm.max_new_tokens to \d+ or less"):
        check_context_fits(tokenizer, model_config, prompts, max_new_tokens=300, max_prompt_chars=1024)
    with pytest.raises(ConfigError, match="longest training prompt is"):  # the conversation prompt counts too
        check_context_fits(
            tokenizer,
            model_config,
            prompts,
            max_new_tokens=48,
            max_prompt_chars=1024,
            conversation_prompt="\n\nHuman: hello\n\nAssistant: hi" * 40,
        )


def test_an_unreachable_tracking_server_names_the_key(tmp_path):
    with pytest.raises(
        ConfigError, match=r"mlflow.tracking_uri='http://127.0.0.1:9' is unreachable \(ConnectionError\)"
    ):
        prepare(compose_config(["mlflow.tracking_uri=http://127.0.0.1:9"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_one_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="device='cuda:3' is invalid: no CUDA device is visible"):
        prepare(compose_config(["device=cuda:3", _store(tmp_path)]))


# End to end: run.py prints "Configuration error: ..." and exits 2 before the first superbatch.


def _cli(tiny_world, tmp_path, *overrides):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_cli(
        [f"tiny_world.dir={tiny_world.root}", f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=bad", *overrides],
        cwd=tmp_path,
        timeout=300,
    )
    experiment = mlflow.MlflowClient(uri).get_experiment_by_name("bad")
    runs = mlflow.MlflowClient(uri).search_runs([experiment.experiment_id]) if experiment else []
    return result, runs


@pytest.mark.slow
def test_cli_missing_model_folder_exits_2_before_any_run_opens(tiny_world, tmp_path):
    result, runs = _cli(tiny_world, tmp_path, f"model.name_or_path={tmp_path}/no-such-policy")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Configuration error: model.name_or_path=" in result.stderr and "no such folder" in result.stderr
    assert runs == [], "nothing is logged for a run that cannot start"


@pytest.mark.slow
def test_cli_corrupt_data_file_exits_2_before_the_first_superbatch(tiny_world, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"chosen": "cut off\n')
    result, runs = _cli(tiny_world, tmp_path, *_harmless_base_from(path))
    assert result.returncode == 2, result.stderr[-2000:]
    assert re.search(r"Configuration error: .*p\.jsonl:1: expected a JSON object", result.stderr)
    assert [run.info.status for run in runs] == ["FAILED"] and "reward/mean" not in runs[0].data.metrics


@pytest.mark.slow
def test_cli_prompt_and_new_tokens_longer_than_the_context_exit_2_before_the_first_superbatch(tiny_world, tmp_path):
    result, runs = _cli(
        tiny_world,
        tmp_path,
        "algorithm.max_new_tokens=300",
        "algorithm.num_superbatches=1",
        "algorithm.warmup_superbatches=0",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Configuration error: algorithm.max_new_tokens=300 does not fit the policy's context" in result.stderr
    assert "lower algorithm.max_new_tokens to" in result.stderr
    assert [run.info.status for run in runs] == ["FAILED"] and "reward/mean" not in runs[0].data.metrics
