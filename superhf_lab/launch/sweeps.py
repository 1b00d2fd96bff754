"""Grouping the jobs of one Hydra multirun under one MLflow parent run.

Every job of ``python run.py -m ...`` becomes a child run (``mlflow.parentRunId``) of a parent run that the
process launching the jobs finds or creates before any job starts (:class:`SweepCallback`, a Hydra callback),
keyed by the sweep's output folder (or, for an Optuna study, by the study's name, so a resumed study keeps adding
to one parent), and hands to the jobs through a file in the sweep folder: no lock, so cluster file systems without
``flock`` work. Swept values are params (the flattened config) and ``sweep.<key>`` tags, ready for the UI's compare
view and parallel-coordinates plot; the parent also gets a shared UI view that opens on its jobs' charts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from superhf_lab.metrics.overoptimisation import GOLD, PROXY, SQRT_KL
from superhf_lab.reporting.summary import HEADLINE_METRICS, print_sweep_summary
from superhf_lab.runtime.distributed import launched_as_main
from superhf_lab.tracking.provenance import ROLE_TAG, STUDY_TAG, SWEEP_TAG


def _as_pairs(overrides) -> dict[str, str]:
    """``key=value`` overrides as a dict; Hydra's escapes (``\\:``) removed so typed and job values compare."""
    pairs = (override.lstrip("+~").split("=", 1) for override in overrides if "=" in override)
    return {key: value.replace("\\", "") for key, value in pairs}


@dataclass(frozen=True)
class SweepJob:
    sweep_dir: str
    job_number: int
    overrides: tuple[str, ...]  # this job's command-line overrides, one value each
    swept_keys: frozenset[str]  # the keys whose values vary across the sweep
    study_name: str | None = None  # set when hydra-optuna-sweeper launched the job

    @property
    def swept_values(self) -> dict[str, str]:
        """This job's values of the keys that vary across the sweep."""
        return {key: value for key, value in _as_pairs(self.overrides).items() if key in self.swept_keys}

    @property
    def group(self) -> str:
        return sweep_group(self.sweep_dir, self.study_name)


def current_sweep_job() -> SweepJob | None:
    """This job's place in a Hydra multirun, or None for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return None
    sweep_dir = Path(hydra.sweep.dir).resolve()
    overrides = _as_pairs(hydra.overrides.task)
    if "optuna" in str(hydra.sweeper.get("_target_")):
        # The study's search space is hydra.sweeper.params; each job gets one sampled value per key.
        swept = frozenset(hydra.sweeper.params or {})
        return SweepJob(str(sweep_dir), hydra.job.num, tuple(hydra.overrides.task), swept, hydra.sweeper.study_name)
    multirun_file = sweep_dir / "multirun.yaml"  # the basic sweeper writes it before launching the jobs
    typed = OmegaConf.load(multirun_file).hydra.overrides.task if multirun_file.is_file() else []
    swept = frozenset(
        override.key_or_group
        for override in OverridesParser.create().parse_overrides(list(typed))
        if override.is_sweep_override()
    )
    return SweepJob(str(sweep_dir), hydra.job.num, tuple(hydra.overrides.task), swept & overrides.keys())


PARENT_FILE = "mlflow_parent_run.json"  # in the sweep folder: the parent run's id, experiment and UI view


def sweep_group(sweep_dir: str, study_name: str | None) -> str:
    """What the parent run is keyed by: the Optuna study, else the sweep's output folder."""
    return f"optuna study {study_name}" if study_name else sweep_dir


def read_parent(sweep_dir: str) -> dict[str, str]:
    """The parent run the launching process created for this sweep (see :class:`SweepCallback`)."""
    path = Path(sweep_dir) / PARENT_FILE
    if not path.is_file():
        raise RuntimeError(
            f"{path} is missing: the sweep's parent MLflow run is made by the Hydra callback "
            "hydra.callbacks.sweep_parent (conf/config.yaml) before jobs start; keep it in the config"
        )
    return json.loads(path.read_text())


HEADLINE_SECTION = "superhf_lab-headline"
OVEROPTIMISATION_SECTION = "superhf_lab-overoptimisation"
OVEROPTIMISATION_TITLE = "over-optimisation: gold and proxy reward against sqrt(KL)"


def headline_view(group: str) -> dict:
    """The MLflow UI view a sweep opens on: its jobs as one group (every job visible, no nested row to expand) and
    one chart section of the headline metrics, each job's own line, and one of each job's over-optimisation path:
    gold and proxy reward against d = sqrt(KL) (runs evaluating every ``eval.every_n_steps``, and best-of-n; charts of
    a metric no job logged stay hidden). The chart entries follow MLflow 3.17's line-chart card fields."""

    def line_chart(metric: str, section: str = HEADLINE_SECTION, x_metric: str = "") -> dict:
        return {
            "uuid": f"{section}-{metric}",
            "type": "LINE",
            "runsCountToCompare": 10,
            "metricSectionId": section,
            "deleted": False,
            "isGenerated": False,
            "displayName": metric,
            "metricKey": metric,
            "selectedMetricKeys": [metric],
            "lineSmoothness": 0,
            "xAxisScaleType": "linear",
            "scaleType": "linear",
            "range": {},
            "xAxisKey": "metric" if x_metric else "step",
            "selectedXAxisMetricKey": x_metric,
            "yAxisKey": "metric",
            "yAxisExpressions": [],
            "ignoreOutliers": False,
            "useGlobalXaxisKey": not x_metric,
            "useGlobalLineSmoothing": True,
        }

    return {
        "searchFilter": f"tags.`{SWEEP_TAG}` = '{group}' and tags.`{ROLE_TAG}` = 'job'",
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": SWEEP_TAG}]},
        "useGroupedValuesInCharts": False,
        "hideEmptyCharts": True,
        "isAccordionReordered": True,
        "compareRunSections": [
            {
                "uuid": HEADLINE_SECTION,
                "name": "reward, held-out reward, KL and METEOR similarity",
                "display": True,
                "isReordered": False,
                "deleted": False,
                "isGenerated": False,
            },
            {
                "uuid": OVEROPTIMISATION_SECTION,
                "name": OVEROPTIMISATION_TITLE,
                "display": True,
                "isReordered": False,
                "deleted": False,
                "isGenerated": False,
            },
        ],
        "compareRunCharts": [
            *(line_chart(metric) for metric in HEADLINE_METRICS),
            *(line_chart(metric, OVEROPTIMISATION_SECTION, SQRT_KL) for metric in (GOLD, PROXY)),
        ],
    }


class SweepCallback(Callback):
    """Creates (or finds) the sweep's parent run before the jobs launch, and closes it and prints the sweep's
    summary when they are done. Runs in the process that launches the jobs, whichever launcher; in a sweep that
    torchrun started on several processes, only in the main one (the others never talk to MLflow)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from superhf_lab.config.schema import MlflowConfig

        if not launched_as_main():
            return
        from superhf_lab.tracking.store import check_tracking_store, find_or_create_run, share_view

        sweep_dir = str(Path(config.hydra.sweep.dir).resolve())
        study_name = (
            config.hydra.sweeper.get("study_name") if "optuna" in str(config.hydra.sweeper.get("_target_")) else None
        )
        mlflow_config = MlflowConfig(**OmegaConf.to_container(config.mlflow, resolve=True))
        tracking_uri = check_tracking_store(mlflow_config)
        group = sweep_group(sweep_dir, study_name)
        tags = {SWEEP_TAG: group, ROLE_TAG: "sweep", **({STUDY_TAG: study_name} if study_name else {})}
        name = group if study_name else "sweep " + "/".join(Path(sweep_dir).parts[-2:])
        run_id = find_or_create_run(mlflow_config.experiment_name, tags, name, {"sweep_dir": sweep_dir})
        view_key = f"sweep-{run_id}"
        experiment_id = share_view(mlflow_config.experiment_name, view_key, headline_view(group))
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)
        (Path(sweep_dir) / PARENT_FILE).write_text(
            json.dumps(
                {"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": tracking_uri, "view_key": view_key}
            )
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from superhf_lab.tracking.store import set_terminated_or_warn

        if not launched_as_main():
            return
        sweep_dir = str(Path(config.hydra.sweep.dir).resolve())
        parent = read_parent(sweep_dir)
        set_terminated_or_warn(parent["run_id"], "FINISHED")
        print_sweep_summary(parent, sweep_dir)


def child_tags(job: SweepJob, parent_id: str) -> dict[str, str]:
    return {
        "mlflow.parentRunId": parent_id,
        SWEEP_TAG: job.group,
        ROLE_TAG: "job",
        "sweep.dir": job.sweep_dir,
        "sweep.job_number": str(job.job_number),
        "sweep.overrides": " ".join(job.overrides),
        **{f"sweep.{key}": value for key, value in job.swept_values.items()},
    }
