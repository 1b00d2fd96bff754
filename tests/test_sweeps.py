"""A Hydra multirun becomes one MLflow parent run with a child per job, and the report plots it."""

import mlflow
import optuna
import pytest
from conftest import run_cli
from omegaconf import OmegaConf

from superhf_lab.reporting import report
from superhf_lab.tracking.provenance import ROLE_TAG, STUDY_TAG

pytestmark = pytest.mark.slow


def test_grid_sweep_nests_jobs_under_one_parent_and_reports_them(tiny_world, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = [
        f"tiny_world.dir={tiny_world.root}",
        "algorithm.num_superbatches=2",
        "algorithm.superbatch_size=4",
        f"mlflow.tracking_uri={uri}",
    ]
    for _ in range(2):  # two sweeps: their runs must stay apart
        result = run_cli(["-m", "algorithm=superhf", "kl_coef=0,0.1,0.35", *common], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "multirun").glob("*/*/[0-9]"))) == 6, "Hydra writes one folder per job under multirun/"

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny_world").experiment_id])
    parents = [run for run in runs if run.data.tags.get(ROLE_TAG) == "sweep"]
    assert len(parents) == 2
    for parent in parents:
        children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(child.data.tags["sweep.kl_coef"] for child in children) == ["0", "0.1", "0.35"]
        assert sorted(child.data.params["kl_coef"] for child in children) == ["0", "0.1", "0.35"]
        assert {child.info.run_name for child in children} == {"kl_coef=0", "kl_coef=0.1", "kl_coef=0.35"}
        assert "sweep.algorithm" not in children[0].data.tags, "only the swept keys are tagged as such"

    out = tmp_path / "report"
    paths = report.main(["--sweep", "latest", "--tracking-uri", uri, "--out", str(out)])
    assert [p.name for p in paths] == list(report.PLOTS)
    assert all(p.stat().st_size > 10_000 for p in paths), "each PNG holds a drawn figure"
    latest = max(parents, key=lambda run: run.info.start_time)
    logged = {a.path for a in client.list_artifacts(latest.info.run_id, "report")}
    assert logged == {f"report/{name}" for name in report.PLOTS}


SMALL = ["algorithm.num_superbatches=2", "algorithm.superbatch_size=4", "objective.last_n=1"]


def _runs_by_role(uri: str, experiment: str = "tiny_world") -> tuple[list, list]:
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return (
        [r for r in runs if r.data.tags.get(ROLE_TAG) == "sweep"],
        [r for r in runs if r.data.tags.get(ROLE_TAG) == "job"],
    )


def test_optuna_study_resumes_across_invocations_and_records_crashed_trials(tiny_world, tmp_path):
    """Run the KL-coefficient study twice; a sampled top_k above superbatch_size crashes its trial.

    TPE's startup trials are random; with seed 0 the two trials of each invocation draw top_k 1, then 8.
    """
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = f"sqlite:///{tmp_path}/studies.db"
    args = [
        "-m",
        "hparams_search=kl_coef",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.seed=0",
        "algorithm.top_k=choice(1,8)",
        f"tiny_world.dir={tiny_world.root}",
        f"mlflow.tracking_uri={uri}",
        *SMALL,
    ]
    for _ in range(2):
        result = run_cli(args, cwd=tmp_path, env={"OPTUNA_STORAGE": storage})
        assert result.returncode == 0, result.stderr[-3000:]

    study = optuna.load_study(study_name="kl_coef_tiny_world_superhf", storage=storage)
    assert len(study.trials) == 4, "the second invocation added to the first one's study"
    states = {trial.number: (trial.state.name, trial.params["algorithm.top_k"]) for trial in study.trials}
    assert sorted(states.values()) == [("COMPLETE", 1), ("COMPLETE", 1), ("FAIL", 8), ("FAIL", 8)]
    assert all(0 <= trial.params["kl_coef"] <= 1 for trial in study.trials)

    parents, children = _runs_by_role(uri)
    assert len(parents) == 1 and parents[0].data.tags[STUDY_TAG] == study.study_name, "one parent for the whole study"
    assert len(children) == 2 and all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert all(c.info.run_name.startswith("kl_coef=") and "sweep.kl_coef" in c.data.tags for c in children)

    out = tmp_path / "report"
    paths = report.main(["--study", study.study_name, "--storage", storage, "--tracking-uri", uri, "--out", str(out)])
    assert [p.name for p in paths] == [*report.STUDY_PLOTS, *report.PLOTS]
    assert all(p.stat().st_size > 10_000 for p in paths)
    logged = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(parents[0].info.run_id, "report")}
    assert {f"report/{name}" for name in report.STUDY_PLOTS} <= logged


def test_multi_objective_study_reports_its_pareto_front(tiny_world, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = f"sqlite:///{tmp_path}/studies.db"
    result = run_cli(
        [
            "-m",
            "hparams_search=reward_vs_diversity",
            "hydra.sweeper.n_trials=3",
            f"hydra.sweeper.storage={storage}",
            f"tiny_world.dir={tiny_world.root}",
            f"mlflow.tracking_uri={uri}",
            *SMALL,
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="reward_vs_diversity_tiny_world_superhf", storage=storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert len(study.trials) == 3 and all(len(t.values) == 2 for t in study.trials)
    pareto = OmegaConf.load(next((tmp_path / "multirun").glob("*/*/optimization_results.yaml")))
    assert 1 <= len(pareto.solutions) <= 3

    _, children = _runs_by_role(uri)
    for child in children:  # each trial's MLflow run holds the values Optuna was told: exact, one float64 each
        trial = next(t for t in study.trials if f"{t.params['kl_coef']}" == child.data.tags["sweep.kl_coef"])
        assert child.data.metrics["objective/reward/mean"] == trial.values[0]
        assert child.data.metrics["objective/diversity/meteor_similarity"] == trial.values[1]

    paths = report.main(
        ["--study", study.study_name, "--storage", storage, "--tracking-uri", uri, "--out", str(tmp_path / "report")]
    )
    assert report.PARETO_PLOT in [p.name for p in paths]


@pytest.mark.parametrize("launcher", ["parallel", "submitit_local"])
def test_parallel_launchers_log_concurrent_jobs_to_a_tracking_server(launcher, tiny_world, mlflow_server, tmp_path):
    """Two jobs at once (joblib processes, or submitit's local executor) against a real mlflow server."""
    experiment = f"launch_{launcher}"
    result = run_cli(
        [
            "-m",
            f"hydra/launcher={launcher}",
            "kl_coef=0,0.35",
            f"tiny_world.dir={tiny_world.root}",
            f"mlflow.experiment_name={experiment}",
            *SMALL,
        ],
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": mlflow_server},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parents, children = _runs_by_role(mlflow_server, experiment)
    assert len(parents) == 1, "concurrent jobs agreed on one parent run"
    assert sorted(c.data.tags["sweep.kl_coef"] for c in children) == ["0", "0.35"]
    client = mlflow.MlflowClient(mlflow_server)
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert [m.step for m in client.get_metric_history(child.info.run_id, "reward/mean")] == [0, 1]
        assert "completions.json" in {a.path for a in client.list_artifacts(child.info.run_id)}


def test_a_trial_left_running_by_a_dead_sweep_is_requeued_first(tiny_world, tmp_path):
    """A sweep killed mid-trial leaves it RUNNING; the next invocation fails it and runs its parameters again."""
    storage = f"sqlite:///{tmp_path}/studies.db"
    study = optuna.create_study(study_name="kl_coef_tiny_world_superhf", storage=storage, direction="maximize")
    orphan = study.ask()
    orphan.suggest_float("kl_coef", 0.0, 1.0)
    result = run_cli(
        [
            "-m",
            "hparams_search=kl_coef",
            "hydra.sweeper.n_trials=1",
            f"hydra.sweeper.storage={storage}",
            f"tiny_world.dir={tiny_world.root}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            *SMALL,
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna.load_study(study_name=study.study_name, storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params == orphan.params, "the orphaned trial's parameters ran again"
