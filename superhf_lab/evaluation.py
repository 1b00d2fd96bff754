"""Held-out evaluation of a policy, the way the paper judges one: on test prompts, per prompt source.

Training reward alone hides reward hacking, so a policy is sampled once per test prompt and judged by
the training reward model, a held-out reward model (the gold reward in the tiny world), METEOR
similarity between completions to different prompts (mode collapse), and KL to the starting policy.
Metrics are logged as ``eval/<source>/<name>`` and ``eval/all/<name>``:

- ``reward/mean``, ``heldout_reward/mean``
- ``diversity/meteor_similarity`` and ``diversity/meteor_similarity_ci95`` (half-width of the 95% interval),
  over ``eval.meteor_pairs_per_source`` seeded pairs of completions to different prompts per source
  (``all`` pools every source's pairs)
- ``kl``: exact KL(policy || start) per completion token, averaged; ``kl_sequence``: summed over the
  completion's tokens, averaged. Best-of-N has no per-token distribution and logs the upper bound
  ``log N - (N-1)/N`` on its sequence KL as ``kl_sequence_bound`` instead.
- ``completion/length_tokens_mean``, ``prompts``

Which test prompts and METEOR pairs are drawn depends on ``eval.seed`` alone, so every run, whatever its
training seed, is judged on the same prompts.
"""

from __future__ import annotations

import math
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from superhf_lab.completions import Completion, score_completions
from superhf_lab.config import ConfigError, ModelConfig, RunConfig
from superhf_lab.data import PromptSet, load_prompts
from superhf_lab.metrics import mean_and_ci95, meteor_pair_scores
from superhf_lab.models import autocast, load_policy
from superhf_lab.rewards import RewardScorer
from superhf_lab.sampling import sample_completions

OVERALL = "all"
POLICY_ARTIFACT = "policy"
EVAL_METRIC_NAMES = (
    "reward/mean", "heldout_reward/mean", "diversity/meteor_similarity", "diversity/meteor_similarity_ci95",
    "kl", "kl_sequence", "completion/length_tokens_mean", "prompts",
)
BOUND_METRIC_NAMES = ("kl_sequence_bound",)  # in place of kl and kl_sequence, for policies known only by a bound
ReferenceLogits = Callable[..., torch.Tensor]  # (**model inputs) -> logits of the starting policy


def eval_metric(name: str, scope: str = OVERALL) -> str:
    return f"eval/{scope}/{name}"


def evaluation_prompts(config: RunConfig) -> PromptSet:
    """A seeded sample of ``eval.prompts_per_source`` test prompts from each source of the data mix."""
    test = load_prompts(config.data, "test", config.eval.seed)
    wanted = config.eval.prompts_per_source
    rng = random.Random(config.eval.seed)
    chosen: list[int] = []
    for source in dict.fromkeys(test.sources):
        indices = [i for i, name in enumerate(test.sources) if name == source]
        chosen += sorted(rng.sample(indices, wanted)) if wanted is not None and wanted < len(indices) else indices
    chosen.sort()
    sources = [test.sources[i] for i in chosen]
    return PromptSet([test.prompts[i] for i in chosen], sources, {s: sources.count(s) for s in test.counts})


@torch.no_grad()
def completion_kl(
    tokenizer: PreTrainedTokenizerBase,
    policy: PreTrainedModel,
    reference_logits: ReferenceLogits,
    completions: list[Completion],
    conversation_prompt: str,
    batch_size: int,
    device: torch.device,
    precision: str,
) -> tuple[list[float], list[float]]:
    """Exact KL(policy || reference) on each completion: (mean per completion token, sum over its tokens)."""
    from superhf_lab.algorithms.superhf import completion_batch, completion_ce_and_kl

    was_training = policy.training
    policy.eval()
    per_token, per_sequence = [], []
    for start in range(0, len(completions), batch_size):
        inputs, completion_mask = completion_batch(tokenizer, conversation_prompt, completions[start : start + batch_size],
                                                   device)
        with autocast(device, precision):
            logits = policy(**inputs).logits
            reference = reference_logits(**inputs)
        _, kl = completion_ce_and_kl(logits, reference, inputs["input_ids"], completion_mask)
        tokens = completion_mask[:, 1:].sum(-1).clamp(min=1)
        per_token += kl.tolist()
        per_sequence += (kl * tokens).tolist()
    policy.train(was_training)
    return per_token, per_sequence


def evaluation_metrics(
    completions: list[Completion],
    sources: list[str],
    kl: dict[str, list[float]],
    meteor_pairs: int,
    seed: int,
) -> dict[str, float]:
    """Per-source and overall metrics of one completion per test prompt (``sources[i]`` is prompt i's source).

    ``kl`` maps KL metric names (``kl`` and ``kl_sequence``, or ``kl_sequence_bound``) to a value per completion.
    """
    metrics: dict[str, float] = {}
    pooled_meteor: list[float] = []
    scopes = {source: [i for i, s in enumerate(sources) if s == source] for source in dict.fromkeys(sources)}
    for scope, indices in [*scopes.items(), (OVERALL, list(range(len(sources))))]:
        chosen = [completions[i] for i in indices]
        if scope == OVERALL:
            meteor = pooled_meteor
        else:
            nonempty = [c for c in chosen if c.text.strip()]
            meteor = meteor_pair_scores([c.text for c in nonempty], [c.prompt for c in nonempty], meteor_pairs, seed)
            pooled_meteor += meteor
        meteor_mean, meteor_ci = mean_and_ci95(meteor)
        values = {
            "reward/mean": np.mean([c.reward for c in chosen]),
            "diversity/meteor_similarity": meteor_mean,
            "diversity/meteor_similarity_ci95": meteor_ci,
            **{name: np.mean([values[i] for i in indices]) for name, values in kl.items()},
            "completion/length_tokens_mean": np.mean([c.num_tokens for c in chosen]),
            "prompts": len(indices),
        }
        heldout = [c.heldout_reward for c in chosen]
        if not all(math.isnan(value) for value in heldout):
            values["heldout_reward/mean"] = np.mean(heldout)
        metrics.update({eval_metric(name, scope): float(value) for name, value in values.items()})
    return metrics


def completion_table(step: int, completions: list[Completion], sources: list[str],
                     kl: dict[str, list[float]]) -> pd.DataFrame:
    """One row per test prompt: its completion, rewards and per-completion KL values."""
    return pd.DataFrame([
        {"step": step, "source": source, "prompt": c.prompt, "completion": c.text, "reward": c.reward,
         "heldout_reward": c.heldout_reward, **{name: values[i] for name, values in kl.items()},
         "num_tokens": c.num_tokens}
        for i, (c, source) in enumerate(zip(completions, sources, strict=True))
    ])


class PolicyEvaluator:
    """Samples, scores and measures a policy on the run's evaluation prompts; logs under ``eval/``."""

    def __init__(self, config: RunConfig, tokenizer: PreTrainedTokenizerBase, reward_scorer: RewardScorer,
                 heldout_scorer: RewardScorer | None, device: torch.device) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.reward_scorer = reward_scorer
        self.heldout_scorer = heldout_scorer
        self.device = device
        self.prompts = evaluation_prompts(config)

    def evaluate(self, policy: PreTrainedModel, reference_logits: ReferenceLogits | None, tracker, step: int,
                 send: bool = True) -> dict[str, float]:
        """One completion per prompt; ``reference_logits`` None means the policy is the starting policy (KL 0).

        ``send=False`` (a resumed run re-running a step MLflow already holds) keeps the results out of MLflow.
        """
        run, settings = self.config, self.config.eval.sampling
        completions = sample_completions(policy, self.tokenizer, self.prompts.prompts, 1, settings,
                                         run.eval.batch_size, self.device, run.precision, run.eval.cut,
                                         progress="evaluation")
        score_completions(completions, run.eval.reward_input, self.reward_scorer, self.heldout_scorer)
        if reference_logits is None:
            kl_token = kl_sequence = [0.0] * len(completions)
        else:
            kl_token, kl_sequence = completion_kl(self.tokenizer, policy, reference_logits, completions,
                                                  settings.conversation_prompt, run.eval.batch_size, self.device,
                                                  run.precision)
        kl = {"kl": kl_token, "kl_sequence": kl_sequence}
        metrics = evaluation_metrics(completions, self.prompts.sources, kl, run.eval.meteor_pairs_per_source,
                                     run.eval.seed)
        tracker.log_metrics(metrics, step=step, send=send)
        if send:
            log_evaluation_table(tracker, completion_table(step, completions, self.prompts.sources, kl), step)
        return metrics


def log_evaluation_table(tracker, table: pd.DataFrame, step: int) -> None:
    tracker.log_table(table, artifact_file=f"eval/completions_step_{step}.json")


def save_policy_artifact(tracker, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """The trained policy (adapter weights only with LoRA) as the run's ``policy`` artifact; returns its URI."""
    with tempfile.TemporaryDirectory() as folder:
        policy.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        tracker.log_artifacts(folder, POLICY_ARTIFACT)
    uri = f"runs:/{tracker.run_id}/{POLICY_ARTIFACT}"
    tracker.set_tag("superhf_lab.policy_uri", uri)
    return uri


def load_policy_to_evaluate(config: RunConfig, device: torch.device):
    """``eval.policy`` (hub name, folder or MLflow artifact URI) and a function giving the starting policy's logits.

    A LoRA adapter is applied to ``model``, and the reference is the same model with the adapter disabled.
    """
    start, tokenizer = load_policy(config.model, device)
    if config.eval.policy is None:
        return start, tokenizer, None
    location = config.eval.policy
    if location.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        try:
            location = mlflow.artifacts.download_artifacts(artifact_uri=location)
        except Exception as error:  # MLflow raises several types for a bad run id or path
            raise ConfigError(
                f"eval.policy={config.eval.policy!r} could not be downloaded ({str(error).splitlines()[0]}). Use the "
                "runs:/<run_id>/policy URI that a training run tags as superhf_lab.policy_uri"
            ) from None
    if (Path(location) / "adapter_config.json").is_file():
        from peft import PeftModel

        policy = PeftModel.from_pretrained(start, location).to(device)

        def adapter_disabled_logits(**inputs: torch.Tensor) -> torch.Tensor:
            with policy.disable_adapter():
                return policy(**inputs).logits

        return policy, tokenizer, adapter_disabled_logits
    policy, _ = load_policy(ModelConfig(name_or_path=location), device, key="eval.policy")
    start.eval().requires_grad_(False)
    return policy, tokenizer, lambda **inputs: start(**inputs).logits
