"""What every plugin built on a TRL trainer shares: its arguments, the reward on decoded text, completions cut as
SuperHF cuts them, metrics under the project's names, checkpoints the run can resume from, and the final
evaluation and saving.

TRL trainers are transformers Trainers: they own their loop and save ``checkpoint-N`` folders in
``output_dir``. Here ``output_dir`` lies in the run's checkpoint folder, and each save (the last step's included)
also marks that folder with the step, so re-running the same command continues the same MLflow run from the
newest TRL checkpoint that was saved completely.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, TrainerCallback, TrainerState
from transformers.trainer import TRAINER_STATE_NAME as TRAINER_STATE

from superhf_lab.core.errors import require
from superhf_lab.core.faults import reach
from superhf_lab.core.text import decode_completion, trim_completion
from superhf_lab.training.completions import (
    COMPLETION_METRIC_NAMES,
    Completion,
    completion_metrics,
    completion_rows,
    score_completions,
)
from superhf_lab.training.context import RunContext, TrainingSetup, evaluator_for, finish_training
from superhf_lab.training.evaluation import (
    TRACE_METRIC_NAMES,
    CompletionKL,
    PolicyEvaluator,
    completion_kl,
    evaluation_metric_names,
)
from superhf_lab.training.policies import StartingPolicy
from superhf_lab.training.sampling import sample_completions
from superhf_lab.training.sequences import KL_ESTIMATE_NAMES, completion_token_ids


def trainer_arguments(context: RunContext, max_steps: int, learning_rate: float, **specific: Any) -> dict[str, Any]:
    """Arguments every TRL trainer takes the same way: where checkpoints go and how often, logging every step to
    the project's tracker only, the run's seed, precision and device."""
    run = context.config
    every = run.checkpoint.every_n_steps
    folder = context.checkpoints.folder / "trainer" if context.checkpoints else Path(run.output_dir) / "trainer"
    return dict(
        output_dir=str(folder),
        report_to="none",
        logging_steps=1,
        disable_tqdm=False,
        seed=run.seed,
        data_seed=run.seed,
        bf16=run.precision == "bf16",
        fp16=run.precision == "fp16",
        use_cpu=context.device.type == "cpu",
        max_steps=max_steps,
        learning_rate=learning_rate,
        save_strategy="steps" if context.checkpoints and every else "no",
        save_steps=every or max_steps,
        save_total_limit=2,
        gradient_checkpointing=False,
        **specific,
    )


def per_process(context: RunContext, total: int, key: str) -> int:
    """TRL sizes batches per process; the run's config sizes them per step over all processes."""
    world = context.processes.world_size
    require(total % world == 0, key, total, f"use a multiple of the {world} processes this run was launched with")
    return total // world


class TextReward:
    """A TRL reward function over decoded text: each completion is cut at the next turn (as SuperHF cuts it) and
    scored through the reward models' own tokenizers with ``text.reward_input``; the scored completions are kept
    for the step's metrics (every process's, gathered), with their exact KL to the starting policy and Schulman's
    estimates of it on the same tokens, measured here, with the policy that sampled them (before the update)."""

    __name__ = "reward_model"  # TRL names its reward metrics after the function

    def __init__(self, setup: TrainingSetup, context: RunContext) -> None:
        self.processes = context.processes
        self.scorer, self.heldout_scorer = setup.reward_scorer, setup.heldout_scorer
        self.text = context.config.text
        self.eos_token_id = setup.tokenizer.eos_token_id
        self.prompt_index: dict[str, int] = {}
        self.scored: list[Completion] = []
        self.tokenizer, self.device, self.precision = setup.tokenizer, context.device, context.config.precision
        self.batch_size = context.config.eval.batch_size
        self.trainer = None  # set once the trainer exists: KL is measured on its current policy
        self.frozen: StartingPolicy | None = None
        self.kl: list[CompletionKL] = []

    def __call__(
        self, prompts: list[str], completions: list[str], completion_ids: list[list[int]], **_: Any
    ) -> list[float]:
        batch = []
        for prompt, text, ids in zip(prompts, completions, completion_ids, strict=True):
            cut, _ = trim_completion(text, self.text.cut)
            finished = bool(ids) and ids[-1] == self.eos_token_id
            index = self.prompt_index.setdefault(prompt, len(self.prompt_index))
            batch.append(Completion(prompt, index, cut, len(ids) - finished, finished, generated_tokens=len(ids)))
        score_completions(batch, self.text.reward_input, self.scorer, self.heldout_scorer)
        self.scored.extend(batch)
        if self.trainer is not None:
            policy = self.trainer.accelerator.unwrap_model(self.trainer.model)
            starting = starting_policy(self.trainer, policy, self.frozen)
            self.kl.append(
                completion_kl(self.tokenizer, policy, starting, batch, "", self.batch_size, self.device, self.precision)
            )
        return [completion.reward for completion in batch]

    def take_scored(self) -> tuple[list[Completion], dict[str, float]]:
        """The completions scored since the last call, with their KL measures (for :class:`TrackerBridge`)."""
        scored, self.scored, self.prompt_index = self.scored, [], {}
        measured, self.kl = self.kl, []
        if not measured:
            return self.processes.gather(scored), {}
        return self.processes.gather(scored), CompletionKL.joined(measured).gathered(self.processes).means()


class CutAtNextTurn:
    """Mixin for TRL's GRPO and RLOO trainers: each generated completion's token ids become those of its text cut
    at the next turn (plus EOS when it ended), tokenised as SuperHF's fine-tuning tokenises it, so the loss mask
    covers exactly the completion that is scored."""

    text_cut: str = "next_turn"

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, *args, **kwargs):
        reach("generation")
        generated = super()._generate_single_turn(prompt_ids, images, multimodal_fields, *args, **kwargs)
        with_logprobs = isinstance(generated, tuple)  # GRPO returns (ids, log-probabilities), RLOO the ids alone
        cut_ids = []
        for ids in generated[0] if with_logprobs else generated:
            text, _, finished = decode_completion(self._tokenizer, ids, self.text_cut)
            cut_ids.append(completion_token_ids(self._tokenizer, "", Completion("", 0, text, 0, finished))[1])
        return (cut_ids, None) if with_logprobs else cut_ids  # log-probabilities of uncut ids no longer apply


class PolicyProbe:
    """For trainers that sample nothing (DPO, FeedME): at each step, one completion for each of a fixed set of
    training prompts (``eval.sampling``, ``text.*``), scored, with its exact KL to the starting policy, so these
    algorithms log reward, held-out reward, METEOR similarity and ``kl`` per step like the others. Several processes
    probe shares of the prompts and gather them."""

    def __init__(self, context: RunContext, setup: TrainingSetup, count: int) -> None:
        self.context, self.setup = context, setup
        self.prompts = setup.prompts.prompts[:count]
        self.trainer = None  # set once the trainer exists: the probe samples its current policy
        self.frozen: StartingPolicy | None = None

    def __call__(self) -> tuple[list[Completion], dict[str, float]]:
        run, device, setup = self.context.config, self.context.device, self.setup
        policy = self.trainer.accelerator.unwrap_model(self.trainer.model)
        completions = sample_completions(
            policy,
            setup.tokenizer,
            self.prompts,
            1,
            run.eval.sampling,
            run.eval.batch_size,
            device,
            run.precision,
            run.text.cut,
            processes=self.context.processes,
        )
        score_completions(completions, run.text.reward_input, setup.reward_scorer, setup.heldout_scorer)
        measured = completion_kl(
            setup.tokenizer,
            policy,
            starting_policy(self.trainer, policy, self.frozen),
            completions,
            run.eval.sampling.conversation_prompt,
            run.eval.batch_size,
            device,
            run.precision,
        )
        return self.context.processes.gather(completions), measured.gathered(self.context.processes).means()


class TrackerBridge(TrainerCallback):
    """Logs each TRL step under the project's metric names: the step's completions (reward, held-out reward,
    METEOR similarity, lengths: those the trainer sampled and scored, or a :class:`PolicyProbe`'s), TRL's own
    statistics renamed by ``renames``, what ``derive`` computes from TRL's log and the trainer's arguments (PPO's
    total loss and KL coefficient), and progress (a continued run's tracker sends only what MLflow lacks).
    Non-finite values are left out unless ``finite_only`` is off."""

    def __init__(
        self,
        context: RunContext,
        measure,
        renames: dict[str, str],
        prompts_per_step: int,
        completions_per_step: int,
        derive=None,
        finite_only: bool = True,
    ) -> None:
        self.context = context
        self.measure = measure  # () -> (the step's completions, metrics measured on them)
        self.renames = renames
        self.derive = derive  # (trainer arguments, TRL's log) -> metrics, or None
        self.prompts_per_step = prompts_per_step
        self.completions_per_step = completions_per_step
        self.finite_only = finite_only
        self.started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs and not any(name in logs for name in self.renames):
            return
        step = state.global_step - 1
        completions, measured = self.measure()
        metrics = {**completion_metrics(completions), **measured} if completions else {}
        metrics.update({ours: float(logs[theirs]) for theirs, ours in self.renames.items() if theirs in logs})
        if self.derive is not None:
            metrics.update(self.derive(args, logs))
        metrics["time/step_s"] = time.perf_counter() - self.started
        metrics["progress/completions_generated"] = (step + 1) * self.completions_per_step
        metrics["progress/prompts_seen"] = (step + 1) * self.prompts_per_step
        if self.finite_only:
            metrics = {name: value for name, value in metrics.items() if math.isfinite(value)}
        self.context.tracker.log_metrics(metrics, step=step)
        if completions:
            limit = self.context.config.mlflow.completions_logged_per_superbatch
            self.context.tracker.log_completions(completion_rows(step, completions, [], limit))
        self.started = time.perf_counter()


class CheckpointMarker(TrainerCallback):
    """Marks the run's checkpoint folder at each TRL save with its step, so a continued run starts from a TRL
    checkpoint known to be whole; saves the last step too, so a run killed during its final evaluation or upload
    continues from its final weights; honours SIGTERM (to any of the run's processes) by saving and stopping after
    the current step. The main process alone writes the mark."""

    def __init__(self, context: RunContext) -> None:
        self.context = context
        self.restore_from: str | None = None  # the checkpoint a continued run resumes from

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.restore_from is not None:
            load_checkpoint_weights(model, self.restore_from)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        reach("finetuning")

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True
        if self.context.processes.any(self.context.stop.requested):
            control.should_save = True
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        if self.context.processes.is_main:
            self.context.checkpoints.mark({"step": state.global_step - 1, "run_id": self.context.tracker.run_id})
            self.context.tracker.flush()  # rows up to the mark: a continued run recomputes only later ones


class PeriodicEvaluation(TrainerCallback):
    """Evaluates the policy every ``eval.every_n_steps`` optimizer steps on the fixed test prompts, as the lab's own
    trainers do, tracing the over-optimisation path from the starting policy (before the first step) on; the last
    step's evaluation is the final one (``eval.at_end``), after which the path is fitted."""

    def __init__(self, context: RunContext, evaluator: PolicyEvaluator, trainer, frozen: StartingPolicy | None) -> None:
        self.context, self.evaluator, self.trainer, self.frozen = context, evaluator, trainer, frozen

    def policy(self) -> PreTrainedModel:
        return self.trainer.accelerator.unwrap_model(self.trainer.model)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            self.evaluator.evaluate_start(self.policy(), self.context.tracker)

    def on_step_end(self, args, state, control, **kwargs):
        run, step = self.context.config, state.global_step - 1
        last = state.global_step >= state.max_steps
        if last and run.eval.at_end:
            return  # the final evaluation comes after training, then the fit (finish_training)
        if state.global_step % run.eval.every_n_steps == 0:
            policy = self.policy()
            self.evaluator.evaluate(
                policy, starting_policy(self.trainer, policy, self.frozen), self.context.tracker, step, step + 1
            )
        if last:
            self.evaluator.log_path_fit(self.context.tracker, state.global_step)


def train_and_finish(
    context: RunContext, trainer, setup: TrainingSetup, last_step: int, frozen: StartingPolicy | None
) -> None:
    """Train (continuing TRL's newest whole checkpoint when the run is continued), stop cleanly on SIGTERM, then
    evaluate the final policy against its starting policy and save it."""
    evaluator = (
        evaluator_for(context, setup) if context.config.eval.at_end or context.config.eval.every_n_steps else None
    )
    periodic = None
    if context.config.eval.every_n_steps:
        periodic = PeriodicEvaluation(context, evaluator, trainer, frozen)
        trainer.add_callback(periodic)
    checkpoint = marked_checkpoint(context, trainer) if context.resume else None
    saved = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE)) if checkpoint else None
    if saved is not None and saved.global_step >= trainer.args.max_steps:
        # Training is done: transformers' loop, resumed at its last step, would still take one step more.
        load_checkpoint_weights(trainer.model, checkpoint)
        trainer.state = saved
    else:
        marker = next((c for c in trainer.callback_handler.callbacks if isinstance(c, CheckpointMarker)), None)
        if marker is not None:
            marker.restore_from = checkpoint
        trainer.train(resume_from_checkpoint=checkpoint)
    if trainer.state.global_step < trainer.state.max_steps:
        context.stop_if_requested(f"step {trainer.state.global_step - 1}")
    policy = trainer.accelerator.unwrap_model(trainer.model)
    finish_training(
        context, setup, policy, starting_policy(trainer, policy, frozen), last_step, evaluator, periodic is not None
    )


def load_checkpoint_weights(model: PreTrainedModel, checkpoint: str) -> None:
    """The weights of TRL checkpoint ``checkpoint``, exactly. transformers' Trainer restores them with
    ``load_state_dict(strict=False)``, which silently misses weights saved under another name than the module's
    (transformers 5 saves GPT-NeoX's ``lm_head`` as ``embed_out``); ``from_pretrained`` reads them as saved."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.load_adapter(checkpoint, model.active_adapter, is_trainable=True)
        return
    saved = type(model).from_pretrained(checkpoint, dtype=next(model.parameters()).dtype)
    model.load_state_dict(saved.state_dict(), strict=True)


def marked_checkpoint(context: RunContext, trainer) -> str | None:
    """The TRL checkpoint the run's folder was last marked with: saved completely (the mark follows the save, and
    the two newest are kept), unlike the newest folder, which a kill can leave half written. None before the
    first mark: the continued run starts from the beginning."""
    meta = context.checkpoints.latest_meta()
    return None if meta is None else str(Path(trainer.args.output_dir) / f"checkpoint-{meta['step'] + 1}")


def starting_policy(trainer, policy: PreTrainedModel, frozen: StartingPolicy | None) -> StartingPolicy:
    """TRL's reference model when it kept one, else the policy with its LoRA adapters off, else the frozen copy."""
    reference = getattr(trainer, "ref_model", None)
    if reference is not None:
        return StartingPolicy(trainer.accelerator.unwrap_model(reference), adapters_disabled=False)
    if hasattr(policy, "disable_adapter"):
        return StartingPolicy(policy, adapters_disabled=True)
    return frozen


# What a PolicyProbe's completions give: one per prompt, so no within-prompt METEOR; and the exact kl.
PROBE_METRIC_NAMES = (
    *(name for name in COMPLETION_METRIC_NAMES if name != "diversity/meteor_similarity_within_prompt"),
    "kl",
    *KL_ESTIMATE_NAMES,
    *evaluation_metric_names(),
    *TRACE_METRIC_NAMES,
)
