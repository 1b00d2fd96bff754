"""run.py on the tiny world, read back from a real MLflow store."""

import json

import mlflow
import pytest
from conftest import run_cli

from superhf_lab.algorithms.superhf_trainer import METRIC_NAMES
from superhf_lab.metrics.overoptimisation import FIT_NAMES, PATH_NAMES, PEAK_NAMES

pytestmark = pytest.mark.slow


def _only_run(tracking_uri: str, experiment: str):
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_short_run_logs_every_metric_once_per_superbatch(tiny_world, tmp_path):
    """MLFLOW_TRACKING_URI chooses the store when the config leaves mlflow.tracking_uri null."""
    uri = f"sqlite:///{tmp_path}/env-chosen.db"
    steps = 3
    result = run_cli(
        [
            f"tiny_world.dir={tiny_world.root}",
            f"algorithm.num_superbatches={steps}",
            "algorithm.superbatch_size=6",
            "algorithm.warmup_superbatches=0",
            "mlflow.experiment_name=e2e",
            "seed=5",
            "eval.every_n_steps=1",
            "eval.prompts_per_source=8",
        ],
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = _only_run(uri, "e2e")
    assert run.info.status == "FINISHED"
    # evaluated after every superbatch; the over-optimisation path has the starting policy at step 0, then a point
    # after each superbatch, and is fitted at its end (the peak only when the fit turns down)
    path = {**dict.fromkeys(PATH_NAMES, list(range(steps + 1))), **dict.fromkeys(FIT_NAMES, [steps])}
    for name in (name for name in METRIC_NAMES if name not in PEAK_NAMES):
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == path.get(name, list(range(steps))), name
    kl = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "kl"), key=lambda m: m.step)]
    assert kl[0] == pytest.approx(0.0, abs=1e-6), "the policy starts as its own reference"
    assert kl[-1] > 0, "after fine-tuning the policy has moved away from the reference"
    completions = [m.value for m in client.get_metric_history(run.info.run_id, "progress/completions_generated")]
    assert sorted(completions) == [12, 24, 36]
    params = run.data.params
    assert params["kl_coef"] == "0.1" and params["algorithm.superbatch_size"] == "6" and params["seed"] == "5"
    assert params["model.name_or_path"] == f"{tiny_world.root}/policy"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "completions.json", "policy", "eval"} <= artifacts
    table = json.loads(open(client.download_artifacts(run.info.run_id, "completions.json", str(tmp_path))).read())
    assert len(table["data"]) == steps * 4
    assert {"prompt", "completion", "reward", "heldout_reward", "kept"} <= set(table["columns"])
    assert "objective" in run.data.metrics
    assert (tmp_path / "outputs").is_dir(), "Hydra writes its run folder under the working directory"


def test_lora_run_with_zero_kl_coef_still_logs_the_kl(tiny_world, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_cli(
        [
            f"tiny_world.dir={tiny_world.root}",
            "algorithm.num_superbatches=2",
            "algorithm.superbatch_size=4",
            "algorithm.warmup_superbatches=0",
            "algorithm.lora.enabled=true",
            "algorithm.learning_rate=1e-2",
            "kl_coef=0",
            f"mlflow.tracking_uri={uri}",
            "mlflow.experiment_name=lora",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = _only_run(uri, "lora")
    kl = sorted(client.get_metric_history(run.info.run_id, "kl"), key=lambda m: m.step)
    penalty = client.get_metric_history(run.info.run_id, "loss/kl_penalty")
    assert len(kl) == 2 and kl[1].value > 0, "KL against the adapter-free model grows once adapters train"
    assert all(m.value == 0 for m in penalty)
    assert run.data.params["algorithm.lora.enabled"] == "True"


def test_default_run_raises_the_proxy_reward(tiny_world, tmp_path):
    """The README's promise: the embedded default run visibly raises the proxy reward."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_cli([f"tiny_world.dir={tiny_world.root}", f"mlflow.tracking_uri={uri}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = _only_run(uri, "tiny_world")
    rewards = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "reward/mean"), key=lambda m: m.step)]
    fifth = len(rewards) // 5
    assert len(rewards) == 40
    assert sum(rewards[-fifth:]) / fifth > sum(rewards[:fifth]) / fifth


def test_diversity_metrics_computed_in_the_background_equal_the_inline_ones(tiny_world, tmp_path):
    """The background bookkeeping changes when METEOR and distinct-n are computed, never what is logged."""
    import torch
    from conftest import compose_config
    from transformers import set_seed

    from superhf_lab.algorithms.registry import get_algorithm
    from superhf_lab.launch.compose import validate_config
    from superhf_lab.tracking.store import check_tracking_store
    from superhf_lab.tracking.tracker import tracked_run
    from superhf_lab.training.context import RunContext

    previous_uri = mlflow.get_tracking_uri()
    histories = {}
    try:
        for background in (True, False):
            cfg = compose_config(
                [
                    f"tiny_world.dir={tiny_world.root}",
                    "algorithm.num_superbatches=3",
                    "algorithm.superbatch_size=4",
                    "algorithm.warmup_superbatches=0",
                    "eval.at_end=false",
                    f"mlflow.tracking_uri=sqlite:///{tmp_path}/{background}.db",
                ]
            )
            config = validate_config(cfg)
            check_tracking_store(config.mlflow)
            set_seed(0)
            with tracked_run(cfg, {}, "bookkeeping", tmp_path) as tracker:
                context = RunContext(config, tracker, torch.device("cpu"))
                trainer, stream = get_algorithm("superhf").build(context)
                trainer.train(stream, context, evaluator=None, background_bookkeeping=background)
            histories[background] = {
                name: values for name, values in tracker.history.items() if name.startswith("diversity/")
            }
    finally:
        mlflow.set_tracking_uri(previous_uri)
    assert histories[True] == histories[False]
    assert len(histories[True]["diversity/meteor_similarity"]) == 3
