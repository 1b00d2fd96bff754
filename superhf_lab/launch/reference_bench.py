"""The reference SuperHF trainer (openfeedback/superhf ``src/superhf/training.py``), unmodified, timed on the tiny
world at this lab's settings: ``make bench``'s ``reference`` section, when ``SUPERHF_REFERENCE_SRC`` names a checkout
of that repository's ``src/`` folder.

    SUPERHF_REFERENCE_SRC=/path/to/superhf/src make bench

The reference imports wandb, torchtyping and pynvml, which this lab does not install: they are replaced by stubs
(modules with the names it imports; none of them is called on a CPU run with our metric callback). Its code is
otherwise imported and run as it is. It runs in its own process (``python -m superhf_lab.launch.reference_bench``),
as accelerate's state is a process-wide singleton, and prints one JSON line: seconds per superbatch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

REFERENCE_ENV = "SUPERHF_REFERENCE_SRC"


def install_stubs() -> None:
    """Stand-ins for the reference's imports that this lab does not install."""
    wandb = types.ModuleType("wandb")
    wandb.log = lambda *args, **kwargs: None
    torchtyping = types.ModuleType("torchtyping")

    class TensorType:  # used only in annotations, subscripted with dimension names
        def __class_getitem__(cls, item):
            return cls

    torchtyping.TensorType = TensorType
    pynvml = types.ModuleType("pynvml")
    for name in ("nvmlInit", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetMemoryInfo"):
        setattr(pynvml, name, lambda *args, **kwargs: None)
    sys.modules.update({"wandb": wandb, "torchtyping": torchtyping, "pynvml": pynvml})


def settings_of(overrides: list[str]) -> dict:
    """This lab's SuperHF settings for ``overrides`` (those the reference's arguments can express)."""
    from superhf_lab.launch.compose import compose_run_config, validate_config

    cfg = compose_run_config(["algorithm=superhf", *overrides])
    cfg.output_dir = "outputs/bench"
    config = validate_config(cfg)
    algorithm = config.algorithm
    return {
        "tiny_world": str(Path(config.tiny_world.dir).resolve()),
        "seed": config.seed,
        "kl_coef": config.kl_coef,
        "lora_r": algorithm.lora.r,
        "lora_alpha": algorithm.lora.alpha,
        "lora_dropout": algorithm.lora.dropout,
        "temperature": algorithm.temperature,
        "top_p": algorithm.top_p,
        "repetition_penalty": algorithm.repetition_penalty,
        "superbatch_size": algorithm.superbatch_size,
        "prompt_accumulation_steps": algorithm.prompt_accumulation_steps,
        "max_new_tokens": algorithm.max_new_tokens,
        "top_k": algorithm.top_k,
        "learning_rate": algorithm.learning_rate,
        "minibatch_size_generating": algorithm.minibatch_size_generating,
        "minibatch_size_scoring": algorithm.minibatch_size_scoring,
        "minibatch_size_finetuning": algorithm.minibatch_size_finetuning,
    }


def time_reference(source: str, settings: dict, superbatches: int) -> list[float]:
    """Seconds of each of ``superbatches`` superbatches of the reference trainer's ``train``, at ``settings``."""
    sys.path.insert(0, source)
    install_stubs()
    import torch
    from peft import LoraConfig, get_peft_model
    from superhf.filtering import CompletionFilterTopK
    from superhf.training import SuperHFTrainer, SuperHFTrainingArguments
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
    )

    torch.manual_seed(settings["seed"])
    world = Path(settings["tiny_world"])
    policy = AutoModelForCausalLM.from_pretrained(world / "policy")
    policy = get_peft_model(
        policy,
        LoraConfig(
            r=settings["lora_r"],
            lora_alpha=settings["lora_alpha"],
            lora_dropout=settings["lora_dropout"],
            task_type="CAUSAL_LM",
        ),
    )
    tokenizer = AutoTokenizer.from_pretrained(world / "policy", padding_side="left")
    reward_model = AutoModelForSequenceClassification.from_pretrained(world / "reward_model")
    reward_tokenizer = AutoTokenizer.from_pretrained(world / "reward_model")
    processors = LogitsProcessorList()
    if settings["repetition_penalty"] != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(settings["repetition_penalty"]))
    arguments = SuperHFTrainingArguments(
        seed=settings["seed"],
        temperature=settings["temperature"],
        top_p=settings["top_p"],
        superbatch_size=settings["superbatch_size"],
        prompt_accumulation_steps=settings["prompt_accumulation_steps"],
        max_new_tokens=settings["max_new_tokens"],
        logits_processors=processors,
        minibatch_size_generating=settings["minibatch_size_generating"],
        minibatch_size_scoring=settings["minibatch_size_scoring"],
        minibatch_size_finetuning=settings["minibatch_size_finetuning"],
        learning_rate=settings["learning_rate"],
        kl_coefficient=settings["kl_coef"],
        # Both intervals' default, 0, divides by zero in its loop: validation (no validation reward model is given)
        # and pushing to the hub (no hub repository is given) are off either way.
        validation_interval=1,
        push_to_hub_interval=1,
    )
    ends: list[float] = []
    trainer = SuperHFTrainer(
        policy,
        reward_model,
        None,
        tokenizer,
        reward_tokenizer,
        None,
        CompletionFilterTopK(settings["top_k"]),
        arguments,
        report_metrics=[lambda metrics: ends.append(time.perf_counter())],
    )
    prompts = [json.loads(line)["prompt"] for line in (world / "prompts" / "train.jsonl").open()]
    started = time.perf_counter()
    trainer.train(prompts[: superbatches * settings["prompt_accumulation_steps"]])
    return [end - start for start, end in zip([started, *ends], ends)]


def reference_seconds(overrides: list[str], superbatches: int) -> dict:
    """The reference's seconds per superbatch (after one warm-up superbatch) in a process of its own, or why not."""
    source = os.environ.get(REFERENCE_ENV)
    if not source:
        return {"skipped": f"set {REFERENCE_ENV} to a checkout of openfeedback/superhf's src/ to time it"}
    if not (Path(source) / "superhf" / "training.py").is_file():
        return {"skipped": f"{REFERENCE_ENV}={source} holds no superhf/training.py: name the repository's src/"}
    done = subprocess.run(
        [sys.executable, "-m", "superhf_lab.launch.reference_bench", source, str(superbatches + 1), *overrides],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the reference trainer failed:\n{done.stderr[-3000:]}")
    seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"][1:]
    return {"superbatches": len(seconds), "seconds_per_superbatch": round(sum(seconds) / len(seconds), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="openfeedback/superhf's src/ folder")
    parser.add_argument("superbatches", type=int)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for run.py")
    args = parser.parse_args()
    settings = settings_of(args.overrides)
    seconds = time_reference(args.source, settings, args.superbatches)
    sys.stdout.flush()
    print(json.dumps({"seconds": seconds, "settings": settings}))


if __name__ == "__main__":
    main()
