"""``make frontier``: gold reward against KL for every algorithm, fitted, on one frontier.

    python -m superhf_lab.frontier                  # run what is missing, then write the table and figures
    python -m superhf_lab.frontier --table-only     # rebuild them from the runs already in the store

The spec (``sweeps/frontier/tiny_world.yaml``) is a results spec (:mod:`superhf_lab.launch.results`) whose rows
each name their ``group`` (the algorithm they belong to) and sweep its KL knob; every run evaluates every
``eval.every_n_steps``, so it traces an over-optimisation path. Finished runs of the same configuration and code are
reused. It writes ``results/<name>.md`` (the table, with what it was computed at, and its reading),
``results/<name>_kl.png`` (the frontier) and ``results/<name>_gao.png`` (Gao et al.'s panels), replaces the README's
``<!-- frontier: <name> -->`` block, and files everything under one parent MLflow run whose shared view charts each
run's path of gold reward against sqrt(KL).
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from rich.console import Console

from superhf_lab.config.resources import resource_dir
from superhf_lab.launch import presets
from superhf_lab.launch.results import (
    Provenance,
    ResultsSpec,
    command_line,
    fingerprint,
    finished_run,
    load_spec,
    row_overrides,
    run_missing,
    world_fingerprint,
)
from superhf_lab.launch.sweeps import headline_view
from superhf_lab.metrics.overoptimisation import GOLD, PATH_NAMES, PROXY, SQRT_KL
from superhf_lab.reporting.frontier import (
    MATCHED_KL,
    AlgorithmFrontier,
    RunPath,
    frontier_table,
    frontiers,
    plot_frontier,
    plot_gao,
)
from superhf_lab.reporting.readme import write_block
from superhf_lab.reporting.summary import sweep_link
from superhf_lab.tracking.provenance import ROLE_TAG, SWEEP_TAG, code_content, code_version
from superhf_lab.tracking.store import find_or_create_run, metric_history, share_view

DEFAULT_SPEC = resource_dir("sweeps") / "frontier" / "tiny_world.yaml"


def collect(spec: ResultsSpec, store: str) -> tuple[list[RunPath], list[str], Provenance]:
    """Every (row, seed)'s path, the run ids, and what they were computed at."""
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name(spec.experiment_name)
    paths, run_ids, fingerprints, seconds = [], [], [], 0.0
    for row in spec.rows:
        for seed in spec.seeds:
            row_fingerprint = fingerprint(row_overrides(spec, row, seed, store))
            run = finished_run(client, experiment and experiment.experiment_id, row_fingerprint)
            if run is None:
                raise SystemExit(
                    f"{store} has no finished run of row {row.label!r} seed {seed} of this code ({code_content()}); "
                    "run `python -m superhf_lab.frontier` (without --table-only) first"
                )
            history = {name: metric_history(run.info.run_id, name, client) for name in PATH_NAMES}
            if len(history[SQRT_KL]) < 2:
                raise SystemExit(
                    f"row {row.label!r} logged no over-optimisation path: give it eval.every_n_steps (or "
                    "algorithm=best_of_n) in the spec's rows or common overrides"
                )
            paths.append(
                RunPath(
                    row.group or row.label,
                    seed,
                    row.label,
                    *(np.asarray(history[name]) for name in (SQRT_KL, GOLD, PROXY)),
                )
            )
            run_ids.append(run.info.run_id)
            fingerprints.append(row_fingerprint)
            seconds += (run.info.end_time - run.info.start_time) / 1000
    spec_fingerprint = hashlib.sha256(" ".join(fingerprints).encode()).hexdigest()[:12]
    return paths, run_ids, Provenance(code_version(), world_fingerprint(spec), spec_fingerprint, seconds)


def reading(groups: list[AlgorithmFrontier]) -> str:
    """What the table says, every number from it: who wins at each matched KL (and whether the intervals overlap),
    which form fits each algorithm better, and where gold peaks."""
    sentences = []
    for budget in MATCHED_KL:
        reached = [(group, *group.matched(budget)[:2]) for group in groups]
        reached = sorted((r for r in reached if math.isfinite(r[1])), key=lambda r: -r[1])
        if not reached:
            sentences.append(f"No algorithm reaches {budget:g} nats in every seed.")
            continue
        best, mean, width = reached[0]
        if mean <= 0:
            sentences.append(f"At {budget:g} nats, no algorithm's envelope rises above the starting policy's gold.")
            continue
        text = f"At {budget:g} nats, {best.algorithm} gains the most gold ({mean:+.3f}"
        text += f" ± {width:.3f})" if math.isfinite(width) else ")"
        if len(reached) > 1:
            runner, second, second_width = reached[1]
            text += f", ahead of {runner.algorithm} ({second:+.3f})"
            if not (math.isfinite(width) and math.isfinite(second_width)):
                text += ", with no interval to compare (one seed)"
            else:
                apart = mean - width > second + second_width
                text += ", their intervals apart" if apart else ", their intervals overlapping"
        absent = [g.algorithm for g in groups if g not in [r[0] for r in reached]]
        if absent:
            text += f"; not reached by {', '.join(absent)}"
        sentences.append(text + ".")
    for group in groups:
        fits = group.fits()
        if fits["rl"] is None or fits["best_of_n"] is None:
            continue
        better = max(fits, key=lambda form: fits[form].r_squared)
        own = fits[group.form]
        largest = math.sqrt(group.max_kl)
        peak = (
            f"its fitted gold gain peaks at d* = {own.peak_sqrt_kl:.2f} (KL {own.peak_sqrt_kl**2:.2f} nats) and falls "
            f"after it, within the measured d ≤ {largest:.2f}"
            if math.isfinite(own.peak_sqrt_kl) and own.peak_sqrt_kl < largest
            else f"its fitted gold gain is still rising at the largest d measured, {largest:.2f}"
        )
        if own.alpha <= 0:
            peak = "its fitted gold gain falls from the start on (alpha ≤ 0)"
        sentences.append(
            f"{group.algorithm}: the {'best-of-n' if better == 'best_of_n' else 'RL'} form fits better "
            f"(R² {fits[better].r_squared:.2f} vs {fits[min(fits, key=lambda f: fits[f].r_squared)].r_squared:.2f}); "
            f"{peak}."
        )
    return "How to read it. " + " ".join(sentences)


def markdown(
    spec: ResultsSpec,
    groups: list[AlgorithmFrontier],
    provenance: Provenance,
    stable: dict[str, str] | None,
    figures: str = "",
) -> str:
    """The table, how it was made, its reading and the figures (``figures``: their folder, as the page sees it)."""
    search = (
        f"Stable share: of the learning-rate search's grid (`make presets`, `sweeps/{spec.search}`), the runs whose "
        "proxy reward rose above the start without collapsing.\n\n"
        if stable is not None
        else ""
    )
    seeds = ", ".join(map(str, spec.seeds))
    return (
        f"{spec.caption.strip()}\n\n{frontier_table(groups, stable)}\n\n"
        f"Gold gain at matched KL: each seed's upper envelope of gold gain against KL per sequence, read at that KL, "
        f"then the mean ± 95% interval over seeds {seeds} (— where a seed's runs do not reach it).\n\n{search}"
        f"{reading(groups)}\n\n"
        f"![frontier]({figures}{spec.name}_kl.png)\n![Gao et al.'s panels]({figures}{spec.name}_gao.png)\n\n"
        f"<sub>Written by `make frontier` at commit `{provenance.code_version}` (code `{code_content()}`), tiny world "
        f"build `{provenance.world_fingerprint}`, configurations `{provenance.spec_fingerprint}`; "
        f"{len(spec.rows) * len(spec.seeds)} runs, {provenance.run_seconds / 60:.1f} minutes of runs.</sub>\n"
    )


def file_under_parent(spec: ResultsSpec, store: str, run_ids: list[str], out: Path, files: list[Path]) -> str:
    """One parent run holding the table and figures; every run of the frontier tagged as its job, and the shared
    view (the sweeps' one: headline charts and each job's path of gold against sqrt(KL)). Returns the view's link."""
    mlflow.set_tracking_uri(store)
    group = f"make frontier {spec.name}"
    parent = find_or_create_run(spec.experiment_name, {SWEEP_TAG: group, ROLE_TAG: "sweep"}, group, {"spec": spec.name})
    client = mlflow.MlflowClient(store)
    for run_id in run_ids:
        client.set_tag(run_id, SWEEP_TAG, group)
        client.set_tag(run_id, ROLE_TAG, "job")
        client.set_tag(run_id, "mlflow.parentRunId", parent)
    with tempfile.TemporaryDirectory() as folder:
        for file in files:
            (Path(folder) / file.name).write_bytes(file.read_bytes())
        client.log_artifacts(parent, folder, "frontier")
    client.set_terminated(parent, "FINISHED")
    view_key = f"frontier-{parent}"
    experiment_id = share_view(spec.experiment_name, view_key, headline_view(group))
    return sweep_link(store, experiment_id, view_key)


def main(argv: list[str] | None = None) -> str:
    args = command_line(__doc__, DEFAULT_SPEC, argv)
    spec = load_spec(args.spec)
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.store or f"sqlite:///{(args.out / f'{spec.name}.db').resolve()}"
    if not args.table_only:
        run_missing(spec, store, args.out, Console())
    stable = None
    if spec.search:  # the learning-rate search's stable shares (its runs too, unless --table-only)
        search = presets.load_search(resource_dir("sweeps") / spec.search)
        search_store = presets.search_store(search, args.out)
        if not args.table_only:
            run_missing(search.as_results_spec(), search_store, args.out, Console())
        start, trials = presets.collect(search, search_store)
        (args.out / f"{search.name}.md").write_text(presets.markdown(search, start, trials))
        stable = presets.stable_shares(search, start, trials)
    paths, run_ids, provenance = collect(spec, store)
    groups = frontiers(paths)
    block = markdown(spec, groups, provenance, stable)
    table, kl_figure, gao_figure = (args.out / f"{spec.name}{suffix}" for suffix in (".md", "_kl.png", "_gao.png"))
    table.write_text(block)
    plot_frontier(groups, kl_figure)
    plot_gao(groups, gao_figure)
    if args.readme.is_file():
        figures = os.path.relpath(args.out.resolve(), args.readme.resolve().parent) + "/"
        write_block(
            args.readme,
            f"<!-- frontier: {spec.name} -->",
            f"<!-- /frontier: {spec.name} -->",
            markdown(spec, groups, provenance, stable, figures),
        )
    link = file_under_parent(spec, store, run_ids, args.out, [table, kl_figure, gao_figure])
    print(block)
    print(f"in MLflow: {link}")
    return block
