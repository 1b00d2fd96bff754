"""The paper's hub sources, offline: local folders laid out as each Hub repository (or its parquet branch) go
through the same ``load_dataset`` call as the Hub; malformed rows are skipped and counted; every way the Hub can
refuse a source names the key and the fix."""

import gzip
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import datasets
import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import compose_config

from superhf_lab.core.errors import ConfigError
from superhf_lab.launch.compose import validate_config
from superhf_lab.training.data import DataFileError, MalformedRowsError, load_pairs, load_prompts

WEBGPT = "data.sources.webgpt_comparisons"


def _prompt(question):
    return f"\n\nHuman: {question}\n\nAssistant:"


def _conversation(question):
    return f"{_prompt(question)} an answer\n\nHuman: and then?\n\nAssistant: more"


def _hh_rows(questions):
    return [{"chosen": _conversation(q), "rejected": _conversation(q) + " but worse"} for q in questions]


def _write_jsonl_gz(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)


def _write_parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _hh_rlhf_repo(root, harmless_train=None):
    """Anthropic/hh-rlhf: a folder per subset, train/test .jsonl.gz, and red-team-attempts as one JSON array."""
    _write_jsonl_gz(root / "harmless-base" / "train.jsonl.gz", harmless_train or _hh_rows(["harmless 0", "harmless 1"]))
    _write_jsonl_gz(root / "harmless-base" / "test.jsonl.gz", _hh_rows(["harmless test"]))
    _write_jsonl_gz(root / "helpful-base" / "train.jsonl.gz", _hh_rows(["helpful 0", "helpful 1"]))
    _write_jsonl_gz(root / "helpful-base" / "test.jsonl.gz", _hh_rows(["helpful test"]))
    red_team = root / "red-team-attempts" / "red_team_attempts.jsonl.gz"
    red_team.parent.mkdir(parents=True)
    with gzip.open(red_team, "wt", encoding="utf-8") as handle:
        json.dump([{"transcript": _conversation(f"red team {i}"), "rating": 0} for i in range(5)], handle, indent=1)
    return root


def _webgpt_row(question):
    return {
        "question": {"dataset": "eli5", "id": question, "full_text": question},
        "answer_0": "first answer",
        "answer_1": "second answer",
        "score_0": 1.0,
        "score_1": -1.0,
    }


def _webgpt_repo(root, rows=None):
    """openai/webgpt_comparisons at refs/convert/parquet: default/train/0000.parquet."""
    _write_parquet(root / "default" / "train" / "0000.parquet", rows or [_webgpt_row(f"webgpt {i}") for i in range(5)])
    return root


def _self_instruct_repo(root):
    """yizhongw/self_instruct at refs/convert/parquet: one folder per configuration, the default one self_instruct."""
    rows = [{"prompt": f"Instruction {i}\nOutput:", "completion": f" answer {i}"} for i in range(5)]
    _write_parquet(root / "self_instruct" / "train" / "0000.parquet", rows)
    _write_parquet(root / "human_eval" / "train" / "0000.parquet", [{"prompt": "another configuration Output:"}])
    return root


def _data(data_name, source, repo, *overrides):
    """The project's data config ``data_name`` with ``source`` read from ``repo`` instead of the Hub."""
    return validate_config(
        compose_config(
            [f"data={data_name}", "data.shuffle=false", f"data.sources.{source}.hub_name={repo}", *overrides]
        )
    ).data


@pytest.mark.parametrize(
    ("data_name", "source", "build_repo", "overrides", "train", "test"),
    [
        ("hh_harmless_base", "harmless_base", _hh_rlhf_repo, [], ["harmless 0", "harmless 1"], ["harmless test"]),
        ("hh_helpful_base", "helpful_base", _hh_rlhf_repo, [], ["helpful 0", "helpful 1"], ["helpful test"]),
        (
            "hh_red_team_attempts",
            "red_team_attempts",
            _hh_rlhf_repo,
            ["test_size=2"],
            ["red team 0", "red team 1", "red team 2"],
            ["red team 3", "red team 4"],
        ),
        (
            "webgpt_comparisons",
            "webgpt_comparisons",
            _webgpt_repo,
            ["test_size=2"],
            ["webgpt 0", "webgpt 1", "webgpt 2"],
            ["webgpt 3", "webgpt 4"],
        ),
        (
            "self_instruct",
            "self_instruct",
            _self_instruct_repo,
            ["test_size=1"],
            [f"Instruction {i}" for i in range(4)],
            ["Instruction 4"],
        ),
    ],
)
def test_each_hub_layout_loads_with_the_data_configs_hub_settings(
    tmp_path, data_name, source, build_repo, overrides, train, test
):
    """conf/data's hub_data_dir and hub_revision (refs/convert/parquet for the parquet branches) left as they are."""
    repo = build_repo(tmp_path / "repo")
    config = _data(data_name, source, repo, *(f"data.sources.{source}.{override}" for override in overrides))
    trained = load_prompts(config, "train", seed=0)
    assert trained.prompts == [_prompt(question) for question in train]
    assert trained.skipped == {source: 0}
    assert load_prompts(config, "test", seed=0).prompts == [_prompt(question) for question in test]


def test_a_malformed_hub_row_is_skipped_counted_and_quoted_in_a_warning(tmp_path, caplog):
    rows = _hh_rows([f"harmless {i}" for i in range(150)])
    rows[7] = {"chosen": "Assistant: a conversation without its human turn", "rejected": "Assistant: the same"}
    config = _data("hh_harmless_base", "harmless_base", _hh_rlhf_repo(tmp_path / "repo", rows))
    with caplog.at_level(logging.WARNING, logger="superhf_lab.training.data"):
        prompts = load_prompts(config, "train", seed=0)
    assert len(prompts.prompts) == 149 and _prompt("harmless 7") not in prompts.prompts
    assert prompts.skipped == {"harmless_base": 1}
    assert "data.sources.harmless_base: skipped 1 of the 150 train rows read (0.7%) malformed" in caplog.text
    assert "harmless-base (train split) row 7: expected a JSON object with a 'chosen' conversation" in caplog.text
    assert "a conversation without its human turn" in caplog.text


def test_an_empty_question_in_a_parquet_branch_is_skipped_and_counted(tmp_path):
    rows = [_webgpt_row(f"webgpt {i}") for i in range(120)]
    rows[3]["question"]["full_text"] = " "
    config = _data(
        "webgpt_comparisons",
        "webgpt_comparisons",
        _webgpt_repo(tmp_path / "repo", rows),
        "data.sources.webgpt_comparisons.test_size=10",
    )
    prompts = load_prompts(config, "train", seed=0)
    assert len(prompts.prompts) == 109 and prompts.skipped == {"webgpt_comparisons": 1}


def test_malformed_rows_of_a_local_file_and_of_preference_pairs_are_skipped_too(tmp_path):
    rows = [*_hh_rows([f"pair {i}" for i in range(100)]), {"chosen": _conversation("no rejected response")}]
    train = tmp_path / "train.jsonl.gz"
    _write_jsonl_gz(train, rows)
    local = validate_config(
        compose_config(
            [
                "data=hh_harmless_base",
                f"data.sources.harmless_base.path={train}",
                f"data.sources.harmless_base.test_path={train}",
            ]
        )
    ).data
    assert load_prompts(local, "train", seed=0).skipped == {"harmless_base": 0}  # a prompt needs no 'rejected'
    pairs = load_pairs(local, "train", seed=0)
    assert len(pairs.pairs) == 100 and pairs.skipped == {"harmless_base": 1}
    hub = validate_config(
        compose_config(
            [
                "preferences=hh_rlhf",
                f"preferences.sources.harmless_base.hub_name={_hh_rlhf_repo(tmp_path / 'repo', rows)}",
                "preferences.sources.helpful_base.count=0",
            ]
        )
    ).preferences
    assert load_pairs(hub, "train", seed=0).skipped == {"harmless_base": 1, "helpful_base": 0}


def test_too_many_malformed_rows_stop_naming_the_limit_the_source_and_the_first_row(tmp_path):
    rows = _hh_rows([f"harmless {i}" for i in range(18)])
    rows[2]["chosen"] = rows[5]["chosen"] = "\n\nAssistant: no human turn first"
    repo = _hh_rlhf_repo(tmp_path / "repo", rows)
    with pytest.raises(MalformedRowsError) as error:
        load_prompts(_data("hh_harmless_base", "harmless_base", repo), "train", seed=0)
    assert isinstance(error.value, ConfigError)
    message = str(error.value)
    assert message.startswith(
        "data.max_malformed_fraction=0.01 is exceeded: data.sources.harmless_base has 2 of the "
        "18 train rows read (11.1%) malformed; the first, "
    )
    assert "harmless-base (train split) row 2: expected a JSON object with a 'chosen' conversation" in message
    assert "no human turn first" in message and "raise data.max_malformed_fraction" in message
    tolerant = _data("hh_harmless_base", "harmless_base", repo, "++data.max_malformed_fraction=0.2")
    assert load_prompts(tolerant, "train", seed=0).skipped == {"harmless_base": 2}


def test_a_malformed_share_outside_zero_to_one_names_the_key():
    with pytest.raises(ConfigError, match=r"data.max_malformed_fraction=1.5 is invalid: use a share from 0"):
        validate_config(compose_config(["++data.max_malformed_fraction=1.5"]))


def test_a_corrupt_line_is_still_an_error_not_a_skipped_row(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps(_hh_rows(["fine"])[0]) + '\n{"chosen": "cut off\n')
    config = validate_config(
        compose_config(
            [
                "data=hh_harmless_base",
                f"data.sources.harmless_base.path={train}",
                f"data.sources.harmless_base.test_path={train}",
            ]
        )
    ).data
    with pytest.raises(DataFileError, match=r"train\.jsonl:2: expected a JSON object on each line") as error:
        load_prompts(config, "train", seed=0)
    assert not isinstance(error.value, MalformedRowsError)


def test_a_loading_script_names_the_revision_and_the_parquet_branch(tmp_path):
    """The Hub's main branch of openai/webgpt_comparisons holds only webgpt_comparisons.py, which datasets>=4
    refuses; a local folder laid out the same way gets the same RuntimeError."""
    repo = tmp_path / "webgpt_comparisons"
    repo.mkdir()
    (repo / "webgpt_comparisons.py").write_text("import datasets\n")
    config = _data("webgpt_comparisons", "webgpt_comparisons", repo, f"{WEBGPT}.hub_revision=null")
    with pytest.raises(
        ConfigError,
        match=r"data.sources.webgpt_comparisons.hub_revision=None is invalid: .* is a "
        r"loading script, which datasets>=4 cannot run \(RuntimeError: Dataset "
        r"scripts are no longer supported.*; set data.sources.webgpt_comparisons."
        r"hub_revision=refs/convert/parquet .* or set data.sources."
        r"webgpt_comparisons.path to a local copy",
    ):
        load_prompts(config, "train", seed=0)


def test_a_missing_dataset_or_data_dir_names_its_key(tmp_path):
    absent = _data("hh_harmless_base", "harmless_base", tmp_path / "absent")
    with pytest.raises(
        ConfigError,
        match=r"data.sources.harmless_base.hub_name='.*absent' is invalid: no such dataset "
        r"\(FileNotFoundError: .*\); check the name, or set data.sources."
        r"harmless_base.path to a local copy in the hub's row format",
    ):
        load_prompts(absent, "train", seed=0)
    misspelt = _data(
        "hh_harmless_base",
        "harmless_base",
        _hh_rlhf_repo(tmp_path / "repo"),
        "data.sources.harmless_base.hub_data_dir=harmles-base",
    )
    with pytest.raises(
        ConfigError,
        match=r"data.sources.harmless_base.hub_data_dir='harmles-base' is invalid: .* "
        r"holds no data files there \(EmptyDatasetError: .*check the folder name",
    ):
        load_prompts(misspelt, "train", seed=0)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """An HTTP server in place of huggingface.co, answering every request with the status and X-Error-Code header
    the test sets, so datasets and huggingface_hub raise their real exceptions offline."""
    answer = {}

    class Hub(BaseHTTPRequestHandler):
        def _answer(self):
            status, error_code = answer["now"]
            self.send_response(status)
            self.send_header("X-Error-Code", error_code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # Empty caches: datasets would fall back on a cached copy of the dataset instead of raising.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    yield lambda status, error_code: answer.update(now=(status, error_code))
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("status", "error_code", "message"),
    [
        (
            404,
            "RevisionNotFound",
            rf"{WEBGPT}.hub_revision='refs/convert/parquet' is invalid: "
            r"openai/webgpt_comparisons has no such revision \(DatasetNotFoundError: "
            r"Revision .*; "
            rf"set {WEBGPT}.hub_revision to another revision \(null: the main branch.*"
            rf"or set {WEBGPT}.path to a local copy",
        ),
        (
            401,
            "GatedRepo",
            rf"{WEBGPT}.hub_name='openai/webgpt_comparisons' is invalid: it is a gated dataset "
            r"\(DatasetNotFoundError: .*You must be authenticated.*\); accept its terms at "
            r"https://huggingface.co/datasets/openai/webgpt_comparisons and log in \(hf auth login\), "
            rf"or set {WEBGPT}.path",
        ),
        (403, "GatedRepo", r"is invalid: it is a gated dataset \(DatasetNotFoundError: .*ask for access"),
        (
            404,
            "RepoNotFound",
            rf"{WEBGPT}.hub_name='openai/webgpt_comparisons' is invalid: no such dataset "
            r"\(DatasetNotFoundError: .*; check the name, or set",
        ),
    ],
)
def test_each_refusal_of_the_hub_names_the_key_and_the_fix(fake_hub, status, error_code, message):
    fake_hub(status, error_code)
    config = validate_config(compose_config(["data=webgpt_comparisons"])).data
    with pytest.raises(ConfigError, match=message):
        load_prompts(config, "train", seed=0)


def test_an_unrelated_runtime_error_of_datasets_is_not_disguised(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("an internal error of datasets")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    config = validate_config(compose_config(["data=webgpt_comparisons"])).data
    with pytest.raises(RuntimeError, match="an internal error of datasets"):
        load_prompts(config, "train", seed=0)
