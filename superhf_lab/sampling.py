"""Sampling completions from a policy, shared by SuperHF's superbatches, evaluation and best-of-N."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from superhf_lab.completions import Completion
from superhf_lab.config import SamplingSettings
from superhf_lab.models import autocast
from superhf_lab.text import decode_completion, with_conversation_prompt


@torch.no_grad()
def sample_completions(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    per_prompt: int,
    settings: SamplingSettings,
    batch_size: int,
    device: torch.device,
    precision: str,
    cut: str,
    progress: str | None = None,
) -> list[Completion]:
    """``per_prompt`` completions of each prompt (prompt-major order), cut where ``cut`` says a new turn starts
    (``text.cut``, see :data:`superhf_lab.text.CUT_PATTERNS`).

    ``progress`` names a progress bar over the minibatches (long evaluations); None shows none.
    """
    jobs = [(index, prompt) for index, prompt in enumerate(prompts) for _ in range(per_prompt)]
    was_training = policy.training
    policy.eval()
    completions = []
    for start in tqdm(range(0, len(jobs), batch_size), desc=progress, unit="minibatch", disable=progress is None,
                      leave=False):
        batch = jobs[start : start + batch_size]
        encoded = tokenizer(
            [with_conversation_prompt(settings.conversation_prompt, prompt) for _, prompt in batch],
            return_tensors="pt", padding=True,
        ).to(device)
        with autocast(device, precision):
            output = policy.generate(
                **encoded, do_sample=True, temperature=settings.temperature, top_p=settings.top_p,
                top_k=settings.generation_top_k, repetition_penalty=settings.repetition_penalty,
                no_repeat_ngram_size=settings.no_repeat_ngram_size, max_new_tokens=settings.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
        new_tokens = output[:, encoded["input_ids"].shape[1] :].tolist()
        for (prompt_index, prompt), tokens in zip(batch, new_tokens):
            text, num_tokens, finished = decode_completion(tokenizer, tokens, cut)
            completions.append(Completion(prompt, prompt_index, text, num_tokens=num_tokens, finished=finished))
    policy.train(was_training)
    return completions


def completion_token_ids(
    tokenizer: PreTrainedTokenizerBase, conversation_prompt: str, completion: Completion
) -> tuple[list[int], list[int]]:
    """What the policy was conditioned on and what it wrote (with EOS when it ended), for losses and KL."""
    prompt_ids = tokenizer(with_conversation_prompt(conversation_prompt, completion.prompt)).input_ids
    completion_ids = tokenizer(completion.text, add_special_tokens=False).input_ids
    if completion.finished:
        completion_ids.append(tokenizer.eos_token_id)
    return prompt_ids, completion_ids
