"""Best-of-N: sample N completions per prompt from the starting policy, keep the one the reward model
scores highest. No training; the inference-time baseline the paper's authors compare SuperHF against.

It runs on the evaluation prompts with the evaluation's sampling settings and is measured like any
evaluated policy (``eval/<source>/...``), except for KL: best-of-N is no distribution over tokens, and
``log N - (N - 1) / N`` (Stiennon et al. 2020, appendix) is an upper bound on its sequence-level KL to the
starting policy (Beirami et al. 2024, arXiv 2401.01879), so it is logged as ``kl_sequence_bound`` and never
as ``kl`` or ``kl_sequence``. ``diversity/meteor_similarity_within_prompt`` measures the N samples per
prompt (seeded pairs, ``eval.meteor_pairs_per_source`` per source).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from superhf_lab.algorithms.registry import register_algorithm
from superhf_lab.core.errors import require
from superhf_lab.metrics.diversity import pairs_within_prompts, symmetric_meteor
from superhf_lab.training.completions import Completion, score_completions
from superhf_lab.training.context import RunContext
from superhf_lab.training.evaluation import (
    BOUND_METRIC_NAMES,
    SHARED_NAMES,
    completion_table,
    evaluation_metric_names,
    evaluation_metrics,
    evaluation_prompts,
    log_evaluation_table,
    shared_view,
)
from superhf_lab.training.models import load_policy
from superhf_lab.training.rewards import build_scorers
from superhf_lab.training.sampling import sample_completions

METRIC_NAMES = (
    *SHARED_NAMES,
    *BOUND_METRIC_NAMES,
    "diversity/meteor_similarity_within_prompt",
    *evaluation_metric_names(BOUND_METRIC_NAMES),
)


@dataclass
class BestOfNConfig:
    name: str = field(default="best_of_n", metadata={"help": "the algorithm plugin (algorithm=best_of_n)"})
    n: int = field(
        default=16, metadata={"help": "completions sampled per prompt (with eval.sampling), the best-scored one kept"}
    )
    minibatch_size_scoring: int = field(default=32, metadata={"help": "completions per reward-model forward"})

    def check(self) -> None:
        require(self.n >= 1, "algorithm.n", self.n, "sample at least 1 completion per prompt")
        require(
            self.minibatch_size_scoring > 0,
            "algorithm.minibatch_size_scoring",
            self.minibatch_size_scoring,
            "use a positive integer",
        )


def best_per_prompt(completions: list[Completion]) -> list[Completion]:
    """The highest-reward completion of each prompt, in prompt order (ties: the first sampled)."""
    best: dict[int, Completion] = {}
    for completion in completions:
        current = best.get(completion.prompt_index)
        if current is None or completion.reward > current.reward:
            best[completion.prompt_index] = completion
    return [best[index] for index in sorted(best)]


def best_of_n_kl_bound(n: int) -> float:
    """Upper bound on KL(best-of-n || base) over whole sequences: log n - (n - 1) / n."""
    return math.log(n) - (n - 1) / n


def within_prompt_meteor(samples: list[Completion], sources: list[str], pairs_per_source: int, seed: int) -> float:
    """Mean symmetric METEOR of seeded pairs of non-empty samples to the same prompt, ``pairs_per_source`` per source
    (``sources[i]`` is the source of prompt i)."""
    rng, scores = random.Random(seed), []
    for source in dict.fromkeys(sources):
        of_source = [c for c in samples if sources[c.prompt_index] == source and c.text.strip()]
        pairs = pairs_within_prompts([c.prompt for c in of_source])
        pairs = pairs if len(pairs) <= pairs_per_source else rng.sample(pairs, pairs_per_source)
        scores += symmetric_meteor([c.text for c in of_source], pairs)
    return sum(scores) / len(scores) if scores else math.nan


@register_algorithm("best_of_n", BestOfNConfig, METRIC_NAMES)
def run_best_of_n(context: RunContext) -> None:
    run, cfg = context.config, context.algorithm
    prompts = evaluation_prompts(run)
    policy, tokenizer = load_policy(run.model, context.device)
    scorer, heldout = build_scorers(run, context.device, cfg.minibatch_size_scoring)
    samples = sample_completions(
        policy,
        tokenizer,
        prompts.prompts,
        cfg.n,
        run.eval.sampling,
        run.eval.batch_size,
        context.device,
        run.precision,
        run.eval.cut,
        progress=f"best-of-{cfg.n} sampling",
        processes=context.processes,
    )
    score_completions(samples, run.eval.reward_input, scorer, heldout)
    samples = context.processes.gather(samples)
    chosen = best_per_prompt(samples)
    kl = {"kl_sequence_bound": [best_of_n_kl_bound(cfg.n)] * len(chosen)}
    metrics = evaluation_metrics(chosen, prompts.sources, kl, run.eval.meteor_pairs_per_source, run.eval.seed)
    within = within_prompt_meteor(samples, prompts.sources, run.eval.meteor_pairs_per_source, run.eval.seed)
    context.tracker.log_metrics(
        {
            **metrics,
            **shared_view(metrics),
            "kl_sequence_bound": kl["kl_sequence_bound"][0],
            "diversity/meteor_similarity_within_prompt": within,
        },
        step=0,
    )
    log_evaluation_table(context.tracker, completion_table(0, chosen, prompts.sources, kl), step=0)
