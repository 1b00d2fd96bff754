"""``make results``: every number of the README's results table comes from this one command.

    python -m superhf_lab.results                  # run what is missing, then write the table
    python -m superhf_lab.results --table-only     # rebuild the table from the runs already in the store

A spec (``sweeps/results/tiny_world.yaml``) names each row's overrides and the seeds. Each (row, seed) is one
``run.py`` run in the results' own MLflow store (``results/<name>.db``). A finished run of the same
configuration fingerprint and the same code version is reused, so an interrupted ``make results`` continues
where it stopped, while a changed row or changed code runs again. The table (mean and 95% interval over seeds)
goes to ``results/<name>.md`` and between the ``<!-- results: <name> -->`` markers of README.md; the KL-ablation
figure goes next to it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from omegaconf import OmegaConf
from rich.console import Console
from rich.progress import Progress

from superhf_lab.config.fingerprint import run_fingerprint
from superhf_lab.config.resources import resource_dir
from superhf_lab.launch.compose import compose_run_config
from superhf_lab.reporting.readme import write_block
from superhf_lab.reporting.report import TEST_METRICS, SeedGroup, plot_kl_ablation, summarise
from superhf_lab.tracking.provenance import CODE_TAG, CONFIG_TAG, code_version

DEFAULT_SPEC = resource_dir("sweeps") / "results" / "tiny_world.yaml"
COLUMNS = ("proxy reward", "held-out reward", "METEOR similarity", "KL per token", "KL per sequence")


@dataclass
class ResultRow:
    label: str
    overrides: list[str]


@dataclass
class ResultsSpec:
    """What `make results` runs: rows of overrides, each with every seed, plus overrides common to all."""

    name: str
    experiment_name: str
    seeds: list[int]
    rows: list[ResultRow]
    common: list[str] = field(default_factory=list)
    caption: str = ""


def load_spec(path: Path) -> ResultsSpec:
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    rows = [ResultRow(row["label"], list(row.get("overrides", []))) for row in raw.pop("rows")]
    return ResultsSpec(rows=rows, **raw)


def row_overrides(spec: ResultsSpec, row: ResultRow, seed: int, store: str) -> list[str]:
    return [
        *spec.common,
        *row.overrides,
        f"seed={seed}",
        f"mlflow.tracking_uri={store}",
        f"mlflow.experiment_name={spec.experiment_name}",
        f"mlflow.run_name={json.dumps(row.label)}",
    ]


def fingerprint(overrides: list[str]) -> str:
    """The configuration fingerprint run.py would tag this run with."""
    return run_fingerprint(compose_run_config(overrides))


def finished_run(client: mlflow.MlflowClient, experiment_id: str | None, config_fingerprint: str):
    if experiment_id is None:
        return None
    found = client.search_runs(
        [experiment_id],
        max_results=1,
        filter_string=(
            f"tags.`{CONFIG_TAG}` = '{config_fingerprint}' and tags.`{CODE_TAG}` = '{code_version()}' and "
            "attributes.status = 'FINISHED'"
        ),
    )
    return found[0] if found else None


def run_missing(spec: ResultsSpec, store: str, out: Path, console: Console) -> None:
    """Run every (row, seed) the store has no finished run of; stop at the first failure, naming its log."""
    client = mlflow.MlflowClient(store)
    jobs = [(row, seed) for row in spec.rows for seed in spec.seeds]
    with Progress(console=console) as progress:
        task = progress.add_task("results runs", total=len(jobs))
        for index, (row, seed) in enumerate(jobs):
            overrides = row_overrides(spec, row, seed, store)
            experiment = client.get_experiment_by_name(spec.experiment_name)
            if finished_run(client, experiment and experiment.experiment_id, fingerprint(overrides)) is None:
                progress.update(task, description=f"{row.label}, seed {seed}")
                run_dir = out / f"{spec.name}_runs" / f"{index:02d}"
                run_dir.mkdir(parents=True, exist_ok=True)
                with (run_dir / "run.log").open("w") as log:
                    finished = subprocess.run(
                        [sys.executable, "-m", "superhf_lab", *overrides, f"hydra.run.dir={run_dir}"],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                if finished.returncode != 0:
                    raise SystemExit(
                        f"results row {row.label!r} seed {seed} failed (exit {finished.returncode}); "
                        f"see {run_dir / 'run.log'}"
                    )
            progress.advance(task)


def collect(spec: ResultsSpec, store: str) -> list[SeedGroup]:
    """Each row's seed group: the finished runs whose fingerprints match the row's configuration now."""
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name(spec.experiment_name)
    groups = []
    for row in spec.rows:
        runs = [
            finished_run(
                client, experiment and experiment.experiment_id, fingerprint(row_overrides(spec, row, seed, store))
            )
            for seed in spec.seeds
        ]
        missing = [seed for seed, run in zip(spec.seeds, runs) if run is None]
        if missing:
            raise SystemExit(
                f"{store} has no finished run of row {row.label!r} with seeds {missing} at code version "
                f"{code_version()}; run `python -m superhf_lab.results` (without --table-only) first"
            )
        groups.append(SeedGroup(summarise(client, runs)))
    return groups


def _cell(group: SeedGroup, column: str) -> str:
    mean, width = group.test(TEST_METRICS[column])
    if math.isnan(mean) and column == "KL per sequence":
        mean, width = group.test(TEST_METRICS["KL per sequence, upper bound"])
        return "—" if math.isnan(mean) else f"≤ {mean:.2f} (upper bound)"
    if math.isnan(mean):
        return "—"
    digits = 2 if column == "KL per sequence" else 3
    return f"{mean:.{digits}f}" + ("" if math.isnan(width) else f" ± {width:.{digits}f}")


def markdown_table(spec: ResultsSpec, groups: list[SeedGroup]) -> str:
    lines = [f"| policy | {' | '.join(COLUMNS)} |", "|---" * (len(COLUMNS) + 1) + "|"]
    for row, group in zip(spec.rows, groups):
        lines.append(f"| {row.label} | {' | '.join(_cell(group, column) for column in COLUMNS)} |")
    seeds = ", ".join(map(str, spec.seeds))
    footer = (
        f"Mean ± half-width of the 95% interval (Student's t) over seeds {seeds}; written by `make results` "
        f"on {datetime.date.today().isoformat()}."
    )
    return "\n".join([*lines, "", " ".join(part for part in (spec.caption.strip(), footer) if part)]) + "\n"


def update_readme(readme: Path, name: str, block: str) -> None:
    """Replace what stands between the README's ``<!-- results: name -->`` markers with ``block``."""
    write_block(readme, f"<!-- results: {name} -->", f"<!-- /results: {name} -->", block)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="rows and seeds (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for the table, figure and store")
    parser.add_argument("--store", help="MLflow tracking URI (default: sqlite:///<out>/<name>.db)")
    parser.add_argument("--readme", type=Path, default=Path("README.md"), help="README whose block is replaced")
    parser.add_argument("--table-only", action="store_true", help="do not run anything; fail if runs are missing")
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.store or f"sqlite:///{(args.out / f'{spec.name}.db').resolve()}"
    console = Console()
    if not args.table_only:
        run_missing(spec, store, args.out, console)
    groups = collect(spec, store)
    block = markdown_table(spec, groups)
    (args.out / f"{spec.name}.md").write_text(block)
    plot_kl_ablation(groups, args.out / f"{spec.name}_kl_ablation.png")
    if args.readme.is_file():
        update_readme(args.readme, spec.name, block)
    print(block)
    return block
