"""The processes one run spans: one, or several started by ``torchrun`` / ``accelerate launch`` (or SLURM tasks).

Several processes share one run through accelerate (DDP). Every rank sees the same prompts in the same order;
work on a list (sampling, scoring, measuring KL) is split into contiguous shares, one per rank, and gathered
back in the original order, so a superbatch or an evaluation means the same completions on 1 or N processes.
Decisions one rank may reach alone (out of memory, a non-finite loss, SIGTERM) are agreed with :meth:`any`
before any collective that could otherwise wait forever for the rank that took the other branch.

With one process every method is the identity and nothing from ``torch.distributed`` is touched.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch

from superhf_lab.errors import ConfigError

Item = TypeVar("Item")
ENGINES = ("auto", "single", "ddp", "fsdp", "deepspeed")
WORLD_SIZE_ENV = "WORLD_SIZE"


def launched_world_size() -> int:
    """How many processes the launcher started (``WORLD_SIZE``, set by torchrun and accelerate launch)."""
    return int(os.environ.get(WORLD_SIZE_ENV, "1"))


def launched_rank() -> int:
    """This process's rank in the launch (``RANK``), before any process group exists."""
    return int(os.environ.get("RANK", "0"))


def export_submitit_environment() -> None:
    """Inside a submitit job with several tasks (Hydra's submitit launcher with ``tasks_per_node`` > 1: one task
    per GPU), set what torch.distributed reads (RANK, WORLD_SIZE, MASTER_ADDR, ...) from the job's tasks."""
    if launched_world_size() > 1 or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    from submitit.helpers import TorchDistributedEnvironment

    environment = TorchDistributedEnvironment()
    if environment.world_size > 1:
        environment.export(set_cuda_visible_devices=False)


def launch_time(pattern: str) -> str:
    """The time a run was launched, formatted with ``pattern`` (Hydra's ``${now:...}`` for one process).

    Ranks start a moment apart; under torchrun they share the launcher process, whose start time names the
    run's output folder on every rank alike. (Several nodes: set ``hydra.run.dir`` explicitly.)
    """
    started = datetime.datetime.now()
    if launched_world_size() > 1:
        import psutil

        started = datetime.datetime.fromtimestamp(psutil.Process(os.getppid()).create_time())
    return started.strftime(pattern)


def register_launch_time_resolver() -> None:
    """``${launch_time:%H-%M-%S}`` in configs (the run and sweep folders), before Hydra composes. Cached, as Hydra's
    ``now``: every later read of a folder, and every sweep job (Hydra copies the cache into them), sees one time."""
    from omegaconf import OmegaConf

    OmegaConf.register_resolver("launch_time", launch_time, replace=True, use_cache=True)


class Processes:
    """This run's processes. ``rank`` 0 is the main one: it alone talks to MLflow and writes checkpoints."""

    def __init__(self, accelerator: Any = None) -> None:
        self.accelerator = accelerator

    @classmethod
    def launched(cls, engine: str, device_name: str) -> Processes:
        """One process, or an accelerate ``Accelerator`` over the launched ones (gloo on CPU, NCCL on GPUs)."""
        world = launched_world_size()
        if world == 1:
            return cls()
        if engine == "single":
            raise ConfigError(
                f"distributed.engine=single is invalid: {world} processes were launched (WORLD_SIZE={world}); use "
                "distributed=ddp, or launch one process")
        from accelerate import Accelerator, DistributedDataParallelKwargs

        # No buffer broadcast in DDP's forward: ranks may run different numbers of forward passes (uneven shares,
        # halved micro-batches), and a collective there would wait for a forward that never comes.
        processes = cls(Accelerator(cpu=device_name == "cpu", step_scheduler_with_optimizer=False,
                                    kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)]))
        if engine == "auto":
            return processes
        expected = {"ddp": ("MULTI_GPU", "MULTI_CPU"), "fsdp": ("FSDP",), "deepspeed": ("DEEPSPEED",)}[engine]
        kind = processes.kind
        if kind not in expected:
            raise ConfigError(
                f"distributed.engine={engine} is invalid for this launch: accelerate set up {kind}. Launch with the "
                "accelerate config file of conf/accelerate/ that matches this engine (README, More than "
                "one GPU), or choose the distributed option that matches your launch")
        return processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator else 0

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes if self.accelerator else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def kind(self) -> str:
        """accelerate's name for the engine (MULTI_GPU, MULTI_CPU, FSDP, DEEPSPEED), or NO for one process."""
        return self.accelerator.distributed_type.value if self.accelerator else "NO"

    @property
    def sharded_weights(self) -> bool:
        """Whether the engine shards the weights (FSDP, DeepSpeed), so no rank holds a whole model."""
        return self.kind in ("FSDP", "DEEPSPEED")

    def device(self, single_process_device: torch.device) -> torch.device:
        return self.accelerator.device if self.accelerator else single_process_device

    def share(self, items: Sequence[Item]) -> list[Item]:
        """This rank's contiguous share of ``items`` (shares differ in length by at most one)."""
        base, extra = divmod(len(items), self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return list(items[start : start + base + (self.rank < extra)])

    def gather(self, share: list[Item]) -> list[Item]:
        """Every rank's share, concatenated in rank order, on every rank: the inverse of :meth:`share`."""
        if self.world_size == 1:
            return share
        shares: list[list[Item]] = [[] for _ in range(self.world_size)]
        torch.distributed.all_gather_object(shares, share)
        return [item for part in shares for item in part]

    def from_main(self, value: Item) -> Item:
        """The main process's ``value``, on every process (what the others passed is ignored)."""
        if self.world_size == 1:
            return value
        holder = [value]
        torch.distributed.broadcast_object_list(holder, src=0)
        return holder[0]

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (every rank learns the same answer)."""
        if self.world_size == 1:
            return flag
        return any(self.gather([flag]))

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over the ranks (the same keys on every rank)."""
        if self.world_size == 1:
            return values
        per_rank = self.gather([values])
        return {name: sum(part[name] for part in per_rank) for name in values}

    def sum_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """All-reduce (sum) the gradients each rank accumulated on its share of a minibatch, in one flat buffer."""
        if self.world_size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for parameter, grad in zip(parameters, grads):
            parameter.grad = flat[offset : offset + grad.numel()].view_as(grad).clone()
            offset += grad.numel()

    def barrier(self) -> None:
        if self.accelerator:
            self.accelerator.wait_for_everyone()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """The main rank runs the block first (building a shared cache), then the others."""
        if self.accelerator is None:
            yield
            return
        with self.accelerator.main_process_first():
            yield

    def prepare(self, *objects: Any) -> tuple[Any, ...]:
        """Model, optimizer and scheduler through ``Accelerator.prepare`` (DDP wraps the model)."""
        return self.accelerator.prepare(*objects) if self.accelerator else objects

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        """Backward passes that only accumulate locally; :meth:`sum_gradients` combines them afterwards."""
        return self.accelerator.no_sync(model) if self.accelerator else contextlib.nullcontext()


ONE_PROCESS = Processes()  # a run that was launched alone: every method is the identity
