"""One SuperHF fine-tuning update on fixed completions, in 1 process (``python``) or several (``torchrun``).

    python tests/distributed_worker.py TINY_WORLD OUT [clean|oom_on_rank_1|nan_on_rank_1] [OVERRIDE ...]

The main process saves the trainable weights after the update, the gradients each optimizer step was given, the
optimizer's settings, the loss metrics and the trainer's counters to OUT, so a test can compare a 2-process update
with a 1-process one, or check what a fault on one rank did to both.
"""

import sys

import torch
from torch.distributed.tensor import DTensor
from transformers import set_seed

from superhf_lab.algorithms.superhf_trainer import SuperHFTrainer, build_trainer
from superhf_lab.launch.compose import compose_run_config, validate_config
from superhf_lab.runtime.distributed import Processes, exit_launched_process
from superhf_lab.tracking.tracker import ReplicaTracker
from superhf_lab.training.completions import Completion
from superhf_lab.training.context import RunContext

TEXTS = [
    "I can help with that.",
    "Sure, here is a short answer.",
    "No.",
    "Let me think about it step by step first.",
    "Thanks for asking!",
    "The answer is four.",
    "Here is what I know about it, in brief.",
    "Maybe.",
]


def inject(trainer: SuperHFTrainer, scenario: str, rank: int) -> None:
    """Make rank 1's first minibatch run out of memory, or its loss NaN, once."""
    if rank != 1 or scenario == "clean":
        return
    accumulate = trainer._accumulate_gradients
    calls = []

    def faulty(minibatch, micro_size):
        calls.append(micro_size)
        if len(calls) == 1 and scenario == "oom_on_rank_1":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        if len(calls) == 1 and scenario == "nan_on_rank_1":
            trainer.kl_coef, kl_coef = float("nan"), trainer.kl_coef
            try:
                return accumulate(minibatch, micro_size)
            finally:
                trainer.kl_coef = kl_coef
        return accumulate(minibatch, micro_size)

    trainer._accumulate_gradients = faulty


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor FSDP sharded, gathered whole (every rank calls this)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def record_steps(trainer: SuperHFTrainer, trained: list) -> list[dict[str, torch.Tensor]]:
    """The gradients every optimizer step is given (summed over the ranks, clipped), whole, one dict per step."""
    steps, step = [], trainer.grad_scaler.step

    def recording(optimizer):
        steps.append({name: whole(p.grad).clone() for name, p in trained if p.grad is not None})
        return step(optimizer)

    trainer.grad_scaler.step = recording
    return steps


def main(tiny_world: str, out: str, scenario: str = "clean", *extra_overrides: str) -> None:
    overrides = [
        f"tiny_world.dir={tiny_world}",
        "device=cpu",
        "kl_coef=0.1",
        "algorithm.minibatch_size_finetuning=4",
        "algorithm.warmup_superbatches=0",
        *extra_overrides,
    ]
    cfg = compose_run_config(overrides)
    cfg.output_dir = "outputs/worker"
    config = validate_config(cfg)
    processes = Processes.launched(config.distributed.engine, config.device)
    set_seed(processes.rank)  # as run.py (seed + rank): each engine must give every rank the main rank's weights
    context = RunContext(config, ReplicaTracker(), processes.device(torch.device("cpu")), processes=processes)
    trainer, stream = build_trainer(context)
    prompts = stream.take(2)
    kept = [Completion(prompts[i % 2], i % 2, text, num_tokens=0, finished=True) for i, text in enumerate(TEXTS)]
    inject(trainer, scenario, processes.rank)
    trained = [(name, p) for name, p in trainer.policy.named_parameters() if p.requires_grad]
    steps = record_steps(trainer, trained)
    losses = trainer.finetune(kept)
    weights = {name: whole(p.detach()).clone() for name, p in trained}
    adam = {key: trainer.optimizer.param_groups[0][key] for key in ("lr", "betas", "eps", "weight_decay")}
    if processes.is_main:
        torch.save(
            {
                "weights": weights,
                "steps": steps,
                "adam": adam,
                "losses": losses,
                "nonfinite_losses": trainer.nonfinite_losses,
                "finetuning_size": trainer.batch_sizes["finetuning"].size,
                "world_size": processes.world_size,
            },
            out,
        )
    processes.leave()


if __name__ == "__main__":
    main(*sys.argv[1:])
    exit_launched_process(0)
