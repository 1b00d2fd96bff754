"""The loop the lab's own trainers (SuperHF's and PPO's) share: their steps, evaluation on the way, checkpoints,
resume, SIGTERM, and the counters of skipped losses and halved minibatches that a checkpoint carries."""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from superhf_lab.core.errors import require
from superhf_lab.metrics.bookkeeping import Bookkeeping
from superhf_lab.metrics.meteor import load_wordnet
from superhf_lab.runtime.checkpoint import capture_rng, restore_rng
from superhf_lab.runtime.memory import alone
from superhf_lab.training.completions import score_completions
from superhf_lab.training.context import RunContext, save_policy_artifact
from superhf_lab.training.data import PromptStream
from superhf_lab.training.evaluation import PolicyEvaluator

log = logging.getLogger(__name__)


class StepLoop:
    """Mixed into a trainer that sets ``processes``, ``config`` (with ``max_nonfinite_losses``, ``max_oom_halvings``
    and ``lora``), ``text``, ``policy``, ``starting``, ``reward_scorer``, ``heldout_scorer``, ``optimizer``,
    ``scheduler``, ``grad_scaler``, ``batch_sizes`` (with a ``scoring`` one) and ``nonfinite_losses``, calls
    :meth:`out_of_memory_halvings`, and defines ``STEP`` (what a step is called), :meth:`total_steps` and
    :meth:`run_step`."""

    STEP = "step"

    def total_steps(self) -> int:
        raise NotImplementedError

    def run_step(self, step: int, stream: PromptStream, context: RunContext, bookkeeping: Bookkeeping) -> tuple:
        """Step ``step`` as training runs it, logged; returns its metrics first."""
        raise NotImplementedError

    def score(self, completions: list) -> None:
        """Reward (and held-out reward) of each completion as text, each scorer through its own tokenizer."""

        def score_in_minibatches_of(size: int) -> None:
            for scorer in (self.reward_scorer, self.heldout_scorer):
                if hasattr(scorer, "batch_size"):
                    scorer.batch_size = size
            score_completions(completions, self.text.reward_input, self.reward_scorer, self.heldout_scorer)

        self.batch_sizes["scoring"].run(score_in_minibatches_of, self.agree_on_oom)

    def out_of_memory_halvings(self) -> int:
        """Sets how ranks agree on running out of memory and returns how often a batch size may halve. A rank out of
        memory inside a sharded forward leaves the others in a collective that no agreement can reach: under FSDP
        the error ends the run (torchrun stops every rank) instead of halving."""
        configured = self.config.max_oom_halvings
        if not self.processes.sharded_weights:
            self.agree_on_oom = self.processes.any
            return configured
        self.agree_on_oom = alone
        log.info("FSDP: out of memory ends the run; algorithm.max_oom_halvings=%d is not used", configured)
        return 0

    def finite(self, loss: torch.Tensor) -> bool:
        """Whether to back-propagate ``loss``. With sharded weights backward is a collective, so the ranks agree
        on every micro-batch; otherwise each decides alone and the trainer agrees once per minibatch."""
        finite = bool(torch.isfinite(loss))
        return not self.processes.any(not finite) if self.processes.sharded_weights else finite

    def skip_nonfinite_loss(self) -> None:
        self.nonfinite_losses += 1
        if self.nonfinite_losses > self.config.max_nonfinite_losses:
            raise FloatingPointError(
                f"{self.nonfinite_losses} losses were NaN or infinite, more than "
                f"algorithm.max_nonfinite_losses={self.config.max_nonfinite_losses}. Lower algorithm.learning_rate, "
                "use precision=fp32 or bf16, or raise the limit"
            )

    def train(
        self,
        stream: PromptStream,
        context: RunContext,
        evaluator: PolicyEvaluator | None,
        background_bookkeeping: bool = True,
    ) -> None:
        """Run every step and log its metrics and sample completions, evaluating on the way when asked. The diversity
        metrics are computed while the next step runs (see :mod:`superhf_lab.metrics.bookkeeping`).

        A continued run restores the newest whole checkpoint (if any) and re-runs the steps after it; the tracker
        sends nothing MLflow already holds (logged before the kill), so the history has each step once. SIGTERM ends
        the run after the current step with a checkpoint (``Preempted``), the last one included; with several
        processes, SIGTERM to any of them stops all after the same step.
        """
        run, tracker, total = context.config, context.tracker, self.total_steps()
        first_step = self.resume(context, stream) if context.resume else 0
        progress = tqdm(
            range(first_step, total),
            desc=f"{self.config.name} {self.STEP}s",
            unit=self.STEP,
            initial=first_step,
            total=total,
            disable=not self.processes.is_main,
        )
        load_wordnet()  # the diversity metrics' METEOR needs it
        tracing = evaluator is not None and run.eval.every_n_steps > 0  # the over-optimisation path, from the start
        if tracing and first_step == 0:
            evaluator.evaluate_start(self.policy, tracker)
        with Bookkeeping(tracker, background_bookkeeping) as bookkeeping:
            for step in progress:
                metrics = self.run_step(step, stream, context, bookkeeping)[0]
                progress.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['kl']:.4f}")
                last = step == total - 1
                due = run.eval.every_n_steps and (step + 1) % run.eval.every_n_steps == 0
                if evaluator is not None and (due or (last and run.eval.at_end)):
                    evaluator.evaluate(self.policy, self.starting, tracker, step, step + 1 if tracing else None)
                if tracing and last:
                    evaluator.log_path_fit(tracker, step + 1)
                every = run.checkpoint.every_n_steps
                stop = self.processes.any(context.stop.requested)
                if context.checkpoints and (last or stop or (every and (step + 1) % every == 0)):
                    bookkeeping.log_all()  # the checkpoint's history holds every step up to it
                    self.save_checkpoint(context, stream, step)
                if stop:
                    context.stop_if_requested(f"{self.STEP} {step}")

    def save_checkpoint(self, context: RunContext, stream: PromptStream, step: int) -> None:
        """The main process writes the state (every process holds the same weights) with each process's RNG."""
        rng = self.processes.gather([capture_rng()])
        trainer_state = self.state_dict()  # on every process: sharded weights are gathered
        if self.processes.is_main:
            state = {"trainer": trainer_state, "stream_position": stream.position, "rng": rng}
            context.checkpoints.save(
                state, {"step": step, "run_id": context.tracker.run_id, "world_size": self.processes.world_size}
            )
            context.tracker.flush()
        self.processes.barrier()

    def resume(self, context: RunContext, stream: PromptStream) -> int:
        """Restore the newest whole checkpoint; returns the first step still to run (0 when there is none: the run was
        killed before its first checkpoint)."""
        loaded = context.checkpoints.load()
        if loaded is None:
            return 0
        state, meta = loaded
        saved_by = len(state["rng"])
        require(
            saved_by == self.processes.world_size,
            "checkpoint.resume",
            context.config.checkpoint.resume,
            f"the checkpoint in {context.checkpoints.folder} was saved by {saved_by} process(es): launch "
            f"{saved_by} to continue it exactly, or start over with checkpoint.resume=never",
        )
        self.load_state_dict(state["trainer"])
        stream.position = state["stream_position"]
        restore_rng(state["rng"][self.processes.rank])
        log.info("resumed from the checkpoint after %s %d in %s", self.STEP, meta["step"], context.checkpoints.folder)
        return meta["step"] + 1

    def checkpointed(self):
        """The module whose weights a checkpoint holds (the policy; with PPO, the policy and its value function)."""
        return self.policy

    def state_dict(self) -> dict:
        """What continuing exactly needs besides RNG and the prompt stream: weights (only the adapters with LoRA),
        optimizer, schedule, loss scaler, the skipped-loss count and the halved minibatch sizes. Every process calls
        this; weights and optimizer state are whole on the main one."""
        weights, optimizer = self.processes.state_dicts(self.checkpointed(), self.optimizer, self.config.lora.enabled)
        return {
            "policy": weights,
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict(),
            "nonfinite_losses": self.nonfinite_losses,
            "batch_sizes": {phase: (b.size, b.halvings) for phase, b in self.batch_sizes.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.processes.load_state_dicts(
            self.checkpointed(), self.optimizer, state["policy"], state["optimizer"], self.config.lora.enabled
        )
        self.scheduler.load_state_dict(state["scheduler"])
        self.grad_scaler.load_state_dict(state["grad_scaler"])
        self.nonfinite_losses = state["nonfinite_losses"]
        for phase, (size, halvings) in state["batch_sizes"].items():
            self.batch_sizes[phase].size, self.batch_sizes[phase].halvings = size, halvings


def train_and_save_policy(context: RunContext, trainer: StepLoop, stream: PromptStream) -> None:
    """Train (the loop evaluates on the way and at the end, before its last checkpoint), then save the policy as the
    run's artifact, gathered whole first under sharded weights."""
    run = context.config
    evaluator = None
    if run.eval.at_end or run.eval.every_n_steps:
        evaluator = PolicyEvaluator(
            run, trainer.tokenizer, trainer.reward_scorer, trainer.heldout_scorer, context.device, context.processes
        )
    trainer.train(stream, context, evaluator)
    context.stop_if_requested(f"the last {trainer.STEP}")  # a continued run with no step left may still be asked
    weights = context.processes.full_state_dict(trainer.policy, trainer.config.lora.enabled)
    if context.processes.is_main:
        save_policy_artifact(context.tracker, trainer.policy, trainer.tokenizer, weights)
