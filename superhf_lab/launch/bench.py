"""``make bench``: where a superbatch's time goes on the tiny world, as ratios measured in one run, as one JSON line.

- ``superbatch``: each phase's share of a superbatch's wall time (generation, scoring, fine-tuning, and the metric
  bookkeeping on the training loop's path), with METEOR and distinct-n computed inline and then in the
  background as training runs them, and throughput;
- ``generation``: generated tokens per kept token, with generation stopping at the cut (now) and without (before);
  ``tiny_world`` and ``pythia_160m_shape``: transformers' ``generate()`` against the lean sampling loop on the same
  prompts and seeds (their ``speedup``, and whether they drew the same completions), on the tiny policy and on a
  random-weight policy of Pythia-160M's shape;
- ``evaluation``: what evaluating on the test prompts costs a SuperHF run: one evaluation's seconds (after a warm-up)
  against the superbatch's, and the share of a run of the configured length spent evaluating, at the default
  ``eval.every_n_steps`` (0: only at the end) and every 10 steps (the frontier's) and every step;
- ``flops``: the model FLOP/s that generation and fine-tuning achieve (FLOPs counted by torch's ``FlopCounterMode`` on
  one pass, then the same pass, same seed, timed) against this machine's float32 matmul peak, measured in the run;
- ``reference``: with ``SUPERHF_REFERENCE_SRC`` set (see :mod:`superhf_lab.launch.reference_bench`), seconds per
  superbatch of the reference trainer (openfeedback/superhf), unmodified, and of this lab's trainer with its
  metrics, at the same settings (LoRA, ``kl_coef`` 0.1), in the same run, and their ratio; skipped, saying why,
  otherwise;
- ``meteor``: the superbatch's METEOR similarity pairs, :class:`superhf_lab.metrics.meteor.MeteorTexts` against nltk;
- ``algorithms`` (``--algorithms``): seconds per 1,000 completions (preference pairs for DPO and FeedME) of each
  algorithm on the tiny world at the same 32 per step, and the ratio to SuperHF;
- ``processes`` (``--processes``): SuperHF's completions per second on 1 process and on 2 (torchrun, CPU, gloo),
  with DDP and with FSDP2.

Throughput, not a test: compare numbers across commits on the same machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace

import mlflow
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, set_seed

from superhf_lab.algorithms.registry import get_algorithm
from superhf_lab.config.schema import MlflowConfig
from superhf_lab.launch.compose import compose_run_config, validate_config
from superhf_lab.launch.reference_bench import reference_seconds
from superhf_lab.metrics.bookkeeping import Bookkeeping
from superhf_lab.metrics.meteor import benchmark_against_nltk
from superhf_lab.tiny_world import ensure_tiny_world
from superhf_lab.tracking.store import check_tracking_store
from superhf_lab.tracking.tracker import tracked_run
from superhf_lab.training.context import RunContext
from superhf_lab.training.evaluation import PolicyEvaluator
from superhf_lab.training.models import resolve_device
from superhf_lab.training.sampling import sample_completions
from superhf_lab.training.sequences import completion_token_ids

PHASES = ("generation_s", "scoring_s", "finetuning_s")
# Per algorithm: the overrides for 7 steps of 32 completions (or pairs) each; the first WARM_UP_STEPS warm up
# (kernels, caches, and WordNet loading in the background while step 1 runs).
ALGORITHM_RUNS = {
    "superhf": ["algorithm.num_superbatches=7", "algorithm.warmup_superbatches=0"],
    "ppo": ["algorithm.num_updates=7"],
    "grpo": ["algorithm.num_steps=7"],
    "rloo": ["algorithm.num_steps=7"],
    "dpo": ["algorithm.num_steps=7"],
    "feedme": ["algorithm.num_steps=7"],
}
WARM_UP_STEPS = 2
# The settings both trainers run at in the ``reference`` section: the reference's KL term needs LoRA adapters.
REFERENCE_SETTINGS = ["algorithm.lora.enabled=true", "kl_coef=0.1"]


def superbatch_phases(trainer, stream, context: RunContext, superbatches: int) -> dict:
    """Time ``superbatches`` superbatches as the training loop runs them (``trainer.run_step``, after a
    warm-up), first with the diversity metrics computed inline, then in the background: each phase's share of the
    wall time, per mode."""
    result = {"superbatches": superbatches}
    step = 0
    for mode, background in (("inline", False), ("background", True)):
        totals = dict.fromkeys((*PHASES, "bookkeeping_s", "wall_s"), 0.0)
        completions_count = generated = kept_tokens = finetuning_tokens = 0
        with Bookkeeping(context.tracker, background) as bookkeeping:
            for superbatch in range(superbatches + (mode == "inline")):
                started = time.perf_counter()
                metrics, completions, kept = trainer.run_step(step, stream, context, bookkeeping)
                finished, step = time.perf_counter(), step + 1
                if mode == "inline" and superbatch == 0:
                    continue  # warm-up: allocator, kernels, tokenizer and WordNet caches
                for phase in PHASES:
                    totals[phase] += metrics[f"time/{phase}"]
                totals["bookkeeping_s"] += finished - started - sum(metrics[f"time/{phase}"] for phase in PHASES)
                totals["wall_s"] += finished - started
                completions_count += len(completions)
                generated += sum(c.generated_tokens for c in completions)
                kept_tokens += sum(c.num_tokens for c in completions)
                finetuning_tokens += sum(
                    sum(
                        map(
                            len,
                            completion_token_ids(trainer.tokenizer, trainer.config.conversation_prompt, completions[i]),
                        )
                    )
                    for i in kept
                )
        wall = totals["wall_s"]
        result[mode] = {
            "seconds_per_superbatch": round(wall / superbatches, 4),
            **{
                f"share_{name.removesuffix('_s')}": round(seconds / wall, 4)
                for name, seconds in totals.items()
                if name != "wall_s"
            },
            "completions_per_s": round(completions_count / totals["generation_s"], 2),
            "generated_tokens_per_s": round(generated / totals["generation_s"], 1),
            "finetuning_tokens_per_s": round(finetuning_tokens / totals["finetuning_s"], 1),
            "generated_tokens_per_kept_token": round(generated / max(kept_tokens, 1), 4),
        }
    return result


@contextlib.contextmanager
def bench_context(overrides: list[str]) -> Iterator[RunContext]:
    """A run context to build trainers in: the validated config, its device, a throwaway MLflow run (the loop logs as
    in a run)."""
    cfg = compose_run_config(overrides)
    cfg.output_dir = "outputs/bench"
    config = validate_config(cfg)
    ensure_tiny_world(config.tiny_world.dir)
    set_seed(config.seed)
    device = resolve_device(config.device, config.precision)
    with tempfile.TemporaryDirectory() as folder:
        check_tracking_store(MlflowConfig(tracking_uri=f"sqlite:///{folder}/bench.db", experiment_name="bench"))
        with tracked_run(cfg, {}, "bench", folder) as tracker:
            yield RunContext(config, tracker, device)


def against_reference(overrides: list[str], superbatches: int) -> dict:
    """Seconds per superbatch of the reference trainer and of this lab's (its metrics in the background, as
    training runs them) at the same settings, and how many times faster this lab's is."""
    same = [*overrides, *REFERENCE_SETTINGS]
    reference = reference_seconds(same, superbatches)
    if "skipped" in reference:
        return reference
    with bench_context(same) as context:
        trainer, stream = get_algorithm("superhf").build(context)
        ours = superbatch_phases(trainer, stream, context, superbatches)["background"]["seconds_per_superbatch"]
    return {
        "settings": REFERENCE_SETTINGS,
        "reference_seconds_per_superbatch": reference["seconds_per_superbatch"],
        "superhf_lab_seconds_per_superbatch": ours,
        "speedup": round(reference["seconds_per_superbatch"] / ours, 2),
    }


def evaluation_cost(trainer, context: RunContext, seconds_per_superbatch: float, rounds: int = 2) -> dict:
    """Seconds per evaluation of the trainer's current policy (the mean of ``rounds``, after a warm-up) and the share
    of a run's time its evaluations take at several ``eval.every_n_steps``, from the measured superbatch. A tracing
    run also evaluates its start; the last step is evaluated once, due or not (``eval.at_end``)."""
    config = context.config
    evaluator = PolicyEvaluator(
        config, trainer.tokenizer, trainer.reward_scorer, trainer.heldout_scorer, context.device, context.processes
    )
    evaluator.evaluate(trainer.policy, trainer.starting, context.tracker, 0)
    started = time.perf_counter()
    for round_ in range(rounds):
        evaluator.evaluate(trainer.policy, trainer.starting, context.tracker, round_ + 1)
    seconds = (time.perf_counter() - started) / rounds
    steps, at_end = trainer.total_steps(), config.eval.at_end
    shares = {}
    for every in sorted({config.eval.every_n_steps, 1, 10}):
        count = int(at_end) if every == 0 else 1 + steps // every + int(at_end and steps % every != 0)
        shares[f"share_every_{every}"] = round(count * seconds / (steps * seconds_per_superbatch + count * seconds), 4)
    return {
        "seconds_per_evaluation": round(seconds, 3),
        "test_prompts": len(evaluator.prompts.sources),
        "superbatches": steps,
        "default_every_n_steps": config.eval.every_n_steps,
        **shares,
    }


def generation_saving(trainer, prompts: list[str], rounds: int = 2) -> dict:
    """Generated tokens per kept token, and seconds (the best of ``rounds``, alternating), with generation stopping
    at the cut and without, on the same prompts and seeds."""
    result = {}
    for _ in range(rounds):
        for name, stop in (("stop_at_cut", True), ("without_stop", False)):
            torch.manual_seed(0)
            started = time.perf_counter()
            completions = trainer.generate(prompts, stop_at_cut=stop)
            seconds = round(time.perf_counter() - started, 3)
            result[f"{name}_s"] = min(seconds, result.get(f"{name}_s", seconds))
            kept = sum(c.num_tokens for c in completions)
            result[f"{name}_generated_tokens_per_kept_token"] = round(
                sum(c.generated_tokens for c in completions) / max(kept, 1), 4
            )
    return result


def sampler_speedup(
    policy,
    tokenizer,
    prompts: list[str],
    per_prompt: int,
    settings,
    batch: int,
    device,
    precision: str,
    cut: str,
    rounds: int = 5,
) -> dict:
    """Seconds of transformers' ``generate()`` and of the lean loop on the same prompts and seeds (the best of
    ``rounds``), whether they drew the same completions, and the lean loop's speedup: the median of the rounds'
    paired ratios (the two timed back to back, in alternating order), with their range, as this machine's speed
    drifts by tens of percent within minutes and a ratio of two minima can pair a fast moment with a slow one."""
    seconds: dict[str, list[float]] = {"generate": [], "lean": []}
    drawn: dict[str, list] = {}
    for round_ in range(rounds):
        for sampler in ("generate", "lean") if round_ % 2 == 0 else ("lean", "generate"):
            torch.manual_seed(0)
            started = time.perf_counter()
            completions = sample_completions(
                policy,
                tokenizer,
                prompts,
                per_prompt,
                replace(settings, sampler=sampler),
                batch,
                device,
                precision,
                cut,
            )
            seconds[sampler].append(time.perf_counter() - started)
            drawn[sampler] = [(c.text, c.generated_tokens) for c in completions]
    ratios = [slow / fast for slow, fast in zip(seconds["generate"], seconds["lean"])]
    return {
        "generate_s": round(min(seconds["generate"]), 3),
        "lean_s": round(min(seconds["lean"]), 3),
        "speedup": round(statistics.median(ratios), 2),
        "speedup_range": [round(min(ratios), 2), round(max(ratios), 2)],
        "rounds": rounds,
        "identical": drawn["generate"] == drawn["lean"],
    }


def matmul_peak(size: int = 1024, repeats: int = 10, rounds: int = 5) -> float:
    """This machine's float32 matmul FLOP/s with torch's threads: the best of ``rounds`` timings of ``repeats``
    products of two ``size`` x ``size`` matrices (2 size^3 FLOPs each), after a warm-up."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best = math.inf
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, (time.perf_counter() - started) / repeats)
    return 2 * size**3 / best


def counted_and_timed(work):
    """FLOPs of ``work()`` (``FlopCounterMode``: matmuls and convolutions, which is a model's arithmetic), the
    seconds of the same call, untraced, and its result; both start from seed 0, so a sampling call draws the same
    tokens."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    with FlopCounterMode(display=False) as counter:
        work()
    torch.manual_seed(0)
    started = time.perf_counter()
    result = work()
    return counter.get_total_flops(), time.perf_counter() - started, result


def model_flop_rates(trainer, prompts: list[str]) -> dict:
    """Generation's and fine-tuning's achieved FLOP/s on one superbatch, and their share of the matmul peak."""
    from superhf_lab.algorithms.superhf_trainer import select_top_k

    peak = matmul_peak()
    generation_flops, generation_s, completions = counted_and_timed(lambda: trainer.generate(prompts))
    trainer.score(completions)
    cfg = trainer.config
    kept = [completions[i] for i in select_top_k(completions, cfg.top_k, cfg.length_penalty, cfg.length_penalty_form)]
    finetuning_flops, finetuning_s, _ = counted_and_timed(lambda: trainer.finetune(kept))
    result = {"matmul_peak_gflop_per_s": round(peak / 1e9, 2)}
    for phase, flops, seconds in (
        ("generation", generation_flops, generation_s),
        ("finetuning", finetuning_flops, finetuning_s),
    ):
        result[phase] = {
            "gflops": round(flops / 1e9, 3),
            "seconds": round(seconds, 4),
            "gflop_per_s": round(flops / seconds / 1e9, 2),
            "share_of_peak": round(flops / seconds / peak, 4),
        }
    return result


def pythia_160m_sampling(tokenizer, prompts: list[str], settings, device, precision: str, cut: str) -> dict:
    """:func:`sampler_speedup` on a random-weight policy of Pythia-160M's shape (hidden 768, 12 layers, its
    vocabulary size), where the arithmetic, not the loop, dominates: 4 prompts x 2 completions of 32 tokens."""
    config = GPTNeoXConfig(
        vocab_size=50304,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=2048,
        rotary_pct=0.25,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    policy = GPTNeoXForCausalLM(config).to(device).eval()
    return sampler_speedup(
        policy, tokenizer, prompts[:4], 2, replace(settings, max_new_tokens=32), 8, device, precision, cut, rounds=3
    )


def seconds_per_1000(
    folder: str,
    label: str,
    algorithm: str,
    overrides: list[str],
    launcher: tuple[str, ...] = (sys.executable,),
    env: dict[str, str] | None = None,
) -> float:
    """Seconds per 1,000 completions (pairs) of one run over the steps after its warm-up, from its logged history."""
    uri = f"sqlite:///{folder}/bench.db"
    finished = subprocess.run(
        [
            *launcher,
            "-m",
            "superhf_lab",
            f"algorithm={algorithm}",
            *ALGORITHM_RUNS[algorithm],
            *overrides,
            "eval.at_end=false",
            f"mlflow.tracking_uri={uri}",
            f"mlflow.run_name={label}",
            "mlflow.experiment_name=bench",
            f"hydra.run.dir={folder}/{label}",
            f"checkpoint.dir={folder}/ckpt-{label}",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if finished.returncode != 0:
        raise SystemExit(f"bench run {label} failed:\n{finished.stderr[-2000:]}")
    client = mlflow.MlflowClient(uri)
    run = client.search_runs(
        [client.get_experiment_by_name("bench").experiment_id], filter_string=f"attributes.run_name = '{label}'"
    )[0]
    steps = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "time/step_s")}
    progress = "progress/prompts_seen" if algorithm in ("dpo", "feedme") else "progress/completions_generated"
    done = {m.step: m.value for m in client.get_metric_history(run.info.run_id, progress)}
    timed = [step for step in sorted(steps) if step >= WARM_UP_STEPS]
    per_step = (done[timed[-1]] - done[WARM_UP_STEPS - 1]) / len(timed)
    return sum(steps[step] for step in timed) / (per_step * len(timed)) * 1000


def algorithm_costs(names: list[str], overrides: list[str]) -> dict:
    """Seconds per 1,000 completions (pairs) of each algorithm over the steps after its warm-up, and ratios."""
    with tempfile.TemporaryDirectory() as folder:
        seconds = {name: seconds_per_1000(folder, name, name, overrides) for name in names}
    base = seconds.get("superhf")
    return {
        name: {"seconds_per_1000": round(value, 2), "vs_superhf": round(value / base, 3) if base else None}
        for name, value in seconds.items()
    }


def process_scaling(overrides: list[str]) -> dict:
    """SuperHF's completions per second in one process and in two (DDP, then FSDP2, on CPU with gloo: the documented
    torchrun commands), at the same global superbatch. torchrun gives each process one thread unless OMP_NUM_THREADS
    is set."""
    two = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    with tempfile.TemporaryDirectory() as folder:
        one_s = seconds_per_1000(folder, "one_process", "superhf", [*overrides, "device=cpu"])
        two_s = seconds_per_1000(
            folder, "two_processes", "superhf", [*overrides, "device=cpu", "distributed=ddp"], two, env
        )
        fsdp_s = seconds_per_1000(
            folder, "two_processes_fsdp", "superhf", [*overrides, "device=cpu", "distributed=fsdp"], two, env
        )
    return {
        "one_process_completions_per_s": round(1000 / one_s, 1),
        "two_processes_completions_per_s": round(1000 / two_s, 1),
        "speedup": round(one_s / two_s, 3),
        "two_processes_fsdp_completions_per_s": round(1000 / fsdp_s, 1),
        "torch_threads_per_process": {"one": torch.get_num_threads(), "two": int(env.get("OMP_NUM_THREADS", 1))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--superbatches", type=int, default=5, help="timed superbatches, after one warm-up")
    parser.add_argument(
        "--algorithms",
        default="superhf,ppo,grpo,rloo,dpo,feedme",
        help="algorithms to compare in seconds per 1,000 completions ('' skips the comparison)",
    )
    parser.add_argument(
        "--processes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time SuperHF on 2 processes (torchrun, CPU) against 1",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for run.py")
    args = parser.parse_args()

    with bench_context(args.overrides) as context:
        config, device = context.config, context.device
        trainer, stream = get_algorithm("superhf").build(context)
        phases = superbatch_phases(trainer, stream, context, args.superbatches)
        evaluation = evaluation_cost(trainer, context, phases["background"]["seconds_per_superbatch"])
        generation = generation_saving(trainer, stream.take(config.algorithm.prompt_accumulation_steps))
        algorithm, cut = config.algorithm, config.text.cut
        prompts = stream.take(algorithm.prompt_accumulation_steps)
        generation["tiny_world"] = sampler_speedup(
            trainer.policy,
            trainer.tokenizer,
            prompts,
            algorithm.superbatch_size,
            algorithm.sampling,
            algorithm.minibatch_size_generating,
            device,
            config.precision,
            cut,
        )
        generation["pythia_160m_shape"] = pythia_160m_sampling(
            trainer.tokenizer, stream.take(4), algorithm.sampling, device, config.precision, cut
        )
        flops = model_flop_rates(trainer, stream.take(algorithm.prompt_accumulation_steps))
        texts = [c.text for c in trainer.generate(stream.take(config.algorithm.prompt_accumulation_steps))]
    meteor = benchmark_against_nltk(texts)
    reference = against_reference(args.overrides, args.superbatches)
    names = [name for name in args.algorithms.split(",") if name]
    print(
        json.dumps(
            {
                "benchmark": "superhf_lab",
                "superbatch": phases,
                "evaluation": evaluation,
                "generation": generation,
                "flops": flops,
                "reference": reference,
                "meteor": {
                    "pairs": meteor["pairs"],
                    "nltk_s": round(meteor["nltk_s"], 4),
                    "fast_s": round(meteor["meteor_texts_s"], 4),
                    "speedup": round(meteor["speedup"], 1),
                    "identical": meteor["identical"],
                },
                "algorithms": algorithm_costs(names, args.overrides) if names else {},
                "processes": process_scaling(args.overrides) if args.processes else {},
                "device": str(device),
                "torch_threads": torch.get_num_threads(),
                "machine": platform.machine(),
            }
        )
    )
