"""hydra-optuna-sweeper's sweeper, plus re-queuing the trials that a dead invocation left running.

When a sweep process dies (preemption, SIGKILL, a lost node), its in-flight trials stay RUNNING in the
study forever and Optuna never proposes them again. Before sweeping, this sweeper marks such trials
FAIL and enqueues their parameters, so they run first; with checkpoints on, the re-run job has the
same config and continues from its last checkpoint into the same MLflow run. This assumes one sweeper
process per study at a time (running trials of a live sweep elsewhere would be re-queued too).
"""

from __future__ import annotations

import logging
import warnings
from typing import List

import optuna
from optuna.trial import TrialState

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

log = logging.getLogger(__name__)


def requeue_stale_trials(study_name: str | None, storage: str | None) -> list[int]:
    """Fail and re-enqueue every RUNNING trial of the study; returns their numbers."""
    if not study_name or not storage:
        return []
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # a new study
        return []
    requeued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state(trial._trial_id, TrialState.FAIL)
        with warnings.catch_warnings():  # enqueue_trial is "experimental" in Optuna 2.10, and stable since 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.enqueue_trial(trial.params)
        requeued.append(trial.number)
    if requeued:
        log.warning("re-queued trials %s of study %s: a previous sweep stopped while they ran", requeued, study_name)
    return requeued


class ResumingOptunaSweeper(OptunaSweeper):
    def sweep(self, arguments: List[str]) -> None:
        requeue_stale_trials(self.sweeper.study_name, self.sweeper.storage)
        return super().sweep(arguments)
