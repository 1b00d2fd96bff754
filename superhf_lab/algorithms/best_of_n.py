"""Best-of-N: sample N completions per prompt from the starting policy, keep the one the reward model
scores highest. No training; the inference-time baseline the paper's authors compare SuperHF against.

It runs on the evaluation prompts with the evaluation's sampling settings and is measured like any
evaluated policy (``eval/<source>/...``), except for KL: best-of-N is no distribution over tokens, and
``log N - (N - 1) / N`` (Stiennon et al. 2020, appendix) is an upper bound on its sequence-level KL to the
starting policy (Beirami et al. 2024, arXiv 2401.01879), so it is logged as ``kl_sequence_bound`` and never
as ``kl`` or ``kl_sequence``. ``diversity/meteor_similarity_within_prompt`` measures the N samples per
prompt (seeded pairs, ``eval.meteor_pairs_per_source`` per source).

The whole best-of-n curve comes from one pool of ``pool`` samples per prompt: for n = 1, 2, 4, ... pool, the
expected proxy and gold reward of the proxy's favourite among n drawn from the pool without replacement (exact, over
all subsets: :func:`~superhf_lab.metrics.overoptimisation.best_of_n_curve`), logged as the over-optimisation path at
step log2(n), then fitted with Gao et al.'s best-of-n form. The evaluated best-of-N keeps the favourite among each
prompt's first N samples: one real draw, whose completions are logged.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np

from superhf_lab.algorithms.registry import register_algorithm
from superhf_lab.core.errors import require
from superhf_lab.metrics.diversity import pairs_within_prompts, symmetric_meteor
from superhf_lab.metrics.overoptimisation import (
    FIT_NAMES,
    PATH_NAMES,
    PEAK_NAMES,
    best_of_n_curve,
    best_of_n_kl,
    path_fit,
    path_point,
)
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
    *PATH_NAMES,
    *FIT_NAMES,
    *PEAK_NAMES,
    "best_of_n/n",
)


@dataclass
class BestOfNConfig:
    name: str = field(default="best_of_n", metadata={"help": "the algorithm plugin (algorithm=best_of_n)"})
    n: int = field(
        default=16, metadata={"help": "the evaluated best-of-N: the best-scored of each prompt's first N samples"}
    )
    pool: int = field(
        default=64,
        metadata={
            "help": "completions sampled per prompt (with eval.sampling): the best-of-n curve for n = 1, 2, 4, ..."
        },
    )
    minibatch_size_scoring: int = field(default=32, metadata={"help": "completions per reward-model forward"})

    def check(self) -> None:
        require(self.n >= 1, "algorithm.n", self.n, "sample at least 1 completion per prompt")
        require(self.pool >= self.n, "algorithm.pool", self.pool, f"sample at least algorithm.n={self.n} per prompt")
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
    pool = sample_completions(
        policy,
        tokenizer,
        prompts.prompts,
        cfg.pool,
        run.eval.sampling,
        run.eval.batch_size,
        context.device,
        run.precision,
        run.eval.cut,
        progress=f"best-of-n pool of {cfg.pool}",
        processes=context.processes,
    )
    score_completions(pool, run.eval.reward_input, scorer, heldout)
    pool = context.processes.gather(pool)
    log_curve(context.tracker, pool)
    samples = first_per_prompt(pool, cfg.n)
    chosen = best_per_prompt(samples)
    kl = {"kl_sequence_bound": [best_of_n_kl(cfg.n)] * len(chosen)}
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


def first_per_prompt(pool: list[Completion], n: int) -> list[Completion]:
    """Each prompt's first n samples: n independent draws, as sampling n alone would give."""
    taken: dict[int, int] = {}
    kept = []
    for completion in pool:
        if taken.get(completion.prompt_index, 0) < n:
            taken[completion.prompt_index] = taken.get(completion.prompt_index, 0) + 1
            kept.append(completion)
    return kept


def log_curve(tracker, pool: list[Completion]) -> None:
    """The best-of-n curve as the run's over-optimisation path (step log2 n), then its best-of-n fit."""
    by_prompt: dict[int, list[Completion]] = {}
    for completion in pool:
        by_prompt.setdefault(completion.prompt_index, []).append(completion)
    pools = [
        (np.array([c.reward for c in samples]), np.array([c.heldout_reward for c in samples]))
        for samples in by_prompt.values()
    ]
    for step, point in enumerate(best_of_n_curve(pools)):
        tracker.log_metrics({**path_point(point["kl"], point["gold"], point["proxy"]), "best_of_n/n": point["n"]}, step)
    tracker.log_metrics(path_fit(tracker.history, "best_of_n"), step=step)
