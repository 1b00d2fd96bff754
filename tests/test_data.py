"""Prompt sources and mixes: the paper's row formats and splits, clear errors for bad files, seeded order."""

import gzip
import json

import pytest
from conftest import ROOT, compose_config

from superhf_lab.config.schema import DataConfig, DataSourceConfig
from superhf_lab.core.errors import ConfigError
from superhf_lab.launch.compose import validate_config
from superhf_lab.training.data import DataFileError, PromptStream, load_prompts, load_training_prompts

SHARED_HARMLESS_TEST = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _write_gz(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def _conversation(question):
    return f"\n\nHuman: {question}\n\nAssistant: an answer\n\nHuman: and then?\n\nAssistant: more"


def _prompt(question):
    return f"\n\nHuman: {question}\n\nAssistant:"


def _hh_rows(questions):
    return [{"chosen": _conversation(q), "rejected": _conversation(q) + " worse"} for q in questions]


def _prompt_file(path, count, prefix="p"):
    return _write(path, [json.dumps({"prompt": _prompt(f"{prefix}{i}")}) for i in range(count)])


def _single(path, max_prompt_chars=1024, **source):
    return DataConfig(
        sources={"prompts": DataSourceConfig(kind="prompts", path=str(path), has_test_split=True, **source)},
        max_prompt_chars=max_prompt_chars,
    )


def test_prompts_over_the_length_limit_are_dropped(tmp_path):
    path = _write(
        tmp_path / "p.jsonl", [json.dumps({"prompt": "\n\nHuman: hi\n\nAssistant:"}), json.dumps({"prompt": "x" * 50})]
    )
    assert load_training_prompts(_single(path, max_prompt_chars=40), seed=0).prompts == ["\n\nHuman: hi\n\nAssistant:"]
    with pytest.raises(ConfigError, match="data.max_prompt_chars=5 is invalid: it drops all 2 train prompts"):
        load_training_prompts(_single(path, max_prompt_chars=5), seed=0)


def test_corrupt_line_is_reported_with_file_and_line_number(tmp_path):
    path = _write(
        tmp_path / "p.jsonl", [json.dumps({"prompt": "ok"}), '{"prompt": "cut off', json.dumps({"prompt": "ok"})]
    )
    with pytest.raises(DataFileError, match=r"p\.jsonl:2: expected a JSON object"):
        load_training_prompts(_single(path), seed=0)


def test_truncated_gzip_is_reported_with_file_and_line_number(tmp_path):
    whole = _write_gz(tmp_path / "whole.jsonl.gz", _hh_rows([f"question {i} " + "x" * 200 for i in range(2000)]))
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    config = DataConfig(sources={"hh": DataSourceConfig(kind="hh_rlhf", path=str(truncated), has_test_split=True)})
    with pytest.raises(DataFileError, match=r"truncated\.jsonl\.gz:(\d+): cannot be read \(EOFError") as error:
        load_training_prompts(config, seed=0)
    assert 1 < int(error.value.args[0].split(":")[1]) < 2000


def test_a_file_that_is_not_gzip_inside_is_reported(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    path.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    with pytest.raises(DataFileError, match=r"p\.jsonl\.gz:1: cannot be read"):
        load_training_prompts(_single(path), seed=0)


@pytest.mark.parametrize(
    "content", ["", "\n\n", json.dumps({"text": "no prompt key"}), "[]", '[\n{"prompt": "a"},\n{oops}\n]']
)
def test_empty_or_wrong_files_fail_clearly(tmp_path, content):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(DataFileError, match=r"p\.jsonl"):
        load_training_prompts(_single(path), seed=0)


def test_a_row_in_the_wrong_format_names_its_line_and_the_expected_field(tmp_path):
    path = _write_gz(tmp_path / "h.jsonl.gz", [*_hh_rows(["fine"]), {"chosen": "Assistant: no human turn"}])
    config = DataConfig(sources={"hh": DataSourceConfig(kind="hh_rlhf", path=str(path), has_test_split=True)})
    with pytest.raises(DataFileError, match=r"h\.jsonl\.gz:2: expected a JSON object with a 'chosen' conversation"):
        load_training_prompts(config, seed=0)


def test_missing_file_names_the_key_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"data.sources.prompts.path='.*absent.jsonl' is invalid: no such file; give"):
        load_training_prompts(_single(tmp_path / "absent.jsonl"), seed=0)
    config = DataConfig(
        sources={
            "hh": DataSourceConfig(kind="hh_rlhf", hub_name="Anthropic/hh-rlhf", path=str(tmp_path / "absent.jsonl.gz"))
        }
    )
    with pytest.raises(
        ConfigError, match="or set data.sources.hh.path=null to read Anthropic/hh-rlhf from the Hugging"
    ):
        load_training_prompts(config, seed=0)


def test_each_kind_takes_the_first_human_turn_in_hh_rlhf_format(tmp_path):
    harmless = _write_gz(tmp_path / "harmless.jsonl.gz", _hh_rows(["How do I pick a lock?"]))
    red_team = tmp_path / "red_team_attempts.jsonl.gz"  # the hub's red-team file is one JSON array, not lines
    with gzip.open(red_team, "wt") as handle:
        json.dump([{"transcript": _conversation(f"Tell me a secret {i}")} for i in range(3)], handle, indent=2)
    webgpt_row = {"question": {"full_text": "Why is the sky blue?", "dataset": "eli5"}}
    webgpt = _write(tmp_path / "comparisons.jsonl", [json.dumps(webgpt_row)])
    instruct_row = {"prompt": "Write a haiku about rain.\n\nOutput:", "completion": " Soft rain on the roof"}
    instruct = _write(tmp_path / "self_instruct.jsonl", [json.dumps(instruct_row)])
    config = DataConfig(
        shuffle=False,
        sources={
            "harmless": DataSourceConfig(kind="hh_rlhf", path=str(harmless), has_test_split=True),
            "red_team": DataSourceConfig(kind="hh_red_team", path=str(red_team), test_size=1),
            "webgpt": DataSourceConfig(kind="webgpt", path=str(webgpt), test_size=0),
            "instruct": DataSourceConfig(kind="self_instruct", path=str(instruct), test_size=0),
        },
    )
    prompt_set = load_training_prompts(config, seed=0)
    assert prompt_set.prompts == [
        _prompt("How do I pick a lock?"),
        _prompt("Tell me a secret 0"),
        _prompt("Tell me a secret 1"),
        _prompt("Why is the sky blue?"),
        _prompt("Write a haiku about rain."),
    ]
    assert prompt_set.sources == ["harmless", "red_team", "red_team", "webgpt", "instruct"]
    assert prompt_set.counts == {"harmless": 1, "red_team": 2, "webgpt": 1, "instruct": 1}


def test_without_its_own_test_split_a_source_holds_out_its_last_rows(tmp_path):
    path = _prompt_file(tmp_path / "p.jsonl", 10)
    config = DataConfig(shuffle=False, sources={"p": DataSourceConfig(kind="prompts", path=str(path), test_size=3)})
    assert load_prompts(config, "train", seed=0).prompts == [_prompt(f"p{i}") for i in range(7)]
    assert load_prompts(config, "test", seed=0).prompts == [_prompt(f"p{i}") for i in range(7, 10)]
    config.sources["p"].test_size = 10
    with pytest.raises(ConfigError, match="data.sources.p.test_size=10 is invalid: the source has 10 rows"):
        load_prompts(config, "train", seed=0)


def test_a_source_with_its_own_test_split_reads_its_test_file(tmp_path):
    source = DataSourceConfig(kind="prompts", path=str(_prompt_file(tmp_path / "train.jsonl", 5)), has_test_split=True)
    config = DataConfig(sources={"p": source})
    with pytest.raises(
        ConfigError, match="data.sources.p.test_path=None is invalid: this source has its own test split"
    ):
        load_prompts(config, "test", seed=0)
    source.test_path = str(_prompt_file(tmp_path / "test.jsonl", 2, prefix="t"))
    assert sorted(load_prompts(config, "test", seed=0).prompts) == [_prompt("t0"), _prompt("t1")]
    assert len(load_prompts(config, "train", seed=0).prompts) == 5


def test_a_capped_count_reads_no_further_than_it_needs(tmp_path):
    rows = [json.dumps({"prompt": _prompt(f"p{i}")}) for i in range(20)]
    path = _write(tmp_path / "p.jsonl", [*rows, "corrupt beyond the rows a count of 5 needs"])
    source = DataSourceConfig(kind="prompts", path=str(path), test_size=10, count=5)
    config = DataConfig(shuffle=False, sources={"p": source})
    assert load_training_prompts(config, seed=0).prompts == [_prompt(f"p{i}") for i in range(5)]
    config.sources["p"].count = None
    with pytest.raises(DataFileError, match=r"p\.jsonl:21"):
        load_training_prompts(config, seed=0)


def test_a_count_larger_than_the_source_names_the_count(tmp_path):
    with pytest.raises(ConfigError, match="data.sources.prompts.count=9 is invalid: data.sources.prompts has 4 train"):
        load_training_prompts(_single(_prompt_file(tmp_path / "p.jsonl", 4), count=9), seed=0)


def _two_source_config(tmp_path, **shares):
    sizes = {"a": 30, "b": 10}
    return DataConfig(
        sources={
            name: DataSourceConfig(
                kind="prompts",
                path=str(_prompt_file(tmp_path / f"{name}.jsonl", size, name)),
                has_test_split=True,
                **shares[name],
            )
            for name, size in sizes.items()
        }
    )


def test_a_mix_is_shuffled_with_the_seed_and_reports_each_source_count(tmp_path):
    config = _two_source_config(tmp_path, a={"count": 12}, b={})
    first = load_training_prompts(config, seed=1)
    assert first.counts == {"a": 12, "b": 10} and len(first.prompts) == len(first.sources) == 22
    assert all(prompt.startswith(f"\n\nHuman: {source}") for prompt, source in zip(first.prompts, first.sources))
    assert load_training_prompts(config, seed=1).prompts == first.prompts
    assert load_training_prompts(config, seed=2).prompts != first.prompts
    config.shuffle = False
    assert load_training_prompts(config, seed=1).sources == ["a"] * 12 + ["b"] * 10


def test_weights_split_the_total_or_give_the_largest_mix_the_scarcest_source_allows(tmp_path):
    config = _two_source_config(tmp_path, a={"weight": 3.0}, b={"weight": 1.0})
    config.total_prompts = 8
    assert load_training_prompts(config, seed=0).counts == {"a": 6, "b": 2}
    config.total_prompts = None
    assert load_training_prompts(config, seed=0).counts == {"a": 30, "b": 10}
    config.sources["b"].weight = 2.0
    assert load_training_prompts(config, seed=0).counts == {"a": 15, "b": 10}
    config.total_prompts = 40
    with pytest.raises(ConfigError, match="data.total_prompts=40 is invalid: data.sources.b has 10 train prompts"):
        load_training_prompts(config, seed=0)


def test_paper_mix_keeps_table_1_proportions_on_local_copies(tmp_path):
    harmless = [
        _write_gz(tmp_path / f"harmless-{split}.jsonl.gz", _hh_rows([f"harmless {split} {i}" for i in range(400)]))
        for split in ("train", "test")
    ]
    helpful = [
        _write_gz(tmp_path / f"helpful-{split}.jsonl.gz", _hh_rows([f"helpful {split} {i}" for i in range(400)]))
        for split in ("train", "test")
    ]
    red_team = tmp_path / "red_team_attempts.jsonl.gz"
    with gzip.open(red_team, "wt") as handle:
        json.dump([{"transcript": _conversation(f"red team {i}")} for i in range(400)], handle)
    webgpt = _write(
        tmp_path / "comparisons.jsonl", [json.dumps({"question": {"full_text": f"webgpt {i}"}}) for i in range(400)]
    )
    config = validate_config(
        compose_config(
            [
                "data=paper_mix",
                "data.total_prompts=1000",
                f"data.sources.harmless_base.path={harmless[0]}",
                f"data.sources.harmless_base.test_path={harmless[1]}",
                f"data.sources.helpful_base.path={helpful[0]}",
                f"data.sources.helpful_base.test_path={helpful[1]}",
                f"data.sources.red_team_attempts.path={red_team}",
                "data.sources.red_team_attempts.test_size=50",
                f"data.sources.webgpt_comparisons.path={webgpt}",
                "data.sources.webgpt_comparisons.test_size=50",
            ]
        )
    ).data
    train = load_training_prompts(config, seed=0)
    # Table 1: 29.4% / 30.2% / 26.9% / 13.5% of 1,000
    assert train.counts == {
        "harmless_base": 294,
        "helpful_base": 302,
        "red_team_attempts": 269,
        "webgpt_comparisons": 135,
    }
    assert load_prompts(config, "test", seed=0).counts == {
        "harmless_base": 400,
        "helpful_base": 400,
        "red_team_attempts": 50,
        "webgpt_comparisons": 50,
    }
    assert all(prompt.startswith("\n\nHuman: ") and prompt.endswith("\n\nAssistant:") for prompt in train.prompts)


def test_the_hub_code_path_reads_the_same_row_format(tmp_path):
    """datasets.load_dataset also takes a local folder laid out as the hub repository: the hub branch runs offline."""
    (tmp_path / "harmless-base").mkdir()
    (tmp_path / "red-team-attempts").mkdir()
    _write_gz(tmp_path / "harmless-base" / "train.jsonl.gz", _hh_rows([f"harmless {i}" for i in range(6)]))
    _write_gz(tmp_path / "harmless-base" / "test.jsonl.gz", _hh_rows(["harmless test"]))
    with gzip.open(tmp_path / "red-team-attempts" / "red_team_attempts.jsonl.gz", "wt") as handle:
        json.dump([{"transcript": _conversation(f"red team {i}")} for i in range(5)], handle)
    config = DataConfig(
        shuffle=False,
        sources={
            "harmless": DataSourceConfig(
                kind="hh_rlhf", hub_name=str(tmp_path), hub_data_dir="harmless-base", has_test_split=True, count=4
            ),
            "red_team": DataSourceConfig(
                kind="hh_red_team", hub_name=str(tmp_path), hub_data_dir="red-team-attempts", test_size=2
            ),
        },
    )
    assert load_prompts(config, "train", seed=0).prompts == [
        *(_prompt(f"harmless {i}") for i in range(4)),
        *(_prompt(f"red team {i}") for i in range(3)),
    ]
    test = load_prompts(config, "test", seed=0).prompts
    assert test == [_prompt("harmless test"), _prompt("red team 3"), _prompt("red team 4")]


def test_an_unreachable_hub_points_to_local_files(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Anthropic/hh-rlhf' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    config = validate_config(compose_config(["data=hh_harmless_base"])).data
    with pytest.raises(
        ConfigError,
        match="data.sources.harmless_base.hub_name='Anthropic/hh-rlhf' is unreachable .*"
        "set data.sources.harmless_base.path to a local copy",
    ):
        load_training_prompts(config, seed=0)


def test_real_hh_rlhf_harmless_base_test_file():
    if not SHARED_HARMLESS_TEST.is_file():
        pytest.skip(f"{SHARED_HARMLESS_TEST} is absent (it lives beside the project, not in it)")
    overrides = [
        "data=hh_harmless_base",
        f"data.sources.harmless_base.path={SHARED_HARMLESS_TEST}",
        f"data.sources.harmless_base.test_path={SHARED_HARMLESS_TEST}",
    ]
    prompts = load_prompts(validate_config(compose_config(overrides)).data, "test", seed=0).prompts
    assert len(prompts) == 2312  # every one of the 2,312 rows: the longest first turn has 640 characters
    assert all(prompt.startswith("\n\nHuman:") and prompt.endswith("\n\nAssistant:") for prompt in prompts)
    assert all(prompt.count("\n\nAssistant:") == 1 for prompt in prompts)
    shorter = validate_config(compose_config([*overrides, "data.max_prompt_chars=200"])).data
    assert len(load_prompts(shorter, "test", seed=0).prompts) == 2232


def test_toy_data_reads_the_tiny_worlds_train_and_test_prompts(tiny_world):
    world = tiny_world.root
    config = validate_config(compose_config([f"tiny_world.dir={world}"])).data
    assert set(config.local_paths()) == {str(world / "prompts" / "train.jsonl"), str(world / "prompts" / "test.jsonl")}
    train, test = (load_prompts(config, split, seed=0) for split in ("train", "test"))
    assert sum(train.counts.values()) == 2000 and sum(test.counts.values()) == 300
    assert set(train.counts) == {"helpful", "harmful", "open"} and min(test.counts.values()) > 30
    family = {
        json.loads(line)["prompt"]: json.loads(line)["family"]
        for line in (world / "prompts" / "test.jsonl").read_text().splitlines()
    }
    assert all(family[prompt] == source for prompt, source in zip(test.prompts, test.sources)), "split by family"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.sources.helpful.count=-1"], "data.sources.helpful.count=-1 is invalid"),
        (
            ["data.sources.helpful.count=5", "+data.sources.helpful.weight=1"],
            "data.sources.helpful.count=5 is invalid: give either data.sources.helpful.weight or",
        ),
        (["data.sources.helpful.kind=csv"], "data.sources.helpful.kind='csv' is invalid: use one of"),
        (["data.sources.helpful.path=null"], "data.sources.helpful.path=None is invalid: give a local"),
        (["data.sources.helpful.has_test_split=false"], "data.sources.helpful.test_path=.* is invalid: set"),
        (
            [f"data.sources.{name}.count=0" for name in ("helpful", "harmful", "open")],
            "data.sources=\\['harmful', 'helpful', 'open'\\] is invalid: give at least one source",
        ),
        (["+data.total_prompts=10"], "data.total_prompts=10 is invalid: it sizes a weighted mix"),
        (["data.max_prompt_chars=0"], "data.max_prompt_chars=0 is invalid"),
        (
            ["data=paper_mix", "data.sources.webgpt_comparisons.weight=null"],
            "data.sources.webgpt_comparisons.weight=None is invalid: give every source a weight",
        ),
        (
            ["data=paper_mix", "data.sources.red_team_attempts.weight=-1"],
            "data.sources.red_team_attempts.weight=-1.0 is invalid",
        ),
        (["data=paper_mix", "data.total_prompts=0"], "data.total_prompts=0 is invalid"),
    ],
)
def test_impossible_data_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config(overrides))


@pytest.mark.parametrize(
    "name",
    [
        "toy",
        "paper_mix",
        "reference_mix",
        "hh_harmless_base",
        "hh_helpful_base",
        "hh_red_team_attempts",
        "webgpt_comparisons",
        "self_instruct",
    ],
)
def test_every_data_config_validates(name):
    assert validate_config(compose_config([f"data={name}"])).data.name == name


def test_prompt_stream_is_seeded_and_reshuffles_each_epoch():
    prompts = [f"p{i}" for i in range(5)]
    first = PromptStream(prompts, seed=3)
    order = first.take(5) + first.take(5)
    assert sorted(order[:5]) == prompts and sorted(order[5:]) == prompts
    assert order[:5] != order[5:]
    assert PromptStream(prompts, seed=3).take(10) == order
    assert PromptStream(prompts, seed=4).take(5) != order[:5]
    assert first.position == 10
