"""Plots and a table of runs read from the MLflow store.

    python -m superhf_lab.report                       # every run of experiment tiny_world
    python -m superhf_lab.report --sweep latest        # the jobs of the latest Hydra multirun
    python -m superhf_lab.report --experiment paper_table2 --out reports/paper
    python -m superhf_lab.report --study kl_coef_tiny_world_superhf   # an Optuna study and its runs

Writes reward over training per run, final reward and METEOR similarity against ``kl_coef``, and final
reward against KL (the paper's trade-off plot) as PNGs; a sweep's plots are also logged to its parent run.
"Final" is the mean over the last fifth of a run's steps, which is steadier than the last step alone.
For an Optuna study it adds the optimisation history, parameter importances and, for a multi-objective
study, the Pareto front, with a table of every trial.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import optuna  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from superhf_lab.sweeps import ROLE_TAG, STUDY_TAG  # noqa: E402

CURVES = ("reward/mean", "heldout_reward/mean", "kl", "diversity/meteor_similarity")
PLOTS = ("reward_over_training.png", "reward_vs_kl_coef.png", "meteor_vs_kl_coef.png", "reward_vs_kl.png")
STUDY_PLOTS = ("optuna_history.png", "optuna_param_importances.png")
PARETO_PLOT = "optuna_pareto_front.png"
DEFAULT_STORAGE = "sqlite:///optuna.db"  # conf/hydra/sweeper/optuna_study.yaml's default


@dataclass
class RunSummary:
    run_id: str
    name: str
    algorithm: str
    kl_coef: float
    samples: list[float]  # completions generated, per step
    curves: dict[str, list[float]]

    def final(self, metric: str) -> float:
        values = self.curves.get(metric, [])
        tail = values[-max(1, len(values) // 5):]
        return sum(tail) / len(tail) if tail else float("nan")


def _history(client: mlflow.MlflowClient, run_id: str, metric: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)]


def select_runs(
    client: mlflow.MlflowClient, experiment: str, sweep: str | None, study: str | None = None
) -> tuple[list, str | None]:
    """The runs to report on, and the sweep's parent run id when reporting a sweep or a study."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"No MLflow experiment named {experiment!r} in {mlflow.get_tracking_uri()}; pass --experiment")
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [run for run in runs if run.data.tags.get(ROLE_TAG) == "sweep"]
    if study is not None:
        parents = [run for run in parents if run.data.tags.get(STUDY_TAG) == study]
        sweep = "latest"
    if sweep is None:
        return [run for run in runs if run not in parents], None
    parent_id = parents[-1].info.run_id if sweep == "latest" and parents else sweep
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent_id]
    if not children:
        raise SystemExit(f"No runs belong to sweep {sweep!r} in experiment {experiment!r}")
    return children, parent_id


def summarise(client: mlflow.MlflowClient, runs: list) -> list[RunSummary]:
    return [
        RunSummary(
            run_id=run.info.run_id, name=run.info.run_name, algorithm=run.data.tags.get("algorithm", "?"),
            kl_coef=float(run.data.params.get("kl_coef", "nan")),
            samples=_history(client, run.info.run_id, "progress/completions_generated"),
            curves={metric: _history(client, run.info.run_id, metric) for metric in CURVES},
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


def _by_algorithm(summaries: list[RunSummary]) -> dict[str, list[RunSummary]]:
    groups: dict[str, list[RunSummary]] = {}
    for summary in sorted(summaries, key=lambda s: s.kl_coef):
        groups.setdefault(summary.algorithm, []).append(summary)
    return groups


def plot(summaries: list[RunSummary], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in PLOTS]

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for summary in summaries:
        x = summary.samples or list(range(len(summary.curves["reward/mean"])))
        label = f"{summary.algorithm} {summary.name}"
        axes[0].plot(x, _ema(summary.curves["reward/mean"]), label=label)
        if summary.curves["heldout_reward/mean"]:
            axes[1].plot(x, _ema(summary.curves["heldout_reward/mean"]), label=label)
    for axis, title in zip(axes, ("training (proxy) reward", "held-out reward")):
        axis.set(xlabel="completions generated", ylabel=f"{title}, EMA 0.9", title=title)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(paths[0], dpi=110)
    plt.close(figure)

    for path, metrics, ylabel in (
        (paths[1], ("reward/mean", "heldout_reward/mean"), "final reward"),
        (paths[2], ("diversity/meteor_similarity",), "final METEOR similarity (higher = less diverse)"),
    ):
        figure, axis = plt.subplots(figsize=(6, 4.5))
        for algorithm, group in _by_algorithm(summaries).items():
            for metric in metrics:
                axis.plot([s.kl_coef for s in group], [s.final(metric) for s in group], marker="o",
                          label=f"{algorithm} {metric}")
        axis.set(xlabel="kl_coef", ylabel=ylabel)
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 4.5))
    for algorithm, group in _by_algorithm(summaries).items():
        axis.scatter([s.final("kl") for s in group], [s.final("reward/mean") for s in group], label=algorithm)
        for s in group:
            axis.annotate(f"{s.kl_coef:g}", (s.final("kl"), s.final("reward/mean")), fontsize=8)
    axis.set(xlabel="final KL (each algorithm's own estimate)", ylabel="final training reward",
             title="reward against KL (labels: kl_coef)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(paths[3], dpi=110)
    plt.close(figure)
    return paths


def table(summaries: list[RunSummary]) -> Table:
    result = Table(title="runs (final = mean over the last fifth of steps)")
    for column in ("run", "algorithm", "kl_coef", "reward first", "reward final", "held-out final", "KL final",
                   "METEOR final"):
        result.add_column(column, justify="left" if column in ("run", "algorithm") else "right")
    for s in summaries:
        rewards = s.curves["reward/mean"]
        first = sum(rewards[: max(1, len(rewards) // 5)]) / max(1, len(rewards[: max(1, len(rewards) // 5)]))
        result.add_row(s.name, s.algorithm, f"{s.kl_coef:g}", f"{first:.3f}", f"{s.final('reward/mean'):.3f}",
                       f"{s.final('heldout_reward/mean'):.3f}", f"{s.final('kl'):.4f}",
                       f"{s.final('diversity/meteor_similarity'):.3f}")
    return result


def load_study(name: str, storage: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
        raise SystemExit(f"No Optuna study named {name!r} in {storage}; studies there: {names}") from None


def _objective_labels(study: optuna.Study) -> list[str]:
    return [f"objective {i} ({direction.name.lower()})" for i, direction in enumerate(study.directions)]


def plot_study(study: optuna.Study, out: Path) -> list[Path]:
    """Optimisation history and fANOVA parameter importances per objective; Pareto front if several."""
    out.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    failed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
    labels = _objective_labels(study)
    paths = [out / name for name in STUDY_PLOTS]

    figure, axes = plt.subplots(1, len(labels), figsize=(6 * len(labels), 4.5), squeeze=False)
    for index, (axis, label) in enumerate(zip(axes[0], labels)):
        numbers = [t.number for t in complete]
        values = [t.values[index] for t in complete]
        axis.scatter(numbers, values, label="complete trial")
        if values:
            pick = max if study.directions[index] == optuna.study.StudyDirection.MAXIMIZE else min
            best = [pick(values[: i + 1]) for i in range(len(values))]
            axis.step(numbers, best, where="post", color="tab:red", label="best so far")
        for trial in failed:
            axis.axvline(trial.number, color="grey", linestyle=":", linewidth=1)
        axis.set(xlabel="trial", ylabel=label, title=f"{study.study_name}: history ({len(failed)} failed, dotted)")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(paths[0], dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(1, len(labels), figsize=(6 * len(labels), 4.5), squeeze=False)
    for index, (axis, label) in enumerate(zip(axes[0], labels)):
        importances = param_importances(study, index)
        if importances:
            names = list(importances)[::-1]
            axis.barh(names, [importances[name] for name in names])
            axis.set(xlabel="importance (mean decrease in impurity)", title=label)
        else:
            axis.text(0.5, 0.5, "needs 2+ complete trials\nwith varied parameters", ha="center", va="center")
            axis.set(title=label, xticks=[], yticks=[])
    figure.tight_layout()
    figure.savefig(paths[1], dpi=110)
    plt.close(figure)

    if len(labels) > 1:
        paths.append(out / PARETO_PLOT)
        front = {t.number for t in study.best_trials}
        figure, axis = plt.subplots(figsize=(6, 4.5))
        others = [t for t in complete if t.number not in front]
        best = sorted((t for t in complete if t.number in front), key=lambda t: t.values[0])
        axis.scatter([t.values[0] for t in others], [t.values[1] for t in others], color="grey", label="dominated")
        axis.plot([t.values[0] for t in best], [t.values[1] for t in best], "o-", color="tab:red", label="Pareto front")
        for trial in best:
            axis.annotate(str(trial.number), (trial.values[0], trial.values[1]), fontsize=8)
        axis.set(xlabel=labels[0], ylabel=labels[1], title=f"{study.study_name}: Pareto front (labels: trial)")
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(paths[-1], dpi=110)
        plt.close(figure)
    return paths


def param_importances(study: optuna.Study, objective_index: int) -> dict[str, float]:
    """Random-forest importances for one objective; empty when there is too little to fit.

    Optuna 2.10's default fANOVA evaluator breaks on scikit-learn >= 1.3 (the tree value array changed
    shape); the mean-decrease-in-impurity evaluator fits the same kind of forest and works.
    """
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    varied = {name for name in (complete[0].params if complete else {})
              if len({t.params.get(name) for t in complete}) > 1}
    if len(complete) < 2 or not varied:
        return {}
    return optuna.importance.get_param_importances(
        study, params=sorted(varied), target=lambda trial: trial.values[objective_index],
        evaluator=optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0),
    )


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
        result.add_row(f"{trial.number}{marker}", trial.state.name,
                       *(f"{trial.params[name]:.4g}" if isinstance(trial.params.get(name), float)
                         else str(trial.params.get(name, "")) for name in params),
                       *(f"{value:.4f}" for value in values))
    return result


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="tiny_world", help="MLflow experiment name")
    parser.add_argument("--sweep", help="'latest' or a sweep parent run id; default: every run of the experiment")
    parser.add_argument("--out", type=Path, help="folder for the PNGs (default reports/<experiment>)")
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    parser.add_argument("--study", help="an Optuna study name: adds its history, importances and Pareto front")
    parser.add_argument("--storage", default=os.environ.get("OPTUNA_STORAGE", DEFAULT_STORAGE),
                        help="the study's storage URL (default: OPTUNA_STORAGE, else sqlite:///optuna.db)")
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


if __name__ == "__main__":
    main()
