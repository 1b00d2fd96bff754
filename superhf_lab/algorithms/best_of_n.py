"""Best-of-N: sample N completions per prompt from the starting policy, keep the one the reward model
scores highest. No training; the inference-time baseline the paper's authors compare SuperHF against.

It runs on the evaluation prompts with the evaluation's sampling settings and is measured like any
evaluated policy (``eval/<source>/...``). Its KL to the starting policy has a closed form for the
sequence distribution, ``log N - (N - 1) / N`` (Stiennon et al. 2020, appendix), logged as
``kl_sequence``; there is no per-token KL, so ``kl`` is not logged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from superhf_lab.completions import Completion, score_completions
from superhf_lab.config import require
from superhf_lab.evaluation import (
    EVAL_METRIC_NAMES,
    OVERALL,
    completion_table,
    eval_metric,
    evaluation_metrics,
    evaluation_prompts,
    log_evaluation_table,
)
from superhf_lab.models import load_policy
from superhf_lab.registry import RunContext, register_algorithm
from superhf_lab.rewards import build_scorers
from superhf_lab.sampling import sample_completions

# The evaluation's overall numbers are also logged under the training names, to overlay in MLflow charts.
SHARED_NAMES = ("reward/mean", "heldout_reward/mean", "diversity/meteor_similarity", "completion/length_tokens_mean")
METRIC_NAMES = (*SHARED_NAMES, "kl_sequence", *(eval_metric(name) for name in EVAL_METRIC_NAMES))


@dataclass
class BestOfNConfig:
    name: str = "best_of_n"
    n: int = 16  # completions sampled per prompt
    minibatch_size_scoring: int = 32

    def check(self) -> None:
        require(self.n >= 1, "algorithm.n", self.n, "sample at least 1 completion per prompt")
        require(self.minibatch_size_scoring > 0, "algorithm.minibatch_size_scoring", self.minibatch_size_scoring,
                "use a positive integer")


def best_per_prompt(completions: list[Completion]) -> list[Completion]:
    """The highest-reward completion of each prompt, in prompt order (ties: the first sampled)."""
    best: dict[int, Completion] = {}
    for completion in completions:
        current = best.get(completion.prompt_index)
        if current is None or completion.reward > current.reward:
            best[completion.prompt_index] = completion
    return [best[index] for index in sorted(best)]


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) over whole sequences: log n - (n - 1) / n."""
    return math.log(n) - (n - 1) / n


@register_algorithm("best_of_n", BestOfNConfig, METRIC_NAMES)
def run_best_of_n(context: RunContext) -> None:
    run, cfg = context.config, context.algorithm
    prompts = evaluation_prompts(run)
    policy, tokenizer = load_policy(run.model, context.device)
    scorer, heldout = build_scorers(run, context.device, cfg.minibatch_size_scoring)
    samples = sample_completions(policy, tokenizer, prompts.prompts, cfg.n, run.eval.sampling, run.eval.batch_size,
                                 context.device, run.precision, progress=f"best-of-{cfg.n} sampling")
    score_completions(samples, scorer, heldout)
    chosen = best_per_prompt(samples)
    kl_sequence = [best_of_n_kl(cfg.n)] * len(chosen)
    metrics = evaluation_metrics(chosen, prompts.sources, None, kl_sequence, run.eval.meteor_pairs_per_source, run.seed)
    shared = {name: metrics[eval_metric(name, OVERALL)] for name in SHARED_NAMES if eval_metric(name, OVERALL) in metrics}
    context.tracker.log_metrics({**metrics, **shared, "kl_sequence": kl_sequence[0]}, step=0)
    log_evaluation_table(context.tracker, completion_table(0, chosen, prompts.sources, kl_sequence), step=0)
