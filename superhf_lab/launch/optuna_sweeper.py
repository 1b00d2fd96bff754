"""hydra-optuna-sweeper's sweeper, plus re-queuing the trials that a dead invocation left running, plus Optuna's
JournalStorage for clusters without a database server.

When a sweep process dies (preemption, SIGKILL, a lost node), its in-flight trials stay RUNNING in the
study forever and Optuna never proposes them again. Before sweeping, this sweeper marks such trials
FAIL and enqueues their parameters, so they run first; with checkpoints on, the re-run job has the
same config and continues from its last checkpoint into the same MLflow run. This assumes one sweeper
process per study at a time (running trials of a live sweep elsewhere would be re-queued too).

``storage`` is an SQLAlchemy URL as Optuna takes it, or ``journal:<file>``: Optuna's JournalStorage appending to
one file (a shared file system is enough; no database server).
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from optuna.trial import TrialState

from superhf_lab.tracking.studies import optuna_storage

log = logging.getLogger(__name__)


def requeue_stale_trials(study_name: str | None, storage: Any) -> list[int]:
    """Fail and re-enqueue every RUNNING trial of the study; returns their numbers."""
    if not study_name or not storage:
        return []
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # a new study
        return []
    requeued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params)
        requeued.append(trial.number)
    if requeued:
        log.warning("re-queued trials %s of study %s: a previous sweep stopped while they ran", requeued, study_name)
    return requeued


class ResumingOptunaSweeper(OptunaSweeper):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sweeper.storage = optuna_storage(self.sweeper.storage)

    def sweep(self, arguments: list[str]) -> None:
        requeue_stale_trials(self.sweeper.study_name, self.sweeper.storage)
        return super().sweep(arguments)
