"""Plots and tables of runs read from the MLflow store.

    python -m superhf_lab.report                       # every run of experiment tiny_world
    python -m superhf_lab.report --sweep latest        # the jobs of the latest Hydra multirun
    python -m superhf_lab.report --experiment paper_table2 --out reports/paper
    python -m superhf_lab.report --study kl_coef_tiny_world_superhf   # an Optuna study and its runs

Runs whose configurations differ only in ``seed`` form a seed group; numbers are the group's mean and the
half-width of its 95% interval (Student's t over seeds). Writes reward over training per run, the paper's
KL-coefficient ablation (final test reward and METEOR similarity against ``kl_coef``) and test reward against
test KL as PNGs; a sweep's plots are also logged to its parent run. "Final" for training curves is the mean
over the last fifth of a run's steps. For an Optuna study it adds the optimisation history, parameter
importances and, for a multi-objective study, the Pareto front, with a table of every trial.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import optuna  # noqa: E402
from optuna.visualization import matplotlib as visualization  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from superhf_lab.config.fingerprint import computes  # noqa: E402
from superhf_lab.metrics.names import eval_metric  # noqa: E402
from superhf_lab.metrics.statistics import mean_and_t_interval  # noqa: E402
from superhf_lab.tracking.provenance import ROLE_TAG, STUDY_TAG
from superhf_lab.tracking.store import metric_history  # noqa: E402
from superhf_lab.tracking.studies import configured_storage, optuna_storage  # noqa: E402

CURVES = ("reward/mean", "heldout_reward/mean")
PLOTS = ("reward_over_training.png", "kl_ablation.png", "reward_vs_kl.png")
STUDY_PLOTS = ("optuna_history.png", "optuna_param_importances.png")  # one objective; _<k> per objective of several
PARETO_PLOT = "optuna_pareto_front.png"
# Test-time metrics of the table and figures; KL columns are exact, except best-of-N's labelled bound.
TEST_METRICS = {
    "proxy reward": eval_metric("reward/mean"),
    "held-out reward": eval_metric("heldout_reward/mean"),
    "METEOR similarity": eval_metric("diversity/meteor_similarity"),
    "KL per token": eval_metric("kl"),
    "KL per sequence": eval_metric("kl_sequence"),
    "KL per sequence, upper bound": eval_metric("kl_sequence_bound"),
}


@dataclass
class RunSummary:
    run_id: str
    name: str
    algorithm: str
    kl_coef: float
    params: dict[str, str]
    metrics: dict[str, float]  # each metric's last logged value
    samples: list[float]  # completions generated, per step
    curves: dict[str, list[float]]

    def final(self, metric: str) -> float:
        values = self.curves.get(metric, [])
        tail = values[-max(1, len(values) // 5) :]
        return sum(tail) / len(tail) if tail else float("nan")

    @property
    def configuration(self) -> frozenset[tuple[str, str]]:
        """The params that decide what the run computes, its seed excluded."""
        return frozenset((key, value) for key, value in self.params.items() if computes(key) and key != "seed")


@dataclass
class SeedGroup:
    """Runs whose configurations are identical except for ``seed``."""

    runs: list[RunSummary]

    @property
    def label(self) -> str:
        """The first run's name without its seed ("kl_coef=0.1 seed=2" -> "kl_coef=0.1")."""
        words = [word for word in self.runs[0].name.split() if not word.startswith("seed=")]
        return " ".join(words) or self.runs[0].name

    @property
    def algorithm(self) -> str:
        return self.runs[0].algorithm

    @property
    def kl_coef(self) -> float:
        return self.runs[0].kl_coef

    def test(self, metric: str) -> tuple[float, float]:
        """Mean and 95% half-width over seeds of a metric's last value (NaN when no run logged it)."""
        return mean_and_t_interval([run.metrics.get(metric, math.nan) for run in self.runs])

    def training(self, metric: str) -> tuple[float, float]:
        return mean_and_t_interval([run.final(metric) for run in self.runs])


def seed_groups(summaries: list[RunSummary]) -> list[SeedGroup]:
    """Group runs that differ only in their seed, in the order their first run appears."""
    groups: dict[frozenset, list[RunSummary]] = {}
    for summary in summaries:
        groups.setdefault(summary.configuration, []).append(summary)
    return [SeedGroup(runs) for runs in groups.values()]


def select_runs(
    client: mlflow.MlflowClient, experiment: str, sweep: str | None, study: str | None = None
) -> tuple[list, str | None]:
    """The finished runs to report on, and the sweep's parent run id when reporting a sweep or a study."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"No MLflow experiment named {experiment!r} in {mlflow.get_tracking_uri()}; pass --experiment")
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [run for run in runs if run.data.tags.get(ROLE_TAG) == "sweep"]
    if study is not None:
        parents = [run for run in parents if run.data.tags.get(STUDY_TAG) == study]
        sweep = "latest"
    if sweep is None:
        return [run for run in runs if run not in parents and run.info.status == "FINISHED"], None
    parent_id = parents[-1].info.run_id if sweep == "latest" and parents else sweep
    children = [
        run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent_id and run.info.status == "FINISHED"
    ]
    if not children:
        raise SystemExit(f"No finished runs belong to sweep {sweep!r} in experiment {experiment!r}")
    return children, parent_id


def summarise(client: mlflow.MlflowClient, runs: list) -> list[RunSummary]:
    return [
        RunSummary(
            run_id=run.info.run_id,
            name=run.info.run_name,
            algorithm=run.data.tags.get("algorithm", "evaluation"),
            kl_coef=float(run.data.params.get("kl_coef", "nan")),
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
            samples=metric_history(run.info.run_id, "progress/completions_generated", client),
            curves={metric: metric_history(run.info.run_id, metric, client) for metric in CURVES},
        )
        for run in runs
    ]


def _ema(values: list[float], alpha: float = 0.9) -> list[float]:
    """Exponential moving average, as the paper's reward curves are drawn."""
    smoothed, current = [], None
    for value in values:
        current = value if current is None else alpha * current + (1 - alpha) * value
        smoothed.append(current)
    return smoothed


def ablation_lines(groups: list[SeedGroup]) -> dict[str, list[SeedGroup]]:
    """Seed groups that differ only in ``kl_coef`` (and seed), one line each, sorted by ``kl_coef``; a configuration
    run at a single ``kl_coef`` is no ablation and draws no line."""
    lines: dict[frozenset, list[SeedGroup]] = {}
    for group in groups:
        key = frozenset(item for item in group.runs[0].configuration if item[0] != "kl_coef")
        lines.setdefault(key, []).append(group)
    named: dict[str, list[SeedGroup]] = {}
    for members in (members for members in lines.values() if len({group.kl_coef for group in members}) > 1):
        name = (
            members[0].algorithm
            if members[0].algorithm not in named
            else f"{members[0].algorithm} ({members[0].label})"
        )
        named[name] = sorted(members, key=lambda group: group.kl_coef)
    return named


def plot_training(summaries: list[RunSummary], path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for summary in summaries:
        if not summary.curves["reward/mean"]:
            continue  # evaluation-only runs have no training curve
        x = summary.samples or list(range(len(summary.curves["reward/mean"])))
        label = f"{summary.algorithm} {summary.name}"
        axes[0].plot(x, _ema(summary.curves["reward/mean"]), label=label)
        if summary.curves["heldout_reward/mean"]:
            axes[1].plot(x, _ema(summary.curves["heldout_reward/mean"]), label=label)
    for axis, title in zip(axes, ("training (proxy) reward", "held-out reward")):
        axis.set(xlabel="completions generated", ylabel=f"{title}, EMA 0.9", title=title)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_kl_ablation(groups: list[SeedGroup], path: Path) -> None:
    """The paper's KL-coefficient ablation: final test reward and METEOR similarity against ``kl_coef``, mean and
    95% interval over seeds, one line per algorithm (groups that differ only in kl_coef)."""
    panels = (("proxy reward", "held-out reward"), ("METEOR similarity",))
    lines = ablation_lines(groups)
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, names in zip(axes, panels):
        if not lines:
            axis.text(0.5, 0.5, "no configuration was run\nat several kl_coef values", ha="center", va="center")
        for line, members in lines.items():
            for name in names:
                values = [group.test(TEST_METRICS[name]) for group in members]
                if all(math.isnan(mean) for mean, _ in values):
                    continue
                axis.errorbar(
                    [group.kl_coef for group in members],
                    [mean for mean, _ in values],
                    yerr=[0 if math.isnan(width) else width for _, width in values],
                    marker="o",
                    capsize=3,
                    label=f"{line}: {name}",
                )
        seeds = sorted({len(group.runs) for group in groups})
        axis.set(
            xlabel="kl_coef",
            ylabel=" / ".join(names) + " on test prompts",
            title=f"mean and 95% interval over {'/'.join(map(str, seeds))} seeds",
        )
        if lines:
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_reward_vs_kl(groups: list[SeedGroup], path: Path) -> None:
    """Test reward against test KL per sequence: exact KL as filled markers, best-of-N's upper bound as hollow ones,
    so the two are never read as the same quantity."""
    figure, axis = plt.subplots(figsize=(7, 5))
    for group in groups:
        reward, reward_width = group.test(TEST_METRICS["proxy reward"])
        exact, exact_width = group.test(TEST_METRICS["KL per sequence"])
        bound, _ = group.test(TEST_METRICS["KL per sequence, upper bound"])
        if math.isnan(reward) or (math.isnan(exact) and math.isnan(bound)):
            continue
        hollow = math.isnan(exact)
        axis.errorbar(
            bound if hollow else exact,
            reward,
            xerr=None if hollow or math.isnan(exact_width) else exact_width,
            yerr=None if math.isnan(reward_width) else reward_width,
            marker="o",
            capsize=3,
            markerfacecolor="none" if hollow else None,
            label=f"{group.label} ({'KL upper bound' if hollow else 'exact KL'})",
        )
    axis.set(
        xlabel="KL(policy || starting policy) per sequence on test prompts\n(filled: exact; hollow: upper bound)",
        ylabel="test proxy reward",
        title="reward against KL (mean and 95% interval over seeds)",
    )
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot(summaries: list[RunSummary], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in PLOTS]
    groups = seed_groups(summaries)
    plot_training(summaries, paths[0])
    plot_kl_ablation(groups, paths[1])
    plot_reward_vs_kl(groups, paths[2])
    return paths


def _with_interval(mean: float, width: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f}" + ("" if math.isnan(width) else f" ± {width:.{digits}f}")


def table(summaries: list[RunSummary]) -> Table:
    groups = seed_groups(summaries)
    result = Table(
        title="runs grouped by configuration: mean ± 95% interval over seeds (training: last fifth of steps;"
        " test: eval/all)"
    )
    columns = ("run", "algorithm", "kl_coef", "seeds", "train reward final", *TEST_METRICS)
    for column in columns:
        result.add_column(column, justify="left" if column in ("run", "algorithm") else "right")
    for group in groups:
        result.add_row(
            group.label,
            group.algorithm,
            f"{group.kl_coef:g}",
            str(len(group.runs)),
            _with_interval(*group.training("reward/mean")),
            *(_with_interval(*group.test(metric)) for metric in TEST_METRICS.values()),
        )
    return result


def load_study(name: str, storage: str) -> optuna.Study:
    """The study ``name`` in ``storage`` (an SQLAlchemy URL, or ``journal:<file>``)."""
    resolved = optuna_storage(storage)
    try:
        return optuna.load_study(study_name=name, storage=resolved)
    except KeyError:
        names = [summary.study_name for summary in optuna.get_all_study_summaries(resolved)]
        raise SystemExit(f"No Optuna study named {name!r} in {storage}; studies there: {names}") from None


def _objective_labels(study: optuna.Study) -> list[str]:
    return [f"objective {i} ({direction.name.lower()})" for i, direction in enumerate(study.directions)]


def plot_study(study: optuna.Study, out: Path) -> list[Path]:
    """Optuna's own plots: the optimisation history and parameter importances of each objective, and the Pareto
    front of a multi-objective study (``optuna_history_<k>.png`` etc. for objective k when there are several)."""
    out.mkdir(parents=True, exist_ok=True)
    labels = _objective_labels(study)
    paths = []
    for index, label in enumerate(labels):
        suffix = f"_{index}" if len(labels) > 1 else ""
        target = None if len(labels) == 1 else (lambda trial, index=index: trial.values[index])
        history = visualization.plot_optimization_history(study, target=target, target_name=label)
        paths.append(_save(history.figure, out / f"optuna_history{suffix}.png"))
        paths.append(_save(_importances_figure(study, target, label), out / f"optuna_param_importances{suffix}.png"))
    if len(labels) > 1:
        paths.append(_save(visualization.plot_pareto_front(study, target_names=labels).figure, out / PARETO_PLOT))
    return paths


def _importances_figure(study: optuna.Study, target, label: str):
    """Optuna's parameter importances (its default evaluator), or a figure saying why there are none yet (under 2
    complete trials, or no parameter that varies)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) >= 2 and any(len({str(t.params.get(name)) for t in complete}) > 1 for name in complete[0].params):
        return visualization.plot_param_importances(study, target=target, target_name=label).figure
    figure, axis = plt.subplots(figsize=(6, 4.5))
    axis.text(0.5, 0.5, "needs 2+ complete trials\nwith varied parameters", ha="center", va="center")
    axis.set(title=f"{study.study_name}: {label}", xticks=[], yticks=[])
    return figure


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def study_table(study: optuna.Study) -> Table:
    front = {t.number for t in study.best_trials} if len(study.directions) > 1 else set()
    if len(study.directions) == 1 and study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        front = {study.best_trial.number}
    result = Table(title=f"Optuna study {study.study_name} ({'best' if len(study.directions) == 1 else 'Pareto'}: *)")
    params = sorted({name for t in study.trials for name in t.params})
    for column in ("trial", "state", *params, *_objective_labels(study)):
        result.add_column(column, justify="right")
    for trial in study.trials:
        values = trial.values or [math.nan] * len(study.directions)
        marker = "*" if trial.number in front else ""
        result.add_row(
            f"{trial.number}{marker}",
            trial.state.name,
            *(
                f"{trial.params[name]:.4g}"
                if isinstance(trial.params.get(name), float)
                else str(trial.params.get(name, ""))
                for name in params
            ),
            *(f"{value:.4f}" for value in values),
        )
    return result


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="tiny_world", help="MLflow experiment name")
    parser.add_argument("--sweep", help="'latest' or a sweep parent run id; default: every run of the experiment")
    parser.add_argument("--out", type=Path, help="folder for the PNGs (default reports/<experiment>)")
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    parser.add_argument("--study", help="an Optuna study name: adds its history, importances and Pareto front")
    parser.add_argument(
        "--storage",
        default=configured_storage(),
        help="the study's storage URL (default: OPTUNA_STORAGE, else sqlite:///optuna.db)",
    )
    args = parser.parse_args(argv)
    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    client = mlflow.MlflowClient()
    out = args.out or Path("reports") / (args.study or args.experiment)
    console = Console(width=max(Console().width, 140))
    paths = []
    if args.study:
        study = load_study(args.study, args.storage)
        paths += plot_study(study, out)
        console.print(study_table(study))
    runs, parent_id = select_runs(client, args.experiment, args.sweep, args.study)
    summaries = summarise(client, runs)
    paths += plot(summaries, out)
    console.print(table(summaries))
    if parent_id is not None:
        for path in paths:
            client.log_artifact(parent_id, str(path), artifact_path="report")
    print("plots: " + " ".join(str(path) for path in paths))
    return paths
