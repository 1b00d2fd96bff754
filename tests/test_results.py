"""`make results`: each (row, seed) runs once, the table is built from exactly those runs, and the README's
block is the command's current output."""

import json
import re

import mlflow
import pytest
from conftest import ROOT

from superhf_lab.launch import frontier, presets, results
from superhf_lab.reporting.readme import read_block
from superhf_lab.tracking.provenance import code_version

SPEC = """
name: quick
experiment_name: quick_results
seeds: [0, 1]
common: [tiny_world.dir={tiny_world}, eval.prompts_per_source=4, eval.meteor_pairs_per_source=8]
caption: A quick check.
rows:
  - label: starting policy
    overrides: [mode=eval]
  - label: SuperHF, kl_coef=0
    overrides: [algorithm=superhf, kl_coef=0, algorithm.num_superbatches=2, algorithm.superbatch_size=4,
                algorithm.warmup_superbatches=0]
  - label: SuperHF, kl_coef=0.35
    overrides: [algorithm=superhf, kl_coef=0.35, algorithm.num_superbatches=2, algorithm.superbatch_size=4,
                algorithm.warmup_superbatches=0]
  - label: best-of-2
    overrides: [algorithm=best_of_n, algorithm.n=2]
"""


@pytest.mark.slow
def test_results_run_each_row_and_seed_once_and_write_the_table(tiny_world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "quick.yaml"
    spec.write_text(SPEC.format(tiny_world=tiny_world.root))
    readme = tmp_path / "README.md"
    readme.write_text("Intro\n<!-- results: quick -->\nstale\n<!-- /results: quick -->\nOutro\n")
    args = ["--spec", str(spec), "--out", str(tmp_path / "results"), "--readme", str(readme)]

    table = results.main(args)
    printed = capsys.readouterr().out
    assert "run 1 of 8: starting policy, seed 0 (" in printed and "run 8 of 8 finished in " in printed, (
        "a log, not a terminal, shows each run as it starts and ends"
    )
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0] for row in rows] == [
        "| starting policy",
        "| SuperHF, kl_coef=0",
        "| SuperHF, kl_coef=0.35",
        "| best-of-2",
    ]
    assert all(re.search(r"-?\d\.\d{3} ± \d\.\d{3}", row) for row in rows), "mean ± interval over the two seeds"
    assert rows[0].split(" | ")[4:6] == ["0.000 ± 0.000", "0.00 ± 0.00 |"], "the starting policy has KL 0"
    assert rows[3].endswith("| — | ≤ 0.19 (upper bound) |"), "best-of-N reports its KL bound, labelled"
    world = json.loads((tiny_world.root / "recipe.json").read_text())["fingerprint"]
    assert f"at commit `{code_version()}`, tiny world build `{world}`, configurations `" in table
    kl_low, kl_high = (row.split(" | ")[4].split(" ± ")[0] for row in rows[1:3])
    assert f"From SuperHF, kl_coef=0 to SuperHF, kl_coef=0.35, KL per token goes {kl_low} → {kl_high}" in table, (
        "the reading's numbers are the table's"
    )
    assert readme.read_text() == f"Intro\n<!-- results: quick -->\n{table}<!-- /results: quick -->\nOutro\n"
    assert (tmp_path / "results" / "quick.md").read_text() == table
    assert (tmp_path / "results" / "quick_kl_ablation.png").stat().st_size > 10_000

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/results/quick.db")
    experiment_id = client.get_experiment_by_name("quick_results").experiment_id
    assert len(client.search_runs([experiment_id])) == 8, "4 rows x 2 seeds"
    assert results.main(args) == table, "a second call reuses the finished runs"
    assert len(client.search_runs([experiment_id])) == 8
    assert "run 1 of 8" not in capsys.readouterr().out

    spec.write_text(SPEC.format(tiny_world=tiny_world.root).replace("algorithm.n=2", "algorithm.n=3"))
    with pytest.raises(SystemExit, match="no finished run of row .best-of-2. with seeds \\[0, 1\\] of this code"):
        results.main([*args, "--table-only"])


@pytest.mark.parametrize(
    ("marker", "name"),
    [
        ("results", results.load_spec(results.DEFAULT_SPEC).name),
        ("frontier", results.load_spec(frontier.DEFAULT_SPEC).name),
        ("presets", presets.load_search(presets.DEFAULT_SPEC).name),
    ],
)
def test_the_readme_shows_each_commands_current_table(marker, name):
    """The README's results, frontier and presets blocks are what make results, frontier and presets last wrote
    to results/ (figure links made relative to the README), and every figure they link is in the repository."""
    generated = (ROOT / "results" / f"{name}.md").read_text().replace(f"]({name}_", f"](results/{name}_")
    block = read_block((ROOT / "README.md").read_text(), f"<!-- {marker}: {name} -->", f"<!-- /{marker}: {name} -->")
    assert block == f"\n{generated}", f"the README's {marker} block is not the output of make {marker}: run it"
    for figure in re.findall(r"\]\((results/[^)]+\.png)\)", block):
        assert (ROOT / figure).is_file(), f"the README links {figure}, which is not in the repository"


def test_the_committed_results_table_has_a_row_per_spec_row():
    spec = results.load_spec(results.DEFAULT_SPEC)
    generated = (ROOT / "results" / f"{spec.name}.md").read_text()
    assert len([line for line in generated.splitlines() if line.startswith("|")]) == len(spec.rows) + 2, (
        "header, rule, rows"
    )
