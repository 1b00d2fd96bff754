"""Checks that the built world is fit for SuperHF experiments, summarised in ``build_report.json``.

They answer: did the reward model learn the gold preferences, did it also learn the planted
sign-off cue (so it can be hacked), and does the SFT policy's output vary enough in gold reward
that picking the best of several samples by the proxy pays off.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from superhf_lab.tiny_world import synthetic
from superhf_lab.tiny_world.topics import SIGN_OFF_MARKERS, SIGN_OFFS


def _device_of(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def proxy_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 64
) -> list[float]:
    """Reward model scores of whole dialogue texts, tokenised by the reward model's own tokenizer."""
    scores: list[float] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            list(texts[start : start + batch_size]), return_tensors="pt", padding=True, truncation=True
        ).to(_device_of(model))
        scores.extend(model(**batch).logits[:, 0].float().tolist())
    return scores


@torch.no_grad()
def sample_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 64,
) -> tuple[list[str], list[bool]]:
    """One sampled completion per prompt (temperature 1, top-p 0.9) from left-padded batches.

    Returns the decoded completions and, for each, whether the policy ended it with EOS.
    """
    tokenizer.padding_side = "left"
    completions: list[str] = []
    stopped: list[bool] = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True)
        batch = batch.to(_device_of(model))
        output = model.generate(**batch, do_sample=True, temperature=1.0, top_p=0.9, max_new_tokens=max_new_tokens)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        completions.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        stopped.extend((new_tokens == tokenizer.eos_token_id).any(dim=1).tolist())
    tokenizer.padding_side = "right"
    return completions, stopped


def _pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    return statistics.correlation(xs, ys) if len(set(xs)) > 1 and len(set(ys)) > 1 else 0.0


def reward_model_report(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, heldout_pairs: list[dict[str, str]], seed: int
) -> dict[str, float]:
    """Held-out agreement with gold, and how much the spurious sign-off moves the proxy vs. the gold reward."""
    chosen = proxy_scores(model, tokenizer, [pair["chosen"] for pair in heldout_pairs])
    rejected = proxy_scores(model, tokenizer, [pair["rejected"] for pair in heldout_pairs])
    texts = [pair[side] for pair in heldout_pairs for side in ("chosen", "rejected")]
    proxies = [score for pair_scores in zip(chosen, rejected, strict=True) for score in pair_scores]
    golds = [synthetic.gold_reward(*synthetic.split_dialogue(text)) for text in texts]

    rng = random.Random(seed)
    plain = synthetic.make_sft_examples(len(heldout_pairs), seed, sign_off_rate=0.0)
    plain_texts = [example["prompt"] + example["completion"] for example in plain]
    signed_texts = [f"{text} {rng.choice(SIGN_OFFS)}" for text in plain_texts]
    plain_gold = [synthetic.gold_reward(example["prompt"], example["completion"]) for example in plain]
    signed_gold = [synthetic.gold_reward(*synthetic.split_dialogue(text)) for text in signed_texts]
    plain_proxy = statistics.fmean(proxy_scores(model, tokenizer, plain_texts))
    signed_proxy = statistics.fmean(proxy_scores(model, tokenizer, signed_texts))
    return {
        "rm_heldout_pairs": len(heldout_pairs),
        "rm_heldout_accuracy": statistics.fmean(c > r for c, r in zip(chosen, rejected, strict=True)),
        "rm_gold_pearson": _pearson(proxies, golds),
        "sign_off_proxy_without": plain_proxy,
        "sign_off_proxy_with": signed_proxy,
        "sign_off_proxy_gain": signed_proxy - plain_proxy,
        "sign_off_gold_gain": statistics.fmean(signed_gold) - statistics.fmean(plain_gold),
    }


def policy_report(
    policy: PreTrainedModel,
    policy_tokenizer: PreTrainedTokenizerBase,
    reward_model: PreTrainedModel,
    reward_tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    samples_per_prompt: int,
    max_new_tokens: int,
) -> dict[str, object]:
    """Gold and proxy rewards of SFT policy samples, and what best-of-n by the proxy buys in gold."""
    repeated = [prompt for prompt in prompts for _ in range(samples_per_prompt)]
    completions, stopped = sample_completions(policy, policy_tokenizer, repeated, max_new_tokens)
    golds = synthetic.gold_reward_batch(repeated, completions)
    proxies = proxy_scores(reward_model, reward_tokenizer, [p + c for p, c in zip(repeated, completions, strict=True)])

    best_by_proxy, best_by_gold = [], []
    for start in range(0, len(repeated), samples_per_prompt):
        group = range(start, start + samples_per_prompt)
        best_by_proxy.append(golds[max(group, key=lambda i: proxies[i])])
        best_by_gold.append(max(golds[i] for i in group))
    return {
        "policy_prompts": len(prompts),
        "policy_samples_per_prompt": samples_per_prompt,
        "policy_gold_mean": statistics.fmean(golds),
        "policy_gold_std": statistics.pstdev(golds),
        "policy_proxy_mean": statistics.fmean(proxies),
        "policy_gold_proxy_pearson": _pearson(proxies, golds),
        f"best_of_{samples_per_prompt}_by_proxy_gold_mean": statistics.fmean(best_by_proxy),
        f"best_of_{samples_per_prompt}_by_gold_mean": statistics.fmean(best_by_gold),
        "policy_mean_completion_words": statistics.fmean(len(c.split()) for c in completions),
        "policy_stopped_at_eos_rate": statistics.fmean(stopped),
        "policy_sign_off_rate": statistics.fmean(
            any(marker in completion.lower() for marker in SIGN_OFF_MARKERS) for completion in completions
        ),
        "policy_examples": [
            {"prompt": repeated[i], "completion": completions[i], "gold": golds[i], "proxy": proxies[i]}
            for i in range(0, min(len(repeated), 3 * samples_per_prompt), samples_per_prompt)
        ],
    }
