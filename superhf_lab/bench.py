"""``make bench``: time one SuperHF superbatch's phases on the tiny world; prints one JSON line.

Throughput, not a test: compare numbers across commits on the same machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile

import torch
from transformers import set_seed

from superhf_lab.config import MlflowConfig, compose_run_config, validate_config
from superhf_lab.models import resolve_device
from superhf_lab.plugin import RunContext
from superhf_lab.registry import get_algorithm
from superhf_lab.sequences import completion_token_ids
from superhf_lab.tiny_world import ensure_tiny_world
from superhf_lab.tracking import check_tracking_store, tracked_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--superbatches", type=int, default=3, help="timed superbatches, after one warm-up")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for run.py")
    args = parser.parse_args()

    cfg = compose_run_config(args.overrides)
    cfg.output_dir = "outputs/bench"
    config = validate_config(cfg)
    ensure_tiny_world(config.tiny_world.dir)
    set_seed(config.seed)
    device = resolve_device(config.device, config.precision)
    with tempfile.TemporaryDirectory() as folder:  # a throwaway MLflow store: the trainer logs its prompt counts
        check_tracking_store(MlflowConfig(tracking_uri=f"sqlite:///{folder}/bench.db", experiment_name="bench"))
        with tracked_run(cfg, {}, "bench", folder) as tracker:
            trainer, stream = get_algorithm("superhf").build(RunContext(config, tracker, device))
    prompts_per_superbatch = config.algorithm.prompt_accumulation_steps

    phases = ("generation_s", "scoring_s", "finetuning_s")
    totals = dict.fromkeys((*phases, "metrics_s"), 0.0)
    completions_count = generated_tokens = finetuning_tokens = 0
    for superbatch in range(args.superbatches + 1):
        metrics, completions, kept_indices = trainer.step(stream.take(prompts_per_superbatch))
        if superbatch == 0:
            continue  # warm-up: allocator, kernels, tokenizer caches
        for phase in phases:
            totals[phase] += metrics[f"time/{phase}"]
        # The rest of the step is its metrics, where METEOR over all ordered pairs dominates.
        totals["metrics_s"] += metrics["time/step_s"] - sum(metrics[f"time/{phase}"] for phase in phases)
        completions_count += len(completions)
        generated_tokens += sum(c.num_tokens for c in completions)
        finetuning_tokens += sum(
            sum(map(len, completion_token_ids(trainer.tokenizer, trainer.config.conversation_prompt, completions[i])))
            for i in kept_indices
        )

    print(json.dumps({
        "benchmark": "superhf_superbatch_phases",
        "superbatches": args.superbatches,
        "completions_per_superbatch": completions_count // args.superbatches,
        "completions_per_s": round(completions_count / totals["generation_s"], 2),
        "generated_tokens_per_s": round(generated_tokens / totals["generation_s"], 1),
        "scored_completions_per_s": round(completions_count / totals["scoring_s"], 1),
        "finetuning_tokens_per_s": round(finetuning_tokens / totals["finetuning_s"], 1),
        **{f"{phase}_per_superbatch": round(seconds / args.superbatches, 4) for phase, seconds in totals.items()},
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
