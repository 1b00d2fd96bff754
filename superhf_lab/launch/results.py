"""``make results``: every number of the README's results table comes from this one command.

    python -m superhf_lab.results                  # run what is missing, then write the table
    python -m superhf_lab.results --table-only     # rebuild the table from the runs already in the store

A spec (``sweeps/results/tiny_world.yaml``) names each row's overrides and the seeds. Each (row, seed) is one
``run.py`` run in the results' own MLflow store (``results/<name>.db``). A finished run of the same
configuration fingerprint and the same code (by content: a commit that changes only the README or the tests keeps
the runs) is reused, so an interrupted ``make results`` continues where it stopped, while a changed row or changed
code runs again. The table (mean and 95% interval over seeds)
goes to ``results/<name>.md`` and between the ``<!-- results: <name> -->`` markers of README.md, with the commit,
the tiny world's build fingerprint and the spec's configuration fingerprint it was computed at, the runs' time, and
the paragraph that reads it (its every number from the runs); the KL-ablation figure goes next to it.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from omegaconf import OmegaConf
from rich.console import Console
from rich.progress import Progress

from superhf_lab.algorithms.registry import available_algorithms, get_algorithm
from superhf_lab.config.fingerprint import run_fingerprint
from superhf_lab.config.resources import resource_dir
from superhf_lab.launch.compose import compose_run_config
from superhf_lab.reporting.readme import write_block
from superhf_lab.reporting.report import TEST_METRICS, SeedGroup, ablation_lines, plot_kl_ablation, summarise
from superhf_lab.tracking.provenance import CODE_CONTENT_TAG, CONFIG_TAG, code_content, code_version

DEFAULT_SPEC = resource_dir("sweeps") / "results" / "tiny_world.yaml"
COLUMNS = ("proxy reward", "held-out reward", "METEOR similarity", "KL per token", "KL per sequence")
# A trained row whose test KL per token stays under this barely left the starting policy: the reading says so.
BARELY_MOVED_KL = 0.01


@dataclass
class ResultRow:
    label: str
    overrides: list[str]
    group: str = ""  # make frontier: the algorithm whose frontier the row belongs to


@dataclass
class ResultsSpec:
    """What `make results` runs: rows of overrides, each with every seed, plus overrides common to all."""

    name: str
    experiment_name: str
    seeds: list[int]
    rows: list[ResultRow]
    common: list[str] = field(default_factory=list)
    caption: str = ""
    search: str = ""  # make frontier: the learning-rate search (under sweeps/) whose stable shares its table shows


def load_spec(path: Path) -> ResultsSpec:
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    rows = [ResultRow(row["label"], list(row.get("overrides", [])), row.get("group", "")) for row in raw.pop("rows")]
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
            f"tags.`{CONFIG_TAG}` = '{config_fingerprint}' and tags.`{CODE_CONTENT_TAG}` = '{code_content()}' and "
            "attributes.status = 'FINISHED'"
        ),
    )
    return found[0] if found else None


def run_missing(spec: ResultsSpec, store: str, out: Path, console: Console) -> None:
    """Run every (row, seed) the store has no finished run of; stop at the first failure, naming its log. A terminal
    shows a progress bar; a log file (where a bar is drawn only at the end) gets a line as each run starts and ends."""
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
                if not console.is_terminal:
                    console.out(
                        f"run {index + 1} of {len(jobs)}: {row.label}, seed {seed} ({run_dir / 'run.log'})",
                        highlight=False,
                    )
                started = time.monotonic()
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
                if not console.is_terminal:
                    console.out(
                        f"run {index + 1} of {len(jobs)} finished in {time.monotonic() - started:.0f} s",
                        highlight=False,
                    )
            progress.advance(task)


@dataclass
class Provenance:
    """What a table was computed at: the code, the tiny world, the rows' configurations, and what it cost."""

    code_version: str
    world_fingerprint: str
    spec_fingerprint: str  # of every (row, seed)'s configuration fingerprint
    run_seconds: float  # the runs' wall time, summed


def world_fingerprint(spec: ResultsSpec) -> str:
    """The build fingerprint of the tiny world the rows run on (its recipe file), or "none" when it is not built."""
    recipe = Path(compose_run_config(spec.common).tiny_world.dir) / "recipe.json"
    try:
        return json.loads(recipe.read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return "none"


def collect(spec: ResultsSpec, store: str) -> tuple[list[SeedGroup], Provenance]:
    """Each row's seed group (the finished runs whose fingerprints match the row's configuration now) and what
    they were computed at."""
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name(spec.experiment_name)
    groups, fingerprints, seconds = [], [], 0.0
    for row in spec.rows:
        row_fingerprints = [fingerprint(row_overrides(spec, row, seed, store)) for seed in spec.seeds]
        runs = [finished_run(client, experiment and experiment.experiment_id, f) for f in row_fingerprints]
        missing = [seed for seed, run in zip(spec.seeds, runs) if run is None]
        if missing:
            raise SystemExit(
                f"{store} has no finished run of row {row.label!r} with seeds {missing} of this code "
                f"({code_content()}, commit {code_version()}); run `python -m superhf_lab.results` "
                "(without --table-only) first"
            )
        groups.append(SeedGroup(summarise(client, runs)))
        fingerprints += row_fingerprints
        seconds += sum((run.info.end_time - run.info.start_time) / 1000 for run in runs)
    spec_fingerprint = hashlib.sha256(" ".join(fingerprints).encode()).hexdigest()[:12]
    return groups, Provenance(code_version(), world_fingerprint(spec), spec_fingerprint, seconds)


def _cell(group: SeedGroup, column: str) -> str:
    mean, width = group.test(TEST_METRICS[column])
    if math.isnan(mean) and column == "KL per sequence":
        mean, width = group.test(TEST_METRICS["KL per sequence, upper bound"])
        return "—" if math.isnan(mean) else f"≤ {mean:.2f} (upper bound)"
    if math.isnan(mean):
        return "—"
    digits = 2 if column == "KL per sequence" else 3
    return f"{mean:.{digits}f}" + ("" if math.isnan(width) else f" ± {width:.{digits}f}")


def markdown_table(spec: ResultsSpec, groups: list[SeedGroup], provenance: Provenance) -> str:
    """The table, its caption and provenance, and the paragraph that reads it."""
    lines = [f"| policy | {' | '.join(COLUMNS)} |", "|---" * (len(COLUMNS) + 1) + "|"]
    for row, group in zip(spec.rows, groups):
        lines.append(f"| {row.label} | {' | '.join(_cell(group, column) for column in COLUMNS)} |")
    seeds = ", ".join(map(str, spec.seeds))
    footer = (
        f"Mean ± half-width of the 95% interval (Student's t) over seeds {seeds}; written by `make results` on "
        f"{datetime.date.today().isoformat()} at commit `{provenance.code_version}`, tiny world build "
        f"`{provenance.world_fingerprint}`, configurations `{provenance.spec_fingerprint}`; its "
        f"{len(spec.rows) * len(spec.seeds)} runs took {provenance.run_seconds / 60:.0f} minutes on "
        f"{os.cpu_count()} CPU cores."
    )
    caption = " ".join(part for part in (spec.caption.strip(), footer) if part)
    return "\n".join([*lines, "", caption, "", reading(spec, groups)]) + "\n"


def _value(group: SeedGroup, column: str) -> float:
    return group.test(TEST_METRICS[column])[0]


def _span(groups: list[SeedGroup], column: str) -> str:
    digits = 2 if column == "KL per sequence" else 3
    return " → ".join(f"{_value(group, column):.{digits}f}" for group in (groups[0], groups[-1]))


def _overlap(low: SeedGroup, high: SeedGroup, column: str) -> bool:
    (a, wa), (b, wb) = low.test(TEST_METRICS[column]), high.test(TEST_METRICS[column])
    return not (math.isfinite(wa) and math.isfinite(wb)) or abs(a - b) <= wa + wb


def trains(algorithm: str) -> bool:
    """Whether runs of ``algorithm`` train a policy (those checkpoint; evaluation and best-of-N do not)."""
    return get_algorithm(algorithm).checkpoints


def reading(spec: ResultsSpec, groups: list[SeedGroup]) -> str:
    """How to read the table, in sentences whose every number and direction comes from ``groups``: each KL ablation
    from its smallest to its largest ``kl_coef`` (against the paper's claim that the KL penalty "prevents reward
    hacking and mode collapse"), the best rows by proxy and by held-out reward, and the trained rows that barely
    left the starting policy."""
    labels = {id(group): row.label for row, group in zip(spec.rows, groups)}
    sentences = []
    for line in ablation_lines(groups).values():
        low, high = line[0], line[-1]
        kl_falls = _value(high, "KL per token") < _value(low, "KL per token")
        meteor_falls = _value(high, "METEOR similarity") < _value(low, "METEOR similarity")
        paper = (
            "the direction the paper reports"
            if kl_falls and meteor_falls
            else "not, on both, the direction the paper reports"
        )
        overlapping = [column for column in COLUMNS if _overlap(low, high, column)]
        sentences.append(
            f"From {labels[id(low)]} to {labels[id(high)]}, KL per token goes {_span(line, 'KL per token')} and "
            f"METEOR similarity (mode collapse) {_span(line, 'METEOR similarity')}: {paper}; proxy reward goes "
            f"{_span(line, 'proxy reward')} and held-out reward {_span(line, 'held-out reward')}."
            + (
                f" At {len(spec.seeds)} seeds the two ends' intervals overlap on {', '.join(overlapping)}."
                if overlapping
                else ""
            )
        )
    for column in ("proxy reward", "held-out reward"):
        best = max(groups, key=lambda group: _value(group, column))
        sentences.append(f"Highest {column}: {labels[id(best)]} ({_value(best, column):.3f}).")
    trained = [group for group in groups if group.algorithm in available_algorithms() and trains(group.algorithm)]
    still = [group for group in trained if _value(group, "KL per token") < BARELY_MOVED_KL]
    if still:
        names = "; ".join(labels[id(group)] for group in still)  # labels hold commas
        largest = max(_value(group, "KL per token") for group in still)
        sentences.append(
            f"These stay within KL {largest:.3f} per token of the starting policy: {names}. At this budget and their "
            "presets they barely trained, so the table compares them at an equal sample budget, not tuned."
        )
    return "How to read it. " + " ".join(sentences)


def update_readme(readme: Path, name: str, block: str) -> None:
    """Replace what stands between the README's ``<!-- results: name -->`` markers with ``block``."""
    write_block(readme, f"<!-- results: {name} -->", f"<!-- /results: {name} -->", block)


def command_line(description: str, default_spec: Path, argv: list[str] | None) -> argparse.Namespace:
    """The arguments `make results`, `make presets` and `make frontier` share: a spec, where its outputs and store
    go, the README whose block is replaced, and whether to run what is missing."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=default_spec, help="what runs (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for the tables, figures and store")
    parser.add_argument("--store", help="MLflow tracking URI (default: sqlite:///<out>/<name>.db)")
    parser.add_argument("--readme", type=Path, default=Path("README.md"), help="README whose block is replaced")
    parser.add_argument("--table-only", action="store_true", help="do not run anything; fail if runs are missing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = command_line(__doc__, DEFAULT_SPEC, argv)
    spec = load_spec(args.spec)
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.store or f"sqlite:///{(args.out / f'{spec.name}.db').resolve()}"
    console = Console()
    if not args.table_only:
        run_missing(spec, store, args.out, console)
    groups, provenance = collect(spec, store)
    block = markdown_table(spec, groups, provenance)
    (args.out / f"{spec.name}.md").write_text(block)
    plot_kl_ablation(groups, args.out / f"{spec.name}_kl_ablation.png")
    if args.readme.is_file():
        update_readme(args.readme, spec.name, block)
    print(block)
    return block
