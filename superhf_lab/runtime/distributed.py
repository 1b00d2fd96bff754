"""The processes one run spans: one, or several started by ``torchrun`` / ``accelerate launch`` (or SLURM tasks).

Several processes share one run through accelerate (DDP). Every rank sees the same prompts in the same order;
work on a list (sampling, scoring, measuring KL) is split into contiguous shares, one per rank, and gathered
back in the original order, so a superbatch or an evaluation means the same completions on 1 or N processes.
Decisions one rank may reach alone (out of memory, a non-finite loss, SIGTERM) are agreed with :meth:`any`
before any collective that could otherwise wait forever for the rank that took the other branch.

With sharded weights (FSDP2) every forward and backward through the policy is itself a collective, so every
rank must call the policy equally often: :meth:`even_share` pads the shorter shares, and state dicts are gathered
whole (:meth:`state_dicts`, :meth:`full_state_dict`).

With one process every method is the identity and nothing from ``torch.distributed`` is touched.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn, TypeVar

import torch

from superhf_lab.core.errors import ConfigError, require

Item = TypeVar("Item")
ENGINES = ("auto", "single", "ddp", "fsdp", "deepspeed")
WORLD_SIZE_ENV = "WORLD_SIZE"
MAIN_RANK = 0  # the process that alone talks to MLflow and writes checkpoints


def launched_world_size() -> int:
    """How many processes the launcher started (``WORLD_SIZE``, set by torchrun and accelerate launch)."""
    return int(os.environ.get(WORLD_SIZE_ENV, "1"))


def launched_as_main() -> bool:
    """Whether this process is the launch's main one (``RANK``), before any process group exists."""
    return int(os.environ.get("RANK", str(MAIN_RANK))) == MAIN_RANK


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
    """This run's processes; the one of rank ``MAIN_RANK`` is the main one."""

    def __init__(self, accelerator: Any = None) -> None:
        self.accelerator = accelerator
        self.shards_on_cpu = False  # FSDP2 set up here over CPU processes, not by accelerate from the launch

    @classmethod
    def launched(cls, engine: str, device_name: str) -> Processes:
        """One process, or an accelerate ``Accelerator`` over the launched ones (gloo on CPU, NCCL on GPUs)."""
        world = launched_world_size()
        if world == 1:
            return cls()
        if engine == "single":
            raise ConfigError(
                f"distributed.engine=single is invalid: {world} processes were launched (WORLD_SIZE={world}); use "
                "distributed=ddp, or launch one process"
            )
        from accelerate import Accelerator, DistributedDataParallelKwargs

        # No buffer broadcast in DDP's forward: ranks may run different numbers of forward passes (uneven shares,
        # halved micro-batches), and a collective there would wait for a forward that never comes.
        processes = cls(
            Accelerator(
                cpu=device_name == "cpu",
                step_scheduler_with_optimizer=False,
                kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
            )
        )
        if engine == "fsdp" and processes.kind == "MULTI_CPU":
            processes._shard_on_cpu()
        if engine == "auto":
            return processes
        expected = {"ddp": ("MULTI_GPU", "MULTI_CPU"), "fsdp": ("FSDP",), "deepspeed": ("DEEPSPEED",)}[engine]
        kind = processes.kind
        if kind not in expected:
            raise ConfigError(
                f"distributed.engine={engine} is invalid for this launch: accelerate set up {kind}. Launch with the "
                "accelerate config file of conf/accelerate/ that matches this engine (README, More than "
                "one GPU), or choose the distributed option that matches your launch"
            )
        return processes

    def _shard_on_cpu(self) -> None:
        """FSDP2 over CPU processes (gloo), which torch supports but accelerate only sets up on accelerators: the
        same accelerate FSDP2 path as on GPUs, to try a sharded run (and test it) without one."""
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state
        # as conf/accelerate/fsdp.yaml: rank 0's weights are loaded into every rank's shards
        state.fsdp_plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap", cpu_ram_efficient_loading=True
        )
        # accelerate's own FSDP set-up writes both states (every AcceleratorState() copies the partial one's)
        state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
        self.shards_on_cpu = True

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator else 0

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes if self.accelerator else 1

    @property
    def is_main(self) -> bool:
        return self.rank == MAIN_RANK

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

    def even_share(self, items: Sequence[Item]) -> tuple[list[Item], int]:
        """This rank's share and how many of its leading items are real. With sharded weights the share is padded
        (repeating an item) to the longest share's length, so every rank calls the policy equally often; the
        caller drops the results of the padding."""
        share = self.share(items)
        if not self.sharded_weights or not items:
            return share, len(share)
        longest = -(-len(items) // self.world_size)
        return share + [share[-1] if share else items[-1]] * (longest - len(share)), len(share)

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

    @property
    def gradient_sum_scale(self) -> int:
        """What a share's loss is multiplied by before backward so that the ranks' gradients end up summed: FSDP
        reduces them in backward as a mean over ranks; otherwise :meth:`sum_gradients` sums them."""
        return self.world_size if self.sharded_weights else 1

    def sum_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """All-reduce (sum) the gradients each rank accumulated on its share of a minibatch, in one flat buffer.
        Sharded weights: FSDP already reduced its own in backward; a parameter it does not hold (PPO's value head,
        whole on every rank) is summed here and divided by :attr:`gradient_sum_scale`, which its loss carried."""
        if self.world_size == 1:
            return
        scale = 1
        if self.sharded_weights:
            parameters = [p for p in parameters if not _is_sharded(p)]
            scale = self.gradient_sum_scale
        if not parameters:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        if scale != 1:
            flat /= scale
        offset = 0
        for parameter, grad in zip(parameters, grads):
            parameter.grad = flat[offset : offset + grad.numel()].view_as(grad).clone()
            offset += grad.numel()

    @staticmethod
    def parameter_groups(parameters: list[torch.nn.Parameter]) -> list[dict]:
        """``parameters`` as optimizer groups: the FSDP-sharded ones apart from the whole ones (PPO's value head), as
        torch's fused and foreach optimizer steps take only one kind per call; one group when there is one kind."""
        kinds = [[p for p in parameters if _is_sharded(p)], [p for p in parameters if not _is_sharded(p)]]
        return [{"params": kind} for kind in kinds if kind]

    def clip_grad_norm(self, parameters: list[torch.nn.Parameter], max_norm: float) -> None:
        """Scale the (already summed) gradients so that their joint norm is at most ``max_norm``, as torch's
        ``clip_grad_norm_`` does, over whole and FSDP-sharded gradients alike (a sharded one's squares are summed
        over the ranks' shards, in one all-reduce for all of them)."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        squares = torch.zeros((), dtype=torch.float32, device=grads[0].device)
        shards = [g.to_local() for g in grads if _is_sharded(g)]
        if shards:
            shard_squares = sum(shard.float().pow(2).sum() for shard in shards)
            torch.distributed.all_reduce(shard_squares)
            squares = squares + shard_squares
        squares = squares + sum((g.float().pow(2).sum() for g in grads if not _is_sharded(g)), torch.zeros(()))
        coefficient = min(max_norm / (squares.sqrt().item() + 1e-6), 1.0)
        if coefficient < 1.0:
            for grad in grads:
                grad.mul_(coefficient)

    def barrier(self) -> None:
        if self.accelerator:
            self.accelerator.wait_for_everyone()

    def leave(self) -> None:
        """The end of a rank's run: it waits for the others, so that none closes its connections while another
        is still in a collective. The process itself ends through :func:`exit_launched_process`."""
        self.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """The main rank runs the block first (building a shared cache), then the others."""
        if self.accelerator is None:
            yield
            return
        with self.accelerator.main_process_first():
            yield

    def prepare(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
    ) -> tuple[torch.nn.Module, Any, Any]:
        """Model, optimizer and scheduler through ``Accelerator.prepare``: DDP wraps the model; FSDP2 shards it in
        place, after every rank took the main rank's weights (as DDP does), and shards a LoRA model's base model,
        the one module every forward (generation included) enters through."""
        if not self.accelerator:
            return model, optimizer, scheduler
        if not self.sharded_weights:
            return self.accelerator.prepare(model, optimizer, scheduler)
        sharded = self._to_shard(model)
        _, optimizer, scheduler = self.accelerator.prepare(sharded, optimizer, scheduler)
        return model, optimizer, scheduler

    def shard(self, model: torch.nn.Module) -> None:
        """Shard ``model`` in place as :meth:`prepare` does, without an optimizer: for a trainer with more than one
        sharded model (accelerate prepares one per call), which builds its optimizer afterwards, on the shards."""
        from accelerate.utils import fsdp2_prepare_model

        fsdp2_prepare_model(self.accelerator, self._to_shard(model))

    def _to_shard(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module FSDP2 shards for ``model`` (a LoRA model's base model, the one module every forward, generation
        included, enters through), after every rank took the main rank's weights (as DDP does)."""
        require(
            self.kind == "FSDP" and self.accelerator.is_fsdp2,
            "distributed.engine",
            self.kind,
            "sharded weights need FSDP2 here: launch with conf/accelerate/fsdp.yaml (fsdp_version: 2)",
        )
        if not self.accelerator.state.fsdp_plugin.cpu_ram_efficient_loading:  # else accelerate loads rank 0's
            self.broadcast([*model.parameters(), *model.buffers()])
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """The main rank's values of ``tensors`` (whole ones), in place on every rank."""
        if self.world_size == 1:
            return
        for tensor in tensors:
            torch.distributed.broadcast(tensor.data, src=MAIN_RANK)

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        """Backward passes that only accumulate locally; :meth:`sum_gradients` combines them afterwards (sharded
        weights: FSDP reduces in every backward)."""
        if not self.accelerator or self.sharded_weights:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    def state_dicts(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, trainable_only: bool
    ) -> tuple[dict, dict]:
        """Whole (unsharded) model and optimizer state on the main rank, keyed by parameter name; every rank calls
        this (it gathers sharded weights), the others get empty dicts. ``trainable_only`` keeps only trained
        weights (LoRA adapters)."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        return get_state_dict(model, _plain(optimizer), options=_whole(trainable_only))

    def load_state_dicts(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        weights: dict,
        optimizer_state: dict,
        trainable_only: bool,
    ) -> None:
        """Every rank loads what :meth:`state_dicts` returned on the main rank (sharding it again under FSDP).
        Optimizer state keyed by position (torch's own format, in checkpoints written before 3f24bcd) loads as
        torch loads it, where weights are whole."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

        options = StateDictOptions(full_state_dict=True, strict=not trainable_only)
        if not _keyed_by_position(optimizer_state):
            set_state_dict(
                model, _plain(optimizer), model_state_dict=weights, optim_state_dict=optimizer_state, options=options
            )
            return
        require(
            not self.sharded_weights,
            "distributed.engine",
            self.kind,
            "this checkpoint predates sharded training (its optimizer state is keyed by position): continue it "
            "on one process or under DDP, or start over with checkpoint.resume=never",
        )
        set_model_state_dict(model, weights, options=options)
        _plain(optimizer).load_state_dict(optimizer_state)

    def full_state_dict(self, model: torch.nn.Module, trainable_only: bool) -> dict | None:
        """A sharded model's whole state dict on the main rank (every rank calls this); None when weights are not
        sharded, as the model's own state dict is whole already."""
        if not self.sharded_weights:
            return None
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=_whole(trainable_only))


def _whole(trainable_only: bool) -> Any:
    """State dicts gathered whole to the main rank's host memory; ``trainable_only`` (LoRA) never gathers or copies
    the frozen base model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)


def exit_launched_process(status: int) -> NoReturn:
    """End one of several launched processes: the exit handlers run (logging, MLflow), the interpreter's teardown
    does not.

    A gloo worker thread frees a finished collective's tensors only after the caller has moved on (a barrier frees
    the collectives still in flight when it started), and freeing a tensor takes the GIL. Once the interpreter
    finalizes, a thread that asks for the GIL exits in the middle of that destructor and the process aborts:
    "terminate called without an active exception", exit status -6, which torchrun reports as a failed launch
    although every rank had finished (4 launches in 40 here on a loaded CPU, under FSDP). ``os._exit``
    after the exit handlers leaves no teardown for such a thread to race.
    """
    try:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def _keyed_by_position(optimizer_state: dict) -> bool:
    return any(isinstance(key, int) for group in optimizer_state["param_groups"] for key in group["params"])


def _plain(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


ONE_PROCESS = Processes()  # a run that was launched alone: every method is the identity
