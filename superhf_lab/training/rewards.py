"""Scoring (prompt, completion) text with a reward model through the reward model's own tokenizer.

Scoring decoded text, never the policy's token ids, lets any policy pair with any reward model
(the paper's Pythia policy with a DeBERTa reward model) and gives every algorithm the same reward.
"""

from __future__ import annotations

from typing import Protocol

import torch

from superhf_lab.config.schema import RewardModelConfig, RunConfig
from superhf_lab.core.text import reward_model_input
from superhf_lab.training.models import autocast, load_reward_model


class RewardScorer(Protocol):
    def score(self, prompts: list[str], completions: list[str], reward_input: str) -> list[float]:
        """One reward per (prompt, completion) pair; a model reads ``reward_input`` filled in with both."""
        ...


class ModelRewardScorer:
    """A sequence-classification reward model over ``prompt + completion`` text, in minibatches."""

    def __init__(self, config: RewardModelConfig, key: str, device: torch.device, precision: str, batch_size: int):
        self.model, self.tokenizer = load_reward_model(config, key, device)
        self.max_length = config.max_length
        self.device = device
        self.precision = precision
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, prompts: list[str], completions: list[str], reward_input: str) -> list[float]:
        """Scores in minibatches of texts of similar token length (less padding); each text's score does not
        depend on its minibatch, so the order only saves time."""
        texts = [
            reward_model_input(reward_input, prompt, completion)
            for prompt, completion in zip(prompts, completions, strict=True)
        ]
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        by_length = sorted(range(len(texts)), key=lambda index: len(encoded["input_ids"][index]))
        scores = [0.0] * len(texts)
        for start in range(0, len(texts), self.batch_size):
            chosen = by_length[start : start + self.batch_size]
            batch = self.tokenizer.pad(
                {name: [values[i] for i in chosen] for name, values in encoded.items()}, return_tensors="pt"
            ).to(self.device)
            with autocast(self.device, self.precision):
                logits = self.model(**batch).logits
            for index, score in zip(chosen, logits[:, 0].float().tolist()):
                scores[index] = score
        return scores


class GoldRewardScorer:
    """The tiny world's programmatic gold reward: ground truth that the proxy model only approximates.

    It judges the answer to the question itself, so the reward-model input template does not apply.
    """

    def score(self, prompts: list[str], completions: list[str], reward_input: str) -> list[float]:
        from superhf_lab.tiny_world import gold_reward_batch

        return gold_reward_batch(prompts, completions)


def build_scorer(
    config: RewardModelConfig, key: str, device: torch.device, precision: str, batch_size: int
) -> RewardScorer:
    if config.kind == "gold":
        return GoldRewardScorer()
    return ModelRewardScorer(config, key, device, precision, batch_size)


def build_scorers(run: RunConfig, device: torch.device, batch_size: int) -> tuple[RewardScorer, RewardScorer | None]:
    """The training reward and, when configured, the held-out reward."""
    reward = build_scorer(run.reward_model, "reward_model", device, run.precision, batch_size)
    if run.heldout_reward_model is None:
        return reward, None
    return reward, build_scorer(run.heldout_reward_model, "heldout_reward_model", device, run.precision, batch_size)
