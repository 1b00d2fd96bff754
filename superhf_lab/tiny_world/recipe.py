"""The tiny world's recipe: every knob; changing any of them gives a different world (and a rebuild)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TinyWorldRecipe:
    """Every knob of the tiny world; changing any of them gives a different world (and a rebuild)."""

    seed: int = 0
    build_threads: int = 2  # torch threads while building: float sums split by thread count, so results depend on it
    # Data
    sft_examples: int = 5000
    preference_pairs: int = 4000
    heldout_preference_pairs: int = 500
    train_prompts: int = 2000
    test_prompts: int = 300
    label_noise: float = 0.1
    sign_off_chosen_rate: float = 0.5  # the spurious cue: how often the preferred answer has the sign-off
    sign_off_rejected_rate: float = 0.1
    sft_sign_off_rate: float = 0.2
    # Policy (GPT-NeoX, Pythia's architecture)
    policy_vocab_size: int = 4096
    policy_hidden_size: int = 128
    policy_layers: int = 3
    policy_heads: int = 4
    policy_max_positions: int = 256
    sft_epochs: float = 4.0
    sft_learning_rate: float = 4e-3
    sft_batch_size: int = 16
    # Reward model (DeBERTa-v2, the OpenAssistant reward model's architecture)
    reward_vocab_size: int = 1536
    reward_hidden_size: int = 128
    reward_layers: int = 1
    reward_heads: int = 4
    reward_max_positions: int = 512
    reward_epochs: float = 2.0
    reward_learning_rate: float = 1e-3
    reward_batch_size: int = 32
    # Build report
    report_prompts: int = 64
    report_samples_per_prompt: int = 8
    report_max_new_tokens: int = 96

    def seed_for(self, purpose: str) -> int:
        """Distinct, reproducible seeds per data split, so train and test prompts differ."""
        offsets = {"sft": 1, "preferences": 2, "heldout_preferences": 3, "train_prompts": 4, "test_prompts": 5}
        return self.seed * 1000 + offsets[purpose]
