"""Prompt files: clear errors for bad files, a seeded prompt stream."""

import json

import pytest

from superhf_lab.config import ConfigError, DataConfig
from superhf_lab.data import DataFileError, PromptStream, load_training_prompts


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_prompts_over_the_length_limit_are_dropped(tmp_path):
    path = _write(tmp_path / "p.jsonl", [json.dumps({"prompt": "\n\nHuman: hi\n\nAssistant:"}),
                                         json.dumps({"prompt": "x" * 50})])
    assert load_training_prompts(DataConfig(train_path=str(path), max_prompt_chars=40)) == ["\n\nHuman: hi\n\nAssistant:"]
    with pytest.raises(ConfigError, match="data.max_prompt_chars=5 is invalid"):
        load_training_prompts(DataConfig(train_path=str(path), max_prompt_chars=5))


def test_corrupt_line_is_reported_with_file_and_line_number(tmp_path):
    path = _write(tmp_path / "p.jsonl", [json.dumps({"prompt": "ok"}), '{"prompt": "cut off', json.dumps({"prompt": "ok"})])
    with pytest.raises(DataFileError, match=r"p\.jsonl:2: expected a JSON object"):
        load_training_prompts(DataConfig(train_path=str(path)))


@pytest.mark.parametrize("content", ["", "\n\n", json.dumps({"text": "no prompt key"})])
def test_empty_or_wrong_files_fail_clearly(tmp_path, content):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(DataFileError, match="p.jsonl"):
        load_training_prompts(DataConfig(train_path=str(path)))


def test_missing_file_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="data.train_path=.*no such file"):
        load_training_prompts(DataConfig(train_path=str(tmp_path / "absent.jsonl")))


def test_prompt_stream_is_seeded_and_reshuffles_each_epoch():
    prompts = [f"p{i}" for i in range(5)]
    first = PromptStream(prompts, seed=3)
    order = first.take(5) + first.take(5)
    assert sorted(order[:5]) == prompts and sorted(order[5:]) == prompts
    assert order[:5] != order[5:]
    assert PromptStream(prompts, seed=3).take(10) == order
    assert PromptStream(prompts, seed=4).take(5) != order[:5]
    assert first.position == 10
