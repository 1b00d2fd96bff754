"""The embedded tiny world: a small but real SuperHF setting that builds offline, on a CPU, from a seed.

A synthetic hh-rlhf-style data set with a programmatic gold reward, a Pythia-architecture policy
fine-tuned on it, and a DeBERTa-architecture reward model trained on gold-labelled preference pairs
that carry a planted spurious cue. See ``python -m superhf_lab.tiny_world``.

May import: nothing of superhf_lab outside tiny_world (the lab measures it; it knows nothing of the lab).
"""

from superhf_lab.tiny_world.build import TinyWorldPaths, ensure_tiny_world, recipe_fingerprint
from superhf_lab.tiny_world.recipe import TinyWorldRecipe
from superhf_lab.tiny_world.synthetic import format_prompt, gold_reward, gold_reward_batch

__all__ = [
    "TinyWorldPaths",
    "TinyWorldRecipe",
    "ensure_tiny_world",
    "format_prompt",
    "gold_reward",
    "gold_reward_batch",
    "recipe_fingerprint",
]
