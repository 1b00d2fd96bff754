"""Installed from a built wheel (not editable) into a clean venv, the package finds its configs and studies from any
directory: it runs the tiny world and an Optuna study."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import mlflow
import optuna
import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def test_a_wheel_installed_into_a_clean_venv_runs_the_tiny_world_and_a_study_from_elsewhere(tiny_world, tmp_path):
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        cwd=tmp_path,
    )
    wheel = next((tmp_path / "dist").glob("superhf_lab-*.whl"))
    venv = tmp_path / "clean"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python, site = venv / "bin" / "python", next((venv / "lib").glob("python3*/site-packages"))
    # Dependencies come from this environment (installing torch again would take minutes); the package itself
    # comes from the wheel alone: no editable finder is read from a path added this way.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    location = _run([str(python), "-c", "import superhf_lab; print(superhf_lab.__file__)"], cwd=elsewhere)
    assert location.stdout.strip().startswith(str(site)), "the package is the installed wheel, not the checkout"

    store = f"sqlite:///{tmp_path}/mlflow.db"
    common = [
        f"tiny_world.dir={tiny_world.root}",
        "algorithm.num_superbatches=2",
        "algorithm.superbatch_size=4",
        "algorithm.warmup_superbatches=0",
        "eval.prompts_per_source=4",
        f"mlflow.tracking_uri={store}",
    ]
    command = str(venv / "bin" / "superhf-lab")
    _run([command, *common], cwd=elsewhere)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = _run(
        [
            command,
            "-m",
            "hparams_search=kl_coef",
            "hydra.sweeper.n_trials=1",
            f"hydra.sweeper.storage={storage}",
            "objective.last_n=1",
            *common,
        ],
        cwd=elsewhere,
    )
    assert "open it:" in study.stdout, "the sweep's summary"

    client = mlflow.MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("tiny_world").experiment_id])
    assert sorted(r.data.tags.get("superhf_lab.role", "run") for r in runs) == ["job", "run", "sweep"]
    assert all(r.info.status == "FINISHED" for r in runs)
    trials = optuna.load_study(study_name="kl_coef_tiny_world_superhf", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"]
    assert (elsewhere / "outputs").is_dir() and (elsewhere / "multirun").is_dir()
