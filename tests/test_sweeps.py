"""A Hydra multirun becomes one MLflow parent run with a child per job, and the report plots it."""

import mlflow
import pytest

from conftest import run_cli
from superhf_lab import report
from superhf_lab.sweeps import ROLE_TAG

pytestmark = pytest.mark.slow


def test_grid_sweep_nests_jobs_under_one_parent_and_reports_them(tiny_world, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = [f"tiny_world.dir={tiny_world.root}", "algorithm.num_superbatches=2", "algorithm.superbatch_size=4",
              f"mlflow.tracking_uri={uri}"]
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
