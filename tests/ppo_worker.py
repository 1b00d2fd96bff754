"""One PPO update on a fixed rollout, in 1 process (``python``) or several (``torchrun``).

    python tests/ppo_worker.py TINY_WORLD OUT [clean|oom_on_rank_1|nan_on_rank_1] [OVERRIDE ...]

The rollout is fixed completions with fixed rewards; each process computes its share of the rollout's statistics and
of every minibatch's gradients. The main process saves the trainable weights after the update, the gradients each
optimizer step was given, the optimizer's settings, the update's metrics and the trainer's counters to OUT.
"""

import sys

import torch
from distributed_worker import TEXTS, record_steps, whole
from torch.distributed.tensor import DTensor
from transformers import set_seed

from superhf_lab.algorithms.ppo_trainer import PPOTrainer, build_trainer
from superhf_lab.launch.compose import compose_run_config, validate_config
from superhf_lab.runtime.distributed import Processes, exit_launched_process
from superhf_lab.tracking.tracker import ReplicaTracker
from superhf_lab.training.completions import Completion
from superhf_lab.training.context import RunContext

ROWS = 10  # minibatches of 5 split 3 + 2 over two processes


def inject(trainer: PPOTrainer, scenario: str, rank: int) -> None:
    """Make rank 1's first minibatch run out of memory, or its loss NaN, once."""
    if rank != 1 or scenario == "clean":
        return
    accumulate, calls = trainer._accumulate_gradients, []

    def faulty(rollout, statistics, advantages, returns, minibatch, micro_size):
        calls.append(micro_size)
        if len(calls) == 1 and scenario == "oom_on_rank_1":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        if len(calls) == 1 and scenario == "nan_on_rank_1":
            advantages = advantages * float("nan")
        return accumulate(rollout, statistics, advantages, returns, minibatch, micro_size)

    trainer._accumulate_gradients = faulty


def main(tiny_world: str, out: str, scenario: str = "clean", *extra_overrides: str) -> None:
    overrides = [
        "algorithm=ppo",
        f"tiny_world.dir={tiny_world}",
        "device=cpu",
        "kl_coef=0.1",
        f"algorithm.batch_size={ROWS}",
        "algorithm.num_mini_batches=2",
        "algorithm.num_ppo_epochs=2",
        "algorithm.learning_rate=1e-3",
        "algorithm.lr_schedule=constant",  # the update's learning rate is still 1e-3 after it
        *extra_overrides,
    ]
    cfg = compose_run_config(overrides)
    cfg.output_dir = "outputs/worker"
    config = validate_config(cfg)
    processes = Processes.launched(config.distributed.engine, config.device)
    set_seed(processes.rank)  # as run.py (seed + rank): the engine must give every rank the main rank's weights
    context = RunContext(config, ReplicaTracker(), processes.device(torch.device("cpu")), processes=processes)
    trainer, stream = build_trainer(context)
    prompts = stream.take(2)
    completions = [
        Completion(prompts[i % 2], i, TEXTS[i % len(TEXTS)], num_tokens=0, finished=i % 3 != 0, reward=0.3 * i - 1)
        for i in range(ROWS)
    ]
    inject(trainer, scenario, processes.rank)
    trained = [(name, p) for name, p in trainer.actor_critic.named_parameters() if p.requires_grad]
    steps = record_steps(trainer, trained)
    rollout = trainer.make_rollout(completions)
    metrics = trainer.update(rollout)
    weights = {name: whole(p.detach()).clone() for name, p in trained}
    adam = {key: trainer.optimizer.param_groups[0][key] for key in ("lr", "betas", "eps", "weight_decay")}
    if processes.is_main:
        torch.save(
            {
                "weights": weights,
                "steps": steps,
                "adam": adam,
                "metrics": metrics,
                "nonfinite_losses": trainer.nonfinite_losses,
                "optimisation_size": trainer.batch_sizes["optimisation"].size,
                "world_size": processes.world_size,
                "sharded": any(isinstance(p, DTensor) for _, p in trained),
            },
            out,
        )
    processes.leave()


if __name__ == "__main__":
    main(*sys.argv[1:])
    exit_launched_process(0)
