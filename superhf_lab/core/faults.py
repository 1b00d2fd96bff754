"""Named points where a run can be stopped or failed on purpose, reached deterministically (the crash tests).

``SUPERHF_LAB_FAULT`` lists faults, separated by commas, as ``point@n:action``: the n-th time (from 1, in this
process) the process reaches ``point`` it takes ``action``; ``point@n+:action`` acts then and every time after;
``@n`` may be left out for the first time. Unset, :func:`reach` costs one lookup.

Actions: ``kill`` (SIGKILL itself: nothing more runs, as a node that dies), ``term`` (SIGTERM itself, as a
scheduler's preemption), ``enospc`` (raise ``OSError(ENOSPC)``, a full disk), ``error`` (raise the error a
tracking server answers with when it fails, HTTP 500).
"""

from __future__ import annotations

import errno
import functools
import os
import signal
from collections import Counter
from dataclasses import dataclass

ENVIRONMENT_VARIABLE = "SUPERHF_LAB_FAULT"
POINTS = {
    "generation": "while sampling completions (training, probes, evaluation, best-of-N)",
    "scoring": "while reward models score completions",
    "finetuning": "between a minibatch's backward pass and its optimizer step",
    "checkpoint_save": "inside a checkpoint save, its files written but not yet in place",
    "spool_append": "halfway through appending a record to the tracking spool",
    "evaluation": "after an evaluation sampled and scored its completions, before it logs them",
    "policy_upload": "after the policy artifact is uploaded, before the run is tagged with it",
    "run_end": "after training and evaluation, before the MLflow run ends",
    "store_send": "before records are sent to the tracking store",
    "store_query": "before the tracking store is asked whether a run exists",
}
ACTIONS = ("kill", "term", "enospc", "error")


@dataclass(frozen=True)
class Fault:
    point: str
    occurrence: int
    action: str
    and_after: bool = False

    def due(self, count: int) -> bool:
        return count == self.occurrence or (self.and_after and count > self.occurrence)


def parse(text: str) -> tuple[Fault, ...]:
    """The faults ``text`` (the variable's value) names; a malformed entry names itself and the forms allowed."""
    faults = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        where, _, action = entry.rpartition(":")
        point, _, occurrence = where.partition("@")
        and_after = occurrence.endswith("+")
        occurrence = occurrence.rstrip("+") or "1"
        if point not in POINTS or action not in ACTIONS or not occurrence.isdigit() or int(occurrence) < 1:
            raise ValueError(
                f"{ENVIRONMENT_VARIABLE}={text!r}: cannot read {entry!r}; use point@n:action or "
                f"point@n+:action with a point in {sorted(POINTS)} and an action in {ACTIONS}"
            )
        faults.append(Fault(point, int(occurrence), action, and_after))
    return tuple(faults)


@functools.cache
def _configured() -> tuple[Fault, ...]:
    return parse(os.environ.get(ENVIRONMENT_VARIABLE, ""))


_reached: Counter[str] = Counter()


def reach(point: str) -> None:
    """Called at ``point``; acts when a configured fault is due there."""
    faults = _configured()
    if not faults:
        return
    _reached[point] += 1
    for fault in faults:
        if fault.point == point and fault.due(_reached[point]):
            _act(fault)


def _act(fault: Fault) -> None:
    if fault.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault.action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    elif fault.action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + f" ({ENVIRONMENT_VARIABLE} at {fault.point})")
    else:
        from mlflow.exceptions import RestException

        raise RestException(
            {"error_code": "INTERNAL_ERROR", "message": f"injected by {ENVIRONMENT_VARIABLE} at {fault.point}"}
        )
