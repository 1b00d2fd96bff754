"""Minibatch sizes that halve when a step runs out of memory, as the reference's use of accelerate's
``find_executable_batch_size`` does, but bounded and remembered for the rest of the run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

log = logging.getLogger(__name__)
Result = TypeVar("Result")


def alone(out_of_memory: bool) -> bool:
    """One process decides for itself."""
    return out_of_memory


class HalvingBatchSize:
    """``run(work)`` calls ``work(size)``; out of memory halves ``size`` and retries, at most ``max_halvings``
    times over the run (then the error propagates with a message saying which key to lower).

    ``agree`` turns this process's "out of memory?" into the answer of every process of the run (see
    :meth:`superhf_lab.runtime.distributed.Processes.any`), so all of them halve and retry together."""

    def __init__(self, key: str, size: int, max_halvings: int) -> None:
        self.key = key
        self.size = size
        self.max_halvings = max_halvings
        self.halvings = 0

    def run(self, work: Callable[[int], Result], agree: Callable[[bool], bool] = alone) -> Result:
        while True:
            error = None
            try:
                result = work(self.size)
            except RuntimeError as raised:
                if not should_reduce_batch_size(raised):
                    raise
                error = raised
            if not agree(error is not None):
                return result
            if self.halvings >= self.max_halvings or self.size == 1:
                raise RuntimeError(
                    f"out of memory at {self.key}={self.size} after {self.halvings} halvings "
                    f"(limit algorithm.max_oom_halvings={self.max_halvings}){'' if error else ' on another process'}; "
                    f"lower {self.key}, algorithm.max_new_tokens or the model size"
                ) from error
            clear_device_cache(garbage_collection=True)
            self.size = max(1, self.size // 2)
            self.halvings += 1
            log.warning(
                "out of memory: %s halved to %d (halving %d of at most %d)",
                self.key,
                self.size,
                self.halvings,
                self.max_halvings,
            )
