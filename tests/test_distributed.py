"""Runs that span several processes (DDP and FSDP2 through accelerate), here on CPU with gloo: the same global work
as one process, one MLflow run, agreed decisions, exact resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import psutil
import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file
from tolerances import adam_tolerance, assert_within, fp32_tolerance
from transformers import AutoModelForCausalLM

from superhf_lab.core.errors import ConfigError
from superhf_lab.runtime.checkpoint import CheckpointStore
from superhf_lab.runtime.distributed import Processes, launch_time
from superhf_lab.training.sequences import KL_ESTIMATE_NAMES

WORKER = ROOT / "tests" / "distributed_worker.py"
PPO_WORKER = ROOT / "tests" / "ppo_worker.py"
LR = 1e-3  # the tiny preset's learning rate: Adam's first step moves every weight with a gradient by about this
KL_COEF = 0.1  # the worker's


def _environment() -> dict[str, str]:
    return {**os.environ, "ACCELERATE_USE_CPU": "true", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def _torchrun(script: Path, args: list[str], processes: int = 2) -> list[str]:
    """The documented CPU command: ACCELERATE_USE_CPU=true torchrun --nproc_per_node N <script> ..."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        str(script),
        *args,
    ]


def _run(command: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command, cwd=cwd, env=_environment(), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def _update(tiny_world, tmp_path: Path, processes: int, scenario: str = "clean", *overrides: str) -> dict:
    out = tmp_path / f"update-{processes}-{scenario}-{'-'.join(overrides)}.pt"
    args = [str(tiny_world.root), str(out), scenario, *overrides]
    _run([sys.executable, str(WORKER), *args] if processes == 1 else _torchrun(WORKER, args, processes), tmp_path)
    return torch.load(out)


def _ppo_update(tiny_world, tmp_path: Path, processes: int, scenario: str = "clean", *overrides: str) -> dict:
    out = tmp_path / f"ppo-{processes}-{scenario}-{'-'.join(overrides)}.pt"
    args = [str(tiny_world.root), str(out), scenario, *overrides]
    command = [sys.executable, str(PPO_WORKER), *args] if processes == 1 else _torchrun(PPO_WORKER, args, processes)
    _run(command, tmp_path)
    return torch.load(out)


def _reduction_lengths(tiny_world, minibatch: int) -> tuple[int, int]:
    """How many float32 additions, along its longest chain, a loss metric and a gradient entry of the worker's update
    went through (bounds, from the policy's config): per layer a layer norm's and a projection's over the hidden
    size, the attention's over the positions and the MLP's over its intermediate size; two vocabulary-long sums
    (the log-softmax's normaliser, then the KL's own sum or, backwards, the output layer's); then the means over a
    completion's tokens, the minibatch, the 2 ranks and the 2 steps. A gradient entry also goes back through the
    layers, and sums over every token of the minibatch."""
    config = json.loads((tiny_world.root / "policy" / "config.json").read_text())
    positions = config["max_position_embeddings"]
    layers = config["num_hidden_layers"] * (2 * config["hidden_size"] + config["intermediate_size"] + positions)
    loss = layers + 2 * config["vocab_size"] + positions + minibatch + 2 + 2
    return loss, 2 * layers + 2 * config["vocab_size"] + minibatch * positions + 2


def assert_same_losses(actual: dict[str, float], expected: dict[str, float], reduction_length: int) -> None:
    """CE in its own units (its per-token terms are log-probabilities of its size). KL in nats: a log-softmax's
    normaliser sums exp terms of at most 1, so it is off by at most vocabulary x eps nats whatever the logits' size,
    and the logits' own errors cancel to first order in a KL between close distributions (they enter weighted by
    q - p). With the policy's 3072 tokens this is about 1e-3 relative for CE and 1e-3 nats for KL (2% of a KL of
    0.05; 1 and 2 processes differ by about 1e-6 of it): far below what a rank's share left out or a padding copy
    counted would change (a third of the KL)."""
    kl = fp32_tolerance(reduction_length)
    ce = fp32_tolerance(reduction_length, expected["loss/ce"])
    tolerances = {"loss/ce": ce, "kl": kl, "loss/kl_penalty": KL_COEF * kl, "loss/total": ce + KL_COEF * kl}
    # Schulman's estimates are functions of the sampled tokens' log-ratio, whose two log-softmaxes each carry that
    # normaliser's error: the same bound in nats (k2 = r^2/2 and k3 = e^-r - 1 + r move by at most |r| < 1 times it)
    tolerances.update(dict.fromkeys(KL_ESTIMATE_NAMES, kl))
    assert actual.keys() == tolerances.keys()
    for name, tolerance in tolerances.items():
        assert actual[name] == pytest.approx(expected[name], abs=tolerance), name


def assert_same_update(actual: dict, expected: dict, reduction_length: int) -> None:
    """Every step's gradients, each tensor to its fp32 bound at the scale of its largest entry (1.6e-3 of it with
    the tiny policy; measured 4e-6 of it: a rank's share left out changes them by a third), then the weights
    to what Adam can make of the gradients' measured differences (see tolerances.adam_tolerance: a few ulps where
    a gradient is well above its float error, up to a step of lr where it is float noise)."""
    assert len(actual["steps"]) == len(expected["steps"]), "as many optimizer steps"
    for step, (gradients, reference) in enumerate(zip(actual["steps"], expected["steps"])):
        assert gradients.keys() == reference.keys()
        for name, gradient in reference.items():
            tolerance = fp32_tolerance(reduction_length, gradient.abs().max().item())
            torch.testing.assert_close(gradients[name], gradient, rtol=0, atol=tolerance, msg=f"step {step}: {name}")
    adam = expected["adam"]
    assert actual["adam"] == adam and adam["lr"] == LR
    bounds = adam_tolerance(
        expected["steps"], actual["steps"], expected["weights"], adam["lr"], adam["betas"], adam["eps"]
    )
    assert_within(actual["weights"], expected["weights"], bounds)


def _runs(uri: str, experiment: str = "tiny_world") -> list:
    client = mlflow.MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def _steps(client: mlflow.MlflowClient, run_id: str, metric: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def _rank(rank: int, world: int, kind: str = "MULTI_CPU") -> Processes:
    return Processes(
        SimpleNamespace(process_index=rank, num_processes=world, distributed_type=SimpleNamespace(value=kind))
    )


def test_under_sharded_weights_every_rank_gets_an_equally_long_share_and_knows_its_real_part():
    items = list(range(7))
    for world in (2, 3, 8):
        shares = [_rank(rank, world, "FSDP").even_share(items) for rank in range(world)]
        assert len({len(share) for share, _ in shares}) == 1, "every rank calls the sharded policy equally often"
        assert [item for share, real in shares for item in share[:real]] == items
    assert _rank(1, 2).even_share(items) == (_rank(1, 2).share(items), 3), "no padding when weights are whole"


def test_shares_of_every_rank_join_back_into_the_list_in_order():
    items = list(range(11))
    for world in (1, 2, 3, 4, 16):
        shares = [_rank(rank, world).share(items) for rank in range(world)]
        assert [item for share in shares for item in share] == items
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert Processes().share(items) == items and Processes().gather(items) == items
    assert Processes().any(True) and not Processes().any(False)


def test_a_single_process_engine_refuses_a_multi_process_launch(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"distributed.engine=single is invalid: 2 processes were launched"):
        Processes.launched("single", "cpu")


def test_every_rank_of_a_launch_names_the_same_output_folder(tmp_path):
    """Ranks start a moment apart; the folder comes from the launcher's start time, which they share."""
    code = (
        "import time, sys; time.sleep(float(sys.argv[1])); from superhf_lab.runtime.distributed import launch_time; "
        "print(launch_time('%Y-%m-%d/%H-%M-%S.%f'))"
    )
    env = {**os.environ, "WORLD_SIZE": "2", "PYTHONPATH": str(ROOT)}
    first = subprocess.run([sys.executable, "-c", code, "0"], env=env, capture_output=True, text=True, check=True)
    second = subprocess.run([sys.executable, "-c", code, "1.2"], env=env, capture_output=True, text=True, check=True)
    assert first.stdout == second.stdout
    assert launch_time("%Y") == time.strftime("%Y")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_one_update_on_two_processes_equals_the_update_on_one(tiny_world, tmp_path, engine):
    """Minibatches of 5 and 3 split 3 + 2 and 2 + 1 over the ranks: under FSDP the short rank pads its share (runs the
    policy on a copy that contributes nothing), so both call the sharded policy equally often."""
    uneven = "algorithm.minibatch_size_finetuning=5"
    one, two = (
        _update(tiny_world, tmp_path, 1, "clean", uneven),
        _update(tiny_world, tmp_path, 2, "clean", uneven, f"distributed={engine}"),
    )
    assert two["world_size"] == 2
    loss_length, gradient_length = _reduction_lengths(tiny_world, minibatch=5)
    assert_same_losses(two["losses"], one["losses"], loss_length)  # summed over the ranks' shares
    assert one["losses"]["kl"] > 0, "later minibatches measure a KL to the starting policy"
    start = dict(AutoModelForCausalLM.from_pretrained(tiny_world.root / "policy").named_parameters())
    for name, weight in one["weights"].items():
        assert (weight - start[name]).abs().max() > LR / 2, f"{name} moved"
    assert_same_update(two, one, gradient_length)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("engine", "value_model"), [("ddp", "separate"), ("fsdp", "separate"), ("fsdp", "shared_backbone")]
)
def test_one_ppo_update_on_two_processes_equals_the_update_on_one(tiny_world, tmp_path, engine, value_model):
    """Ten completions, minibatches of 5 split 3 + 2 over the ranks, two epochs: each rank computes its share of the
    rollout's statistics and of every minibatch's gradients; the update is the one-process update. Under FSDP2 the
    policy and a separate value model's backbone are sharded (two roots), the value head is whole on every rank,
    and the short rank pads its share with a row that contributes nothing."""
    value = f"algorithm.value_model={value_model}"
    one = _ppo_update(tiny_world, tmp_path, 1, "clean", value)
    two = _ppo_update(tiny_world, tmp_path, 2, "clean", value, f"distributed={engine}")
    assert two["world_size"] == 2 and len(one["steps"]) == 4
    assert two["sharded"] == (engine == "fsdp")
    loss_length, gradient_length = _reduction_lengths(tiny_world, minibatch=5)
    assert_same_update(two, one, gradient_length)
    for name in ("loss/policy", "loss/value", "ppo/entropy", "kl_estimate/k3"):
        expected = one["metrics"][name]
        assert two["metrics"][name] == pytest.approx(
            expected, abs=fp32_tolerance(loss_length, max(abs(expected), 1))
        ), name


@pytest.mark.slow
def test_out_of_memory_or_a_nan_on_one_rank_of_ppo_is_handled_on_both(tiny_world, tmp_path):
    ddp = "distributed=ddp"
    clean = _ppo_update(tiny_world, tmp_path, 2, "clean", ddp)
    halved = _ppo_update(tiny_world, tmp_path, 2, "oom_on_rank_1", ddp)
    assert halved["optimisation_size"] == clean["optimisation_size"] // 2, "rank 0 halved with rank 1"
    assert_same_update(halved, clean, _reduction_lengths(tiny_world, minibatch=5)[1])
    skipped = _ppo_update(tiny_world, tmp_path, 2, "nan_on_rank_1", ddp)
    assert skipped["nonfinite_losses"] == 1 and clean["nonfinite_losses"] == 0, "rank 0 counted rank 1's NaN"
    assert len(skipped["steps"]) == len(clean["steps"]) - 1, "that minibatch's step is skipped on both"


@pytest.mark.slow
def test_lora_adapters_trained_under_fsdp_equal_those_trained_under_ddp(tiny_world, tmp_path):
    lora = "algorithm.lora.enabled=true"
    ddp = _update(tiny_world, tmp_path, 2, "clean", lora, "distributed=ddp")
    fsdp = _update(tiny_world, tmp_path, 2, "clean", lora, "distributed=fsdp")
    assert set(fsdp["weights"]) == set(ddp["weights"]) and all("lora_" in name for name in ddp["weights"])
    assert any(weight.abs().max() > LR / 2 for name, weight in ddp["weights"].items() if "lora_B" in name), "trained"
    assert_same_update(fsdp, ddp, _reduction_lengths(tiny_world, minibatch=4)[1])


@pytest.mark.slow
def test_out_of_memory_on_one_rank_halves_the_minibatch_on_both_and_changes_no_update(tiny_world, tmp_path):
    clean, faulty = _update(tiny_world, tmp_path, 2), _update(tiny_world, tmp_path, 2, "oom_on_rank_1")
    assert faulty["finetuning_size"] == clean["finetuning_size"] // 2, "rank 0 halved with rank 1"
    loss_length, gradient_length = _reduction_lengths(tiny_world, minibatch=4)  # micro-batches: sums in another order
    assert_same_losses(faulty["losses"], clean["losses"], loss_length)
    assert_same_update(faulty, clean, gradient_length)


@pytest.mark.slow
def test_under_fsdp_out_of_memory_on_one_rank_ends_the_run_naming_the_key_instead_of_hanging(tiny_world, tmp_path):
    out = tmp_path / "update.pt"
    done = subprocess.run(
        _torchrun(WORKER, [str(tiny_world.root), str(out), "oom_on_rank_1", "distributed=fsdp"]),
        cwd=tmp_path,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode != 0 and not out.exists()
    assert "lower algorithm.minibatch_size_finetuning" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_a_nan_loss_on_one_rank_skips_that_minibatch_on_both(tiny_world, tmp_path, engine):
    engine = f"distributed={engine}"
    clean, faulty = (
        _update(tiny_world, tmp_path, 2, "clean", engine),
        _update(tiny_world, tmp_path, 2, "nan_on_rank_1", engine),
    )
    assert faulty["nonfinite_losses"] == 1 and clean["nonfinite_losses"] == 0, "rank 0 counted rank 1's NaN"
    start = dict(AutoModelForCausalLM.from_pretrained(tiny_world.root / "policy").named_parameters())
    name = "embed_out.weight" if "embed_out.weight" in start else next(iter(start))
    step = (faulty["weights"][name] - start[name]).abs().max()
    # Adam's first step moves a weight by lr x g / (|g| + 1e-8): at most lr, nearly lr where |g| >> 1e-8 (most of the
    # output layer); a second step in the same direction would move such weights nearly 2 x lr.
    assert LR / 2 < step < 1.5 * LR, "one Adam step (the second minibatch's), not two"
    assert not torch.equal(faulty["weights"][name], clean["weights"][name])


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["auto", "fsdp"])
def test_a_two_process_superhf_run_is_one_mlflow_run_with_each_step_once(tiny_world, tmp_path, engine):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [
        f"tiny_world.dir={tiny_world.root}",
        f"mlflow.tracking_uri={uri}",
        "device=cpu",
        f"distributed={engine}",
        "algorithm.num_superbatches=3",
        "eval.prompts_per_source=4",
        f"checkpoint.dir={tmp_path}/checkpoints",
    ]
    _run(_torchrun(ROOT / "run.py", args), tmp_path)
    runs = _runs(uri)
    assert len(runs) == 1, "only the main rank opens an MLflow run"
    run, client = runs[0], mlflow.MlflowClient(uri)
    assert run.data.params["world_size"] == "2"
    for metric in ("reward/mean", "kl", "diversity/meteor_similarity", "progress/completions_generated"):
        assert _steps(client, run.info.run_id, metric) == [0, 1, 2], metric
    generated = client.get_metric_history(run.info.run_id, "progress/completions_generated")
    # counts: exact in MLflow's float64
    assert max(m.value for m in generated) == 3 * 2 * 16, "a superbatch is global: 2 prompts x 16 on 2 processes"
    assert client.get_metric_history(run.info.run_id, "eval/all/prompts")[0].value == 12, "both ranks' test prompts"
    assert len(list((tmp_path / "outputs").glob("*/*"))) == 1, "one output folder for both ranks"
    saved = load_file(client.download_artifacts(run.info.run_id, "policy/model.safetensors", str(tmp_path)))
    start = load_file(str(tiny_world.root / "policy" / "model.safetensors"))
    assert {name: tuple(t.shape) for name, t in saved.items()} == {name: tuple(t.shape) for name, t in start.items()}, (
        "the whole policy, gathered from the shards under FSDP"
    )


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["auto", "fsdp"])
def test_a_killed_two_process_run_resumes_to_the_weights_of_an_unkilled_one(tiny_world, tmp_path, engine):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = [
        f"tiny_world.dir={tiny_world.root}",
        f"mlflow.tracking_uri={uri}",
        "device=cpu",
        "eval.at_end=false",
        f"distributed={engine}",
        "algorithm.num_superbatches=8",
        "algorithm.superbatch_size=4",
        "checkpoint.every_n_steps=2",
    ]
    _run(_torchrun(ROOT / "run.py", [*common, f"checkpoint.dir={tmp_path}/reference"]), tmp_path)
    client = mlflow.MlflowClient(uri)
    reference = _runs(uri)[0]

    args = [*common, f"checkpoint.dir={tmp_path}/checkpoints"]
    log = (tmp_path / "killed.log").open("w")
    launch = subprocess.Popen(
        _torchrun(ROOT / "run.py", args), cwd=tmp_path, env=_environment(), stdout=log, stderr=subprocess.STDOUT
    )

    def killable() -> bool:
        metas = [CheckpointStore(path).latest_meta() for path in (tmp_path / "checkpoints").glob("*")]
        meta = next((meta for meta in metas if meta), None)
        return meta is not None and 2 in _steps(client, meta["run_id"], "reward/mean")

    deadline = time.monotonic() + 300
    while not killable():
        assert launch.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.1)
    for process in [psutil.Process(launch.pid), *psutil.Process(launch.pid).children(recursive=True)]:
        process.send_signal(signal.SIGKILL)  # the launcher and both ranks (torchrun starts them in their own sessions)
    launch.wait()
    records = [CheckpointStore(path).run_record() for path in (tmp_path / "checkpoints").glob("*")]
    assert not next(record for record in records if record)["finished"], "killed mid-run"

    _run(_torchrun(ROOT / "run.py", args), tmp_path)
    runs = [run for run in _runs(uri) if run.info.run_id != reference.info.run_id]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", "the resumed launch continued the killed run"
    assert _steps(client, runs[0].info.run_id, "reward/mean") == list(range(8))
    weights = {}
    for run in (reference, runs[0]):
        folder = client.download_artifacts(run.info.run_id, "policy", str(tmp_path / run.info.run_id))
        weights[run.info.run_id] = load_file(str(Path(folder) / "model.safetensors"))
    expected, actual = weights[reference.info.run_id], weights[runs[0].info.run_id]
    # Exact: the resumed run replays the same float operations in the same order from bit-identical weights, optimizer
    # state and RNG. No tolerance could stand for float error here anyway: the run samples its completions, so a
    # difference in any logit changes the tokens drawn and moves weights by whole Adam steps.
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_two_process_ppo_under_fsdp_and_best_of_n_finish_with_global_batches(tiny_world, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = [
        f"tiny_world.dir={tiny_world.root}",
        f"mlflow.tracking_uri={uri}",
        "device=cpu",
        "eval.prompts_per_source=4",
    ]
    # PPO under FSDP2 (its policy and value backbone sharded): the whole run, its checkpoint and artifact gathered
    ppo_overrides = ["algorithm=ppo", "algorithm.num_updates=2", "algorithm.value_model=separate", "distributed=fsdp"]
    _run(_torchrun(ROOT / "run.py", [*common, *ppo_overrides]), tmp_path)
    _run(_torchrun(ROOT / "run.py", [*common, "algorithm=best_of_n", "algorithm.n=4"]), tmp_path)
    client = mlflow.MlflowClient(uri)
    ppo, best_of_n = sorted(_runs(uri), key=lambda run: run.data.tags["algorithm"] != "ppo")
    assert ppo.data.params["world_size"] == best_of_n.data.params["world_size"] == "2"
    assert _steps(client, ppo.info.run_id, "reward/mean") == [0, 1]
    assert [m.value for m in client.get_metric_history(ppo.info.run_id, "progress/completions_generated")] == [32, 64]
    assert {a.path for a in client.list_artifacts(ppo.info.run_id, "policy")} >= {"policy/model.safetensors"}
    assert client.get_metric_history(best_of_n.info.run_id, "eval/all/prompts")[0].value == 12


@pytest.mark.slow
def test_each_job_of_a_submitit_sweep_runs_as_one_two_task_run(tiny_world, tmp_path):
    """The SLURM launcher's path (one task per GPU) through submitit's local executor, on CPU."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.tasks_per_node=2",
            "hydra.launcher.timeout_min=10",
            "device=cpu",
            f"tiny_world.dir={tiny_world.root}",
            f"mlflow.tracking_uri={uri}",
            "algorithm.num_superbatches=2",
            "eval.prompts_per_source=4",
            "kl_coef=0.1",
        ],
        cwd=tmp_path,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    jobs = [run for run in _runs(uri) if "world_size" in run.data.params]  # not the sweep's parent run
    assert [(run.data.params["world_size"], run.info.status) for run in jobs] == [("2", "FINISHED")]
    client = mlflow.MlflowClient(uri)
    assert _steps(client, jobs[0].info.run_id, "reward/mean") == [0, 1]


@pytest.mark.slow
def test_a_launch_that_is_not_the_configured_engine_is_refused_naming_the_key(tiny_world, tmp_path):
    done = subprocess.run(
        _torchrun(ROOT / "run.py", [f"tiny_world.dir={tiny_world.root}", "device=cpu", "distributed=deepspeed_zero2"]),
        cwd=tmp_path,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode != 0
    assert "distributed.engine=deepspeed is invalid for this launch: accelerate set up MULTI_CPU" in done.stderr
    assert re.search(r"exitcode\s*:\s*2 ", done.stderr), "each rank ends with the configuration error's status"
    assert not (tmp_path / "mlflow.db").exists(), "refused before any MLflow store is touched"


@pytest.mark.slow
def test_a_trl_algorithm_refuses_fsdp_on_cpu_processes_instead_of_running_ddp(tiny_world, tmp_path):
    """A transformers Trainer sets accelerate up again from the launch, which on CPU means DDP (seen: its model
    came out DDP-wrapped, no parameter sharded): asking for FSDP there must not run something else."""
    done = subprocess.run(
        _torchrun(
            ROOT / "run.py", [f"tiny_world.dir={tiny_world.root}", "device=cpu", "distributed=fsdp", "algorithm=grpo"]
        ),
        cwd=tmp_path,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert re.search(r"exitcode\s*:\s*2 ", done.stderr), done.stderr[-3000:]
    assert "distributed.engine='fsdp' is invalid: algorithm=grpo trains through a transformers Trainer" in done.stderr
    assert not (tmp_path / "mlflow.db").exists(), "refused before any MLflow store is touched"


@pytest.mark.slow
def test_two_process_grpo_and_dpo_keep_their_per_step_sizes_global(tiny_world, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = [
        f"tiny_world.dir={tiny_world.root}",
        f"mlflow.tracking_uri={uri}",
        "device=cpu",
        "eval.prompts_per_source=4",
        "algorithm.num_steps=2",
    ]
    for algorithm in ("grpo", "dpo"):
        _run(_torchrun(ROOT / "run.py", [*common, f"algorithm={algorithm}"]), tmp_path)
    client = mlflow.MlflowClient(uri)
    runs = {run.data.tags["algorithm"]: run for run in _runs(uri)}

    def history(algorithm: str, metric: str) -> list[float]:
        return [
            m.value
            for m in sorted(client.get_metric_history(runs[algorithm].info.run_id, metric), key=lambda m: m.step)
        ]

    assert history("grpo", "progress/completions_generated") == [32, 64], "4 prompts x 8 per step over both"
    assert history("dpo", "progress/prompts_seen") == [32, 64], "32 pairs per step over both"
    assert all(run.data.params["world_size"] == "2" for run in runs.values())
    assert all(history(algorithm, "eval/all/prompts") == [12] for algorithm in runs)
