"""The policy being trained or evaluated, and the starting policy that every KL is measured against.

With LoRA (peft) the starting policy is the same model with its adapters disabled, so no second copy is held;
with full fine-tuning it is a frozen copy taken before training. Every algorithm and the evaluation get the
starting policy's logits the same way, through :class:`StartingPolicy`.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from superhf_lab.config.schema import LoraSettings, ModelConfig, RunConfig
from superhf_lab.training.models import autocast, load_policy


class StartingPolicy:
    """Logits of the policy a run started from: ``model`` itself, or ``model`` with its LoRA adapters disabled."""

    def __init__(self, model: PreTrainedModel, adapters_disabled: bool) -> None:
        self.model = model
        self.adapters_disabled = adapters_disabled

    @classmethod
    def frozen_copy(cls, policy: PreTrainedModel) -> StartingPolicy:
        return cls(copy.deepcopy(policy).eval().requires_grad_(False), adapters_disabled=False)

    @torch.no_grad()
    def logits(self, device: torch.device, precision: str, **inputs: torch.Tensor) -> torch.Tensor:
        disabled = self.model.disable_adapter() if self.adapters_disabled else nullcontext()
        with disabled, autocast(device, precision):
            return self.model(**inputs).logits


def with_starting_policy(policy: PreTrainedModel, lora: LoraSettings) -> tuple[PreTrainedModel, StartingPolicy]:
    """The policy to train (with LoRA adapters when enabled) and the starting policy to measure KL against."""
    if not lora.enabled:
        return policy, StartingPolicy.frozen_copy(policy)
    from peft import get_peft_model

    trained = get_peft_model(policy, lora.to_peft())
    return trained, StartingPolicy(trained, adapters_disabled=True)


def load_policy_to_evaluate(
    config: RunConfig, device: torch.device, local_path: str | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, StartingPolicy | None]:
    """``eval.policy`` (already downloaded to ``local_path`` when it was an MLflow artifact) and its starting
    policy ``model``; None as the starting policy when no policy is given (the starting policy itself, KL 0).

    A LoRA adapter is applied to ``model``, and the starting policy is the same model with the adapter disabled.
    """
    start, tokenizer = load_policy(config.model, device)
    if local_path is None:
        return start, tokenizer, None
    if (Path(local_path) / "adapter_config.json").is_file():
        from peft import PeftModel

        policy = PeftModel.from_pretrained(start, local_path).to(device)
        return policy, tokenizer, StartingPolicy(policy, adapters_disabled=True)
    policy, _ = load_policy(ModelConfig(name_or_path=local_path), device, key="eval.policy")
    return policy, tokenizer, StartingPolicy(start.eval().requires_grad_(False), adapters_disabled=False)
