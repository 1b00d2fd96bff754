"""Kill anywhere: a run stopped at any named point, then re-run with the same command, ends with exactly what an
unbroken run of the same configuration records.

Each algorithm runs once unbroken, then as a chain of launches of the same command in another checkpoint folder,
each stopped by ``SUPERHF_LAB_FAULT`` at a named point (:mod:`superhf_lab.core.faults`: reached deterministically, not
by timing), until a launch without a fault ends the run. The chain must leave one MLflow run, FINISHED, whose every
metric holds each step once with the unbroken run's values, whose completions and evaluation tables match row for
row, whose ``policy`` artifact is the same, and whose run folder is whole (its newest checkpoint verifies, no
partial files, no lease, no spool). SIGKILL chains kill; SIGTERM chains preempt, and each preempted launch must
exit 143 with its run KILLED. A chain shares its launches across points, and the configurations are the smallest
that reach each point, so the suite stays short. For the same reason, the points only shared code reaches (the store
and its spool, the policy's upload, the run's end) are in the full chains of one algorithm of each kind of trainer
(SuperHF: the lab's step loop; GRPO: TRL's sampling trainers; DPO: TRL's pair trainers), while the others' chains
stop at the points their own code reaches: sampling, a checkpoint's save, fine-tuning after a checkpoint, and the
final evaluation.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from conftest import run_cli
from safetensors.torch import load_file

from superhf_lab.runtime.checkpoint import CheckpointStore
from superhf_lab.tracking.spool import read_spool

pytestmark = pytest.mark.slow

SMALL_EVAL = ["eval.prompts_per_source=4", "eval.meteor_pairs_per_source=8"]
TRL_STEPS = ["algorithm.num_steps=4", "checkpoint.every_n_steps=2"]
CONFIGS = {
    "superhf": [
        "algorithm=superhf",
        "algorithm.num_superbatches=6",
        "algorithm.superbatch_size=4",
        "checkpoint.every_n_steps=2",
    ],
    # One optimizer step per update, as SuperHF's configuration takes, so the points land on the same steps.
    "ppo": [
        "algorithm=ppo",
        "algorithm.num_updates=6",
        "algorithm.batch_size=4",
        "algorithm.num_mini_batches=1",
        "algorithm.num_ppo_epochs=1",
        "checkpoint.every_n_steps=2",
    ],
    "grpo": ["algorithm=grpo", *TRL_STEPS, "algorithm.prompts_per_step=2", "algorithm.group_size=4"],
    "rloo": ["algorithm=rloo", *TRL_STEPS, "algorithm.prompts_per_step=2", "algorithm.group_size=4"],
    # DPO and FeedME sample (their probe) after a step's update, so a SIGTERM there stops after the next step: two
    # more steps keep every later point of the SIGTERM chain ahead of the run's end.
    "dpo": [
        "algorithm=dpo",
        "algorithm.num_steps=6",
        "checkpoint.every_n_steps=2",
        "algorithm.pairs_per_step=8",
        "algorithm.probe_prompts=4",
    ],
    "feedme": [
        "algorithm=feedme",
        "algorithm.num_steps=6",
        "checkpoint.every_n_steps=2",
        "algorithm.examples_per_step=8",
        "algorithm.probe_prompts=4",
    ],
    "best_of_n": ["algorithm=best_of_n", "algorithm.n=4"],
    # Evaluating on the way: the over-optimisation path's points, and its fit from the history a killed launch logged.
    "superhf_tracing": [
        "algorithm=superhf",
        "algorithm.num_superbatches=6",
        "algorithm.superbatch_size=4",
        "checkpoint.every_n_steps=2",
        "eval.every_n_steps=2",
    ],
    "grpo_tracing": [
        "algorithm=grpo",
        *TRL_STEPS,
        "algorithm.prompts_per_step=2",
        "algorithm.group_size=4",
        "eval.every_n_steps=2",
    ],
    "evaluate": ["mode=eval"],
}
SPOOL = "store_send@1+:error,spool_append@2"  # the store fails every send from then on; the 2nd append is torn
STORE_DOWN = "store_query@1:error"  # the store answers with errors when asked whether the run exists

# A chain: each launch's fault and the exit status it must end with (None: the store error's configuration error).
# Occurrences count within one launch; comments say where each lands.
TRAINING_KILLS = [
    ("generation@1:kill", "step 0: nothing logged yet"),
    ("scoring@2:kill", "step 1, step 0 logged, no checkpoint"),
    ("checkpoint_save@1:kill", "inside the first checkpoint's save"),
    ("finetuning@3:kill", "step 2, after a whole checkpoint"),
    (STORE_DOWN, "the store errs: the run must stop, not start over"),
    (f"{SPOOL}:kill", "torn spool line, server failing"),
    ("evaluation@1:kill", "the final evaluation"),
    ("policy_upload@1:kill", "the policy uploaded, not yet tagged"),
    ("run_end@1:kill", "all done but the run's end"),
]
TRAINING_TERMS = [  # each preempted launch ends a step later than the one before, so the order matters
    ("generation@1:term", "step 0"),
    ("checkpoint_save@1:term", "inside a checkpoint's save"),
    ("finetuning@1:term", "a step after the one resumed from"),
    ("scoring@1:term", "the next step (TRL: the final evaluation's)"),
    ("evaluation@1:term", "the final evaluation"),
    (f"{SPOOL}:term", "a spool append, server failing"),
    ("policy_upload@1:term", "the policy uploaded"),
    ("run_end@1:term", "all done but the run's end"),
]
# Where an algorithm's own code runs: sampling, a checkpoint's save, fine-tuning after a checkpoint, the final
# evaluation (each chain resumes from what the launch before it left, as in the whole chains).
OWN_KILLS = [TRAINING_KILLS[0], TRAINING_KILLS[2], TRAINING_KILLS[3], TRAINING_KILLS[6]]
OWN_TERMS = TRAINING_TERMS[:5]
# Best-of-N and evaluation keep no checkpoints: a re-run redoes their work in the same MLflow run.
SAMPLING_KILLS = [
    ("generation@1:kill", "sampling"),
    ("scoring@1:kill", "scoring"),
    (f"{SPOOL}:kill", "a spool append, server failing"),
    ("run_end@1:kill", "all done but the run's end"),
]
SAMPLING_TERMS = [("generation@1:term", "sampling"), ("run_end@1:term", "all done but the run's end")]
# A tracing run's first evaluation is its start point, before step 0; a launch that resumes from no checkpoint
# evaluates it again.
TRACING_KILLS = [
    ("evaluation@1:kill", "the path's start point, before it logs"),
    ("evaluation@2:kill", "the evaluation after step 1, before it logs and before its checkpoint"),
    ("finetuning@4:kill", "step 3, after the checkpoint and evaluation at step 1"),
    ("evaluation@2:kill", "resumed at step 2: the last step's evaluation, before the path's fit"),
]
TRL_TRACING_KILLS = [*TRACING_KILLS[:2], ("run_end@1:kill", "all done, the path fitted, but the run's end")]
EVALUATION_KILLS = [*SAMPLING_KILLS[:2], ("evaluation@1:kill", "the evaluation, before it logs"), *SAMPLING_KILLS[2:]]


@dataclass(frozen=True)
class Chain:
    algorithm: str
    signal: str  # "kill" or "term"
    faults: tuple[tuple[str, str], ...]


CHAINS = [
    Chain("superhf", "kill", tuple(TRAINING_KILLS)),
    Chain("superhf", "term", tuple(TRAINING_TERMS)),
    Chain("ppo", "kill", tuple(OWN_KILLS)),
    Chain("ppo", "term", tuple(OWN_TERMS)),
    Chain("grpo", "kill", tuple(TRAINING_KILLS)),
    Chain("grpo", "term", tuple(TRAINING_TERMS)),
    Chain("rloo", "kill", tuple(OWN_KILLS)),
    Chain("dpo", "kill", tuple(TRAINING_KILLS)),
    Chain("dpo", "term", tuple(OWN_TERMS)),
    Chain("feedme", "kill", tuple(OWN_KILLS)),
    Chain("superhf_tracing", "kill", tuple(TRACING_KILLS)),
    Chain("grpo_tracing", "kill", tuple(TRL_TRACING_KILLS)),
    Chain("best_of_n", "kill", tuple(SAMPLING_KILLS)),
    Chain("best_of_n", "term", tuple(SAMPLING_TERMS)),
    Chain("evaluate", "kill", tuple(EVALUATION_KILLS)),
    Chain("evaluate", "term", tuple(SAMPLING_TERMS)),
]
EXPECTED_STATUS = {"kill": -signal.SIGKILL, "term": 143, "error": 2}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for every chain and its unbroken reference (each configuration once)."""
    return f"sqlite:///{tmp_path_factory.mktemp('kill_anywhere')}/mlflow.db"


_references: dict[str, str] = {}


def _launch(algorithm: str, tiny_world, store: str, checkpoints: Path, cwd: Path, fault: str = ""):
    args = [
        *CONFIGS[algorithm],
        *SMALL_EVAL,
        f"tiny_world.dir={tiny_world.root}",
        f"mlflow.tracking_uri={store}",
        f"mlflow.experiment_name=kill_{algorithm}",
        f"checkpoint.dir={checkpoints}",
    ]
    return run_cli(args, cwd=cwd, env={"SUPERHF_LAB_FAULT": fault})


def _reference_run(algorithm: str, tiny_world, store: str, folder: Path) -> str:
    if algorithm not in _references:
        unbroken = _launch(algorithm, tiny_world, store, folder / "reference-checkpoints", folder)
        assert unbroken.returncode == 0, unbroken.stderr[-3000:]
        _references[algorithm] = _only_run(store, algorithm, exclude=set())
    return _references[algorithm]


def _run_ids(store: str, algorithm: str) -> set[str]:
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name(f"kill_{algorithm}")
    return {run.info.run_id for run in client.search_runs([experiment.experiment_id])} if experiment else set()


def _only_run(store: str, algorithm: str, exclude: set[str]) -> str:
    runs = _run_ids(store, algorithm) - exclude
    assert len(runs) == 1, f"the chain left {len(runs)} MLflow runs, not one"
    return runs.pop()


def _ended_as(store: str, run_id: str, checkpoints: Path) -> str:
    """The status a run ended with: in the store, or in its spool when the store was failing at its end."""
    for spool in checkpoints.glob(f"*/mlflow-unsynced-{run_id}.jsonl"):
        ends = [record["status"] for record in read_spool(spool)[1] if record["kind"] == "end_run"]
        if ends:
            return ends[-1]
    return mlflow.MlflowClient(store).get_run(run_id).info.status


def recorded(store: str, run_id: str, folder: Path) -> dict:
    """What a run recorded, in a form two runs compare by: status, each metric's (step, value) pairs but for the
    time/* ones, every table's rows, the policy's tensors and files."""
    client = mlflow.MlflowClient(store)
    run = client.get_run(run_id)
    metrics = {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        for key in run.data.metrics
        if not key.startswith("time/")
    }
    local = Path(client.download_artifacts(run_id, "", str(folder)))
    tables = {
        str(path.relative_to(local)): json.loads(path.read_text())
        for path in sorted(local.rglob("*.json"))
        if not path.is_relative_to(local / "policy")
    }
    policy = {}
    for path in sorted((local / "policy").glob("*")) if (local / "policy").is_dir() else []:
        policy[path.name] = load_file(str(path)) if path.suffix == ".safetensors" else path.read_bytes()
    return {
        "status": run.info.status,
        "metrics": metrics,
        "tables": tables,
        "policy": policy,
        "policy_tag": run.data.tags.get("superhf_lab.policy_uri", "").replace(run_id, "<run>"),
    }


def _assert_same(actual: dict, expected: dict) -> None:
    assert actual["status"] == expected["status"] == "FINISHED"
    assert actual["metrics"].keys() == expected["metrics"].keys()
    for key, history in expected["metrics"].items():
        steps = [step for step, _ in actual["metrics"][key]]
        assert len(steps) == len(set(steps)), f"{key}: a step logged twice: {steps}"
        # Same machine, same seed, same thread count: a continued run replays the same float operations in the
        # same order, so its values are bit-identical to the unbroken run's (no tolerance is needed or allowed).
        assert actual["metrics"][key] == history, key
    assert actual["tables"] == expected["tables"], "completions and evaluation tables, row for row"
    assert actual["policy"].keys() == expected["policy"].keys()
    for name, content in expected["policy"].items():
        if isinstance(content, dict):
            assert content.keys() == actual["policy"][name].keys()
            for tensor in content:
                assert content[tensor].equal(actual["policy"][name][tensor]), f"{name}: {tensor}"
        else:
            assert actual["policy"][name] == content, name
    assert actual["policy_tag"] == expected["policy_tag"]


def _assert_folder_whole(checkpoints: Path, keeps_checkpoints: bool) -> None:
    (folder,) = [path for path in checkpoints.iterdir() if path.is_dir()]
    store = CheckpointStore(folder)
    assert store.run_record()["finished"]
    assert not list(folder.glob(".*")), "no partial files are left"
    assert not list(folder.glob("lease.json")) and not list(folder.glob("mlflow-unsynced-*")), "no lease, no spool"
    if keeps_checkpoints:
        assert store.load() is not None, "the newest checkpoint verifies"


@pytest.mark.parametrize(  # a configuration's chains share its unbroken run: one test process runs them all
    "chain",
    [pytest.param(chain, marks=pytest.mark.xdist_group(chain.algorithm)) for chain in CHAINS],
    ids=[f"{chain.algorithm}-{chain.signal}" for chain in CHAINS],
)
def test_a_run_stopped_anywhere_and_re_run_records_what_an_unbroken_run_does(chain, tiny_world, store, tmp_path):
    reference = _reference_run(chain.algorithm, tiny_world, store, tmp_path)
    earlier = _run_ids(store, chain.algorithm)  # the reference and other chains' runs
    checkpoints = tmp_path / "checkpoints"
    for fault, where in chain.faults:
        launch = _launch(chain.algorithm, tiny_world, store, checkpoints, tmp_path, fault)
        action = fault.rpartition(":")[2]
        assert launch.returncode == EXPECTED_STATUS[action], (
            f"{fault} ({where}): exit {launch.returncode}\n{launch.stderr[-3000:]}"
        )
        if action == "error":
            assert "did not answer whether run" in launch.stderr and "its checkpoints are kept" in launch.stderr
        if action == "term":
            assert "Preempted: stopped by SIGTERM" in launch.stderr, launch.stderr[-3000:]
            assert _ended_as(store, _only_run(store, chain.algorithm, exclude=earlier), checkpoints) == "KILLED"
    final = _launch(chain.algorithm, tiny_world, store, checkpoints, tmp_path)
    assert final.returncode == 0, final.stderr[-3000:]
    run_id = _only_run(store, chain.algorithm, exclude=earlier)
    _assert_same(recorded(store, run_id, tmp_path / "actual"), recorded(store, reference, tmp_path / "expected"))
    _assert_folder_whole(checkpoints, keeps_checkpoints=chain.algorithm not in ("best_of_n", "evaluate"))
