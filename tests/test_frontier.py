"""`make frontier`: every run's over-optimisation path, each algorithm's envelope read at matched KL, Gao et al.'s
fits, the figures, the README's block, and one parent MLflow run holding them."""

import math

import mlflow
import numpy as np
import pytest

from superhf_lab.launch import frontier
from superhf_lab.reporting.frontier import AlgorithmFrontier, RunPath, envelope, gold_within
from superhf_lab.tracking.provenance import ROLE_TAG, SWEEP_TAG


def _path(seed, kl, gold, algorithm="A"):
    kl, gold = np.asarray(kl, dtype=float), np.asarray(gold, dtype=float)
    return RunPath(algorithm, seed, f"{algorithm} {seed}", np.sqrt(kl), gold, gold * 2)


def test_the_envelope_is_the_most_gold_within_each_kl_budget_linear_between_its_corners():
    kl, gold = np.array([0.0, 1.0, 2.0, 3.0, 4.0]), np.array([0.0, 0.5, 0.3, 0.9, 0.8])
    corners_kl, corners_gold = envelope(kl, gold)
    assert corners_kl.tolist() == [0.0, 1.0, 3.0] and corners_gold.tolist() == [0.0, 0.5, 0.9]
    paths = [_path(0, [0, 1, 2], [0.1, 0.6, 0.4]), _path(0, [0, 3, 4], [0.1, 1.0, 0.9])]  # gains 0.5, 0.3 / 0.9, 0.8
    assert gold_within(paths, 2.0) == pytest.approx(0.5 + (0.9 - 0.5) / 2, rel=1e-12), "halfway from 1 to 3 nats"
    assert math.isnan(gold_within(paths, 5.0)), "beyond the largest KL measured: no value"


def test_matched_kl_needs_every_seed_to_reach_it_and_averages_their_envelopes():
    group = AlgorithmFrontier("A", [_path(0, [0, 1, 4], [0, 0.2, 0.4]), _path(1, [0, 1, 2], [0, 0.4, 0.5])])
    mean, width, reached = group.matched(1.0)
    assert reached == 2 and mean == pytest.approx(0.3, rel=1e-12) and width > 0
    assert math.isnan(group.matched(4.0)[0]) and group.matched(4.0)[2] == 1, "seed 1 stops at 2 nats"


SEARCH = """
name: quick_search
experiment_name: quick_search
seed: 0
learning_rates: [1.0e-4, 1.0e-2]
common: [tiny_world.dir={tiny_world}, eval.prompts_per_source=4, eval.meteor_pairs_per_source=8]
algorithms:
  - name: SuperHF
    overrides: [algorithm=superhf, kl_coef=0, algorithm.num_superbatches=4, algorithm.superbatch_size=4,
                algorithm.warmup_superbatches=0]
"""

SPEC = """
name: quick_frontier
search: {search}
experiment_name: quick_frontier
seeds: [0, 1]
common: [tiny_world.dir={tiny_world}, eval.prompts_per_source=4, eval.meteor_pairs_per_source=8, eval.every_n_steps=2]
caption: A quick check.
rows:
  - label: SuperHF, kl_coef=0
    group: SuperHF
    overrides: [algorithm=superhf, kl_coef=0, algorithm.num_superbatches=4, algorithm.superbatch_size=4,
                algorithm.warmup_superbatches=0]
  - label: SuperHF, kl_coef=0.35
    group: SuperHF
    overrides: [algorithm=superhf, kl_coef=0.35, algorithm.num_superbatches=4, algorithm.superbatch_size=4,
                algorithm.warmup_superbatches=0]
  - label: best-of-n
    group: best-of-n
    overrides: [algorithm=best_of_n, algorithm.n=2, algorithm.pool=8]
"""


@pytest.mark.slow
def test_make_frontier_writes_the_table_figures_and_readme_and_files_them_under_one_parent_run(
    tiny_world, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    spec, search = tmp_path / "quick.yaml", tmp_path / "search.yaml"
    search.write_text(SEARCH.format(tiny_world=tiny_world.root))
    spec.write_text(SPEC.format(tiny_world=tiny_world.root, search=search))
    readme = tmp_path / "README.md"
    readme.write_text("Intro\n<!-- frontier: quick_frontier -->\nstale\n<!-- /frontier: quick_frontier -->\nOutro\n")
    args = ["--spec", str(spec), "--out", str(tmp_path / "results"), "--readme", str(readme)]

    block = frontier.main(args)
    rows = [line for line in block.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| SuperHF", "| best-of-n"]
    superhf, best = (row.split(" | ") for row in rows)
    assert superhf[1] == "4" and best[1] == "2", "2 rows x 2 seeds of SuperHF; one best-of-n run per seed"
    assert best[7] == "best-of-n" and superhf[7] == "RL", "each algorithm's own form"
    assert best[2] == f"{math.log(8) - 7 / 8:.2f}", "best-of-n's largest KL: its pool of 8"
    assert best[4] == "—" and best[5] == "—", "a pool of 8 reaches neither 2 nor 4 nats"
    assert superhf[-1] in ("0/2 |", "1/2 |", "2/2 |") and best[-1] == "— |", "the search's stable share"
    searched = (tmp_path / "results" / "quick_search.md").read_text()
    assert searched.count("| SuperHF |") == 1 and "chosen lr" in searched, "the search's own table"
    assert "How to read it." in block and "written by `make frontier`".lower() in block.lower()
    out = tmp_path / "results"
    assert (out / "quick_frontier.md").read_text() == block
    for figure in ("quick_frontier_kl.png", "quick_frontier_gao.png"):
        assert (out / figure).stat().st_size > 10_000
    assert "](results/quick_frontier_kl.png)" in readme.read_text(), "the README's block links the figures"

    client = mlflow.MlflowClient(f"sqlite:///{out}/quick_frontier.db")
    experiment_id = client.get_experiment_by_name("quick_frontier").experiment_id
    runs = client.search_runs([experiment_id])
    parent = next(run for run in runs if run.data.tags.get(ROLE_TAG) == "sweep")
    jobs = [run for run in runs if run.data.tags.get(ROLE_TAG) == "job"]
    assert len(jobs) == 6 and all(run.data.tags["mlflow.parentRunId"] == parent.info.run_id for run in jobs)
    assert all(run.data.tags[SWEEP_TAG] == parent.data.tags[SWEEP_TAG] for run in jobs)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "frontier")} == {
        "frontier/quick_frontier.md",
        "frontier/quick_frontier_kl.png",
        "frontier/quick_frontier_gao.png",
    }
    assert frontier.main(args) == block, "a second call reuses the finished runs"
    assert len(client.search_runs([experiment_id])) == 7, "6 jobs and their parent"
