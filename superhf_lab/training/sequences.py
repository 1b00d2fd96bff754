"""Prompt + completion token sequences as model inputs, and what losses and evaluations compute from their logits.

Shared by every algorithm that scores completions under the policy (SuperHF's loss, the evaluation's KL), so
a completion is always tokenised, padded and masked the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from superhf_lab.core.text import with_conversation_prompt
from superhf_lab.training.completions import Completion


def completion_token_ids(
    tokenizer: PreTrainedTokenizerBase, conversation_prompt: str, completion: Completion
) -> tuple[list[int], list[int]]:
    """What the policy was conditioned on and what it wrote (with EOS when it ended), for losses and KL."""
    prompt_ids = tokenizer(with_conversation_prompt(conversation_prompt, completion.prompt)).input_ids
    completion_ids = tokenizer(completion.text, add_special_tokens=False).input_ids
    if completion.finished:
        completion_ids.append(tokenizer.eos_token_id)
    return prompt_ids, completion_ids


def pad_examples(
    prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_token_id: int, padding_side: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack prompt+completion sequences; returns input ids, attention mask and a completion-token mask.

    The completion mask is 1 exactly on completion tokens, wherever the padding sits.
    """
    sequences = [p + c for p, c in zip(prompt_ids, completion_ids, strict=True)]
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    completion_mask = torch.zeros_like(input_ids)
    for row, (prompt, sequence) in enumerate(zip(prompt_ids, sequences)):
        start = length - len(sequence) if padding_side == "left" else 0
        end = start + len(sequence)
        input_ids[row, start:end] = torch.tensor(sequence)
        attention_mask[row, start:end] = 1
        completion_mask[row, start + len(prompt) : end] = 1
    return input_ids, attention_mask, completion_mask


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each sequence's first real token, so left padding does not shift them."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def completion_batch(
    tokenizer: PreTrainedTokenizerBase, conversation_prompt: str, completions: list[Completion], device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Model inputs for prompt + completion sequences (right-padded, positions counted from the first token)
    and the mask of the completion tokens, for the loss and for KL."""
    prompt_ids, completion_ids = zip(*(completion_token_ids(tokenizer, conversation_prompt, c) for c in completions))
    input_ids, attention_mask, completion_mask = (
        t.to(device) for t in pad_examples(list(prompt_ids), list(completion_ids), tokenizer.pad_token_id, "right")
    )
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids_for(attention_mask),
    }
    return inputs, completion_mask


KL_ESTIMATORS = ("k1", "k2", "k3")
KL_ESTIMATE_NAMES = tuple(f"kl_estimate/{name}" for name in KL_ESTIMATORS)


def kl_estimates(logprobs: torch.Tensor, reference_logprobs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Schulman's estimators of KL(policy || reference) from the sampled token's log-ratio r = log p - log q: k1 = r,
    k2 = r^2 / 2, k3 = (q/p - 1) + r (never negative). Unbiased: k1 and k3; k2's bias is third order in r."""
    log_ratio = logprobs - reference_logprobs
    return {"k1": log_ratio, "k2": 0.5 * log_ratio**2, "k3": torch.expm1(-log_ratio) + log_ratio}


@dataclass
class LossTerms:
    """Per completion: summed CE and its token count, the exact per-token KL(policy || reference) that is
    logged as ``kl``, the KL term as the configured loss defines it (direction and mask), and Schulman's k1, k2
    and k3 estimates of that KL from the completion's own tokens (``(B, 3)``, token means, logged beside ``kl``)."""

    ce_sum: torch.Tensor
    tokens: torch.Tensor
    kl: torch.Tensor
    kl_loss: torch.Tensor
    estimates: torch.Tensor

    def only(self, kept: torch.Tensor) -> LossTerms:
        """The terms with the rows not ``kept`` (a bool per completion) contributing nothing: padding that a rank
        runs only to call a sharded policy as often as the others."""
        weight = kept.to(self.ce_sum)
        return LossTerms(
            self.ce_sum * weight, self.tokens, self.kl * weight, self.kl_loss * weight, self.estimates * weight[:, None]
        )


def loss_terms(
    logits: torch.Tensor,
    reference_logits: torch.Tensor,
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    kl_direction: str = "policy_to_reference",
    kl_mask: str = "shifted",
) -> LossTerms:
    """What both loss reductions are built from (see the module docstring).

    Logits at position t predict token t+1, so the shifted mask selects the logits that predict completion
    tokens; ``kl_mask: unshifted`` takes the logits at the completion tokens' own positions instead. Only the
    positions a term uses go through the softmax over the vocabulary (prompt and padding positions never do).
    """
    predicts = F.pad(completion_mask[:, 1:], (0, 1)).bool()
    kl_positions = predicts if kl_mask == "shifted" else completion_mask.bool()
    used = predicts | kl_positions
    rows = used.nonzero(as_tuple=True)[0]
    log_probs = F.log_softmax(logits[used].float(), dim=-1)
    reference_log_probs = F.log_softmax(reference_logits[used].float(), dim=-1)
    next_tokens = F.pad(input_ids[:, 1:], (0, 1))[used]
    in_ce, in_kl_loss = predicts[used].float(), kl_positions[used].float()
    token_ce = -log_probs.gather(-1, next_tokens.unsqueeze(-1)).squeeze(-1)
    reference_token = reference_log_probs.gather(-1, next_tokens.unsqueeze(-1)).squeeze(-1)
    token_estimates = torch.stack(list(kl_estimates(-token_ce, reference_token).values()), dim=-1).detach()
    token_kl = (log_probs.exp() * (log_probs - reference_log_probs)).sum(-1)
    token_kl_loss = token_kl
    if kl_direction == "reference_to_policy":
        token_kl_loss = (reference_log_probs.exp() * (reference_log_probs - log_probs)).sum(-1)

    def per_completion(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(logits.shape[0], device=values.device).index_add(0, rows, values)

    tokens = predicts.sum(-1).float()
    kl = per_completion(token_kl * in_ce) / tokens.clamp(min=1)
    kl_loss = per_completion(token_kl_loss * in_kl_loss) / kl_positions.sum(-1).clamp(min=1)
    estimates = (
        torch.zeros(logits.shape[0], len(KL_ESTIMATORS), device=logits.device).index_add(
            0, rows, token_estimates * in_ce[:, None]
        )
        / tokens.clamp(min=1)[:, None]
    )
    return LossTerms(per_completion(token_ce * in_ce), tokens, kl, kl_loss, estimates)
