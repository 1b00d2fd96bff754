"""``make presets``: the learning-rate search behind every algorithm's tiny-world preset, and how stable each is.

    python -m superhf_lab.presets                  # run what is missing, then write the table
    python -m superhf_lab.presets --table-only     # rebuild it from the runs already in the store

The spec (``sweeps/presets/tiny_world.yaml``) gives each algorithm's overrides (its preset at its smallest KL knob,
the shared budget) and one grid of ``algorithm.learning_rate`` values, the same size for every algorithm. Each
(algorithm, value) runs once, with the starting policy evaluated once beside them; finished runs of the same
configuration and code are reused (:mod:`superhf_lab.launch.results`).

- **Chosen**: the value with the highest final proxy reward on the test prompts among those that did not collapse
  visibly (a researcher cannot see gold, so gold never chooses).
- **Collapsed**: non-finite metrics, completions under ``MIN_TOKENS`` tokens on average (empty), or METEOR
  similarity between completions to different prompts of at least ``MAX_METEOR`` (one answer to every prompt);
  for the stability share also gold reward more than ``MAX_GOLD_DROP`` below the start.
- **Stable share**: of the grid, the share whose proxy reward rose above the start without collapsing: the early
  report's claim (RL "sensitive to hyperparameters", SuperHF "more stable") as a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import mlflow
from omegaconf import OmegaConf
from rich.console import Console

from superhf_lab.config.resources import resource_dir
from superhf_lab.launch.results import (
    ResultRow,
    ResultsSpec,
    command_line,
    fingerprint,
    finished_run,
    row_overrides,
    run_missing,
)
from superhf_lab.metrics.names import eval_metric
from superhf_lab.reporting.readme import write_block
from superhf_lab.reporting.report import TEST_METRICS
from superhf_lab.tracking.provenance import code_content, code_version

DEFAULT_SPEC = resource_dir("sweeps") / "presets" / "tiny_world.yaml"
MIN_TOKENS = 2.0
MAX_METEOR = 0.5
MAX_GOLD_DROP = 0.5
START = "starting policy"
MEASURES = {
    "proxy": TEST_METRICS["proxy reward"],
    "gold": TEST_METRICS["held-out reward"],
    "meteor": TEST_METRICS["METEOR similarity"],
    "kl_sequence": TEST_METRICS["KL per sequence"],
    "tokens": eval_metric("completion/length_tokens_mean"),
}


@dataclass
class SearchSpec:
    name: str
    experiment_name: str
    seed: int
    learning_rates: list[float]
    algorithms: dict[str, list[str]]  # name -> overrides
    common: list[str]

    def as_results_spec(self) -> ResultsSpec:
        """The starting policy, then one row per (algorithm, learning rate), run at the spec's one seed."""
        rows = [ResultRow(START, ["mode=eval"])]
        for algorithm, overrides in self.algorithms.items():
            for rate in self.learning_rates:
                rows.append(ResultRow(f"{algorithm}, lr={rate:g}", [*overrides, f"algorithm.learning_rate={rate}"]))
        return ResultsSpec(self.name, self.experiment_name, [self.seed], rows, self.common)


def load_search(path: Path) -> SearchSpec:
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return SearchSpec(
        raw["name"],
        raw["experiment_name"],
        raw.get("seed", 0),
        [float(rate) for rate in raw["learning_rates"]],
        {entry["name"]: list(entry["overrides"]) for entry in raw["algorithms"]},
        list(raw.get("common", [])),
    )


@dataclass
class Trial:
    algorithm: str
    learning_rate: float
    values: dict[str, float]

    def visibly_collapsed(self) -> bool:
        finite = all(math.isfinite(self.values.get(m, math.nan)) for m in ("proxy", "meteor", "tokens"))
        return not finite or self.values["tokens"] < MIN_TOKENS or self.values["meteor"] >= MAX_METEOR

    def stable(self, start: dict[str, float]) -> bool:
        if self.visibly_collapsed() or not math.isfinite(self.values.get("gold", math.nan)):
            return False
        return self.values["proxy"] > start["proxy"] and self.values["gold"] >= start["gold"] - MAX_GOLD_DROP


def collect(search: SearchSpec, store: str) -> tuple[dict[str, float], list[Trial]]:
    spec = search.as_results_spec()
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name(spec.experiment_name)
    measured = []
    for row in spec.rows:
        run = finished_run(
            client, experiment and experiment.experiment_id, fingerprint(row_overrides(spec, row, search.seed, store))
        )
        if run is None:
            raise SystemExit(
                f"{store} has no finished run of {row.label!r} of this code ({code_content()}); run "
                "`python -m superhf_lab.presets` (without --table-only) first"
            )
        measured.append({name: run.data.metrics.get(metric, math.nan) for name, metric in MEASURES.items()})
    grid = [(algorithm, rate) for algorithm in search.algorithms for rate in search.learning_rates]  # the rows' order
    trials = [Trial(algorithm, rate, values) for (algorithm, rate), values in zip(grid, measured[1:], strict=True)]
    start = measured[0]
    return start, trials


def chosen(trials: list[Trial]) -> Trial | None:
    candidates = [t for t in trials if not t.visibly_collapsed()]
    return max(candidates, key=lambda t: t.values["proxy"]) if candidates else None


def stable_shares(search: SearchSpec, start: dict[str, float], trials: list[Trial]) -> dict[str, str]:
    """Per algorithm, "stable/grid size"."""
    shares = {}
    for algorithm in search.algorithms:
        mine = [t for t in trials if t.algorithm == algorithm]
        shares[algorithm] = f"{sum(t.stable(start) for t in mine)}/{len(mine)}"
    return shares


def markdown(search: SearchSpec, start: dict[str, float], trials: list[Trial]) -> str:
    rates = search.learning_rates
    head = ["algorithm", *(f"lr={rate:g}" for rate in rates), "chosen lr", "KL at chosen (nats)", "stable share"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for algorithm in search.algorithms:
        mine = [t for t in trials if t.algorithm == algorithm]
        cells = []
        for trial in mine:
            mark = "collapsed" if trial.visibly_collapsed() else ("stable" if trial.stable(start) else "unstable")
            cells.append(f"{trial.values['proxy']:+.3f} ({mark})")
        best = chosen(mine)
        lines.append(
            "| "
            + " | ".join(
                [
                    algorithm,
                    *cells,
                    f"{best.learning_rate:g}" if best else "—",
                    f"{best.values['kl_sequence']:.2f}" if best else "—",
                    stable_shares(search, start, trials)[algorithm],
                ]
            )
            + " |"
        )
    return (
        f"Each cell: the final proxy reward on the test prompts (the starting policy's is {start['proxy']:+.3f}), "
        f"one run at seed {search.seed}. collapsed: completions under {MIN_TOKENS:g} tokens, METEOR similarity ≥ "
        f"{MAX_METEOR:g}, or a non-finite value; stable: proxy above the start without collapsing and gold no more "
        f"than {MAX_GOLD_DROP:g} below the start's {start['gold']:+.3f}; unstable: the rest. Chosen: the highest "
        "proxy reward that did not visibly collapse (gold never chooses).\n\n"
        + "\n".join(lines)
        + f"\n\n<sub>Written by `make presets` at commit `{code_version()}` (code `{code_content()}`).</sub>\n"
    )


def search_store(search: SearchSpec, out: Path) -> str:
    return f"sqlite:///{(out / f'{search.name}.db').resolve()}"


def main(argv: list[str] | None = None) -> str:
    args = command_line(__doc__, DEFAULT_SPEC, argv)
    search = load_search(args.spec)
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.store or search_store(search, args.out)
    if not args.table_only:
        run_missing(search.as_results_spec(), store, args.out, Console())
    start, trials = collect(search, store)
    block = markdown(search, start, trials)
    (args.out / f"{search.name}.md").write_text(block)
    if args.readme.is_file():
        write_block(args.readme, f"<!-- presets: {search.name} -->", f"<!-- /presets: {search.name} -->", block)
    print(block)
    return block
