"""Step metrics that nothing downstream waits for (METEOR similarity, distinct-n), off the training loop's path.

They are computed in one background thread while the next step runs, and logged from the loop's own thread
(the tracker is never used from the worker) under the step they belong to, in step order: when ready, and all of
them before a checkpoint and at the end of the run, so none is lost and a run's history is what computing them
inline would give.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from superhf_lab.tracking.tracker import Tracker

log = logging.getLogger(__name__)


class Bookkeeping:
    """``background=False`` computes each step's metrics at once, in the loop's thread (the benchmark's "before")."""

    def __init__(self, tracker: Tracker, background: bool = True) -> None:
        self.tracker = tracker
        self.worker_seconds = 0.0  # time spent computing, for the benchmark
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bookkeeping") if background else None
        self._pending: deque[tuple[int, Future]] = deque()

    def submit(self, step: int, compute: Callable[[], dict[str, float]]) -> None:
        """Compute ``step``'s metrics in the background."""
        if self._executor is None:
            done: Future = Future()
            done.set_result(self._timed(compute))
            self._pending.append((step, done))
            return
        self._pending.append((step, self._executor.submit(self._timed, compute)))

    def log_ready(self) -> None:
        while self._pending and self._pending[0][1].done():
            self._log(*self._pending.popleft())

    def log_all(self) -> None:
        while self._pending:
            self._log(*self._pending.popleft())

    def _log(self, step: int, future: Future) -> None:
        self.tracker.log_metrics(future.result(), step=step)

    def _timed(self, compute: Callable[[], dict[str, float]]) -> dict[str, float]:
        started = time.perf_counter()
        try:
            return compute()
        finally:
            self.worker_seconds += time.perf_counter() - started

    def __enter__(self) -> Bookkeeping:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        try:
            self.log_all()
        except Exception:
            if error_type is None:
                raise
            log.exception("could not log the metrics computed for the last steps")  # the first error matters more
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
