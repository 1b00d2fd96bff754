"""GRPO (Shao et al. 2024, arXiv 2402.03300) on TRL's ``GRPOTrainer``: groups of completions per prompt, each
completion's advantage its reward against its group's, with ``kl_coef`` as TRL's ``beta`` (a k3 per-token KL term in
the loss).

The reward is the project's reward model on decoded text (its own tokenizer, ``text.reward_input``), and every
completion is cut at the next turn exactly as SuperHF cuts it, before scoring and in the loss mask
(:class:`superhf_lab.algorithms.trl_glue.CutAtNextTurn`). ``kl_token_estimate`` is TRL's k3 estimate of the per-token
KL to the reference, averaged over completion tokens (the evaluation logs the exact ``eval/*/kl``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from superhf_lab.algorithms.group_policy import GROUP_POLICY_METRIC_NAMES, GroupPolicyConfig, train_group_policy
from superhf_lab.algorithms.registry import register_algorithm
from superhf_lab.algorithms.trl_glue import CutAtNextTurn
from superhf_lab.training.context import RunContext


@dataclass
class GRPOAlgorithmConfig(GroupPolicyConfig):
    name: str = field(default="grpo", metadata={"help": "the algorithm plugin (algorithm=grpo)"})


@register_algorithm("grpo", GRPOAlgorithmConfig, GROUP_POLICY_METRIC_NAMES, checkpoints=True, transformers_trainer=True)
def train_grpo(context: RunContext) -> None:
    from trl import GRPOConfig, GRPOTrainer

    class CutGRPOTrainer(CutAtNextTurn, GRPOTrainer):
        pass

    train_group_policy(context, CutGRPOTrainer, GRPOConfig)
