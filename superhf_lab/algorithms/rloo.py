"""RLOO (Ahmadian et al. 2024, arXiv 2402.14740) on TRL's ``RLOOTrainer``: each completion's advantage is its reward
minus the mean reward of the other completions of its prompt (leave one out), with ``kl_coef`` as TRL's ``beta``
(the sequence's k1 KL to the reference subtracted from its reward).

Rewards and cutting are as for GRPO (:mod:`superhf_lab.algorithms.trl_glue`); ``kl_token_estimate`` is TRL's k1
estimate of the per-token KL, averaged over completion tokens (the evaluation logs the exact ``eval/*/kl``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from superhf_lab.algorithms.group_policy import GROUP_POLICY_METRIC_NAMES, GroupPolicyConfig, train_group_policy
from superhf_lab.algorithms.registry import register_algorithm
from superhf_lab.algorithms.trl_glue import CutAtNextTurn
from superhf_lab.training.context import RunContext


@dataclass
class RLOOAlgorithmConfig(GroupPolicyConfig):
    name: str = field(default="rloo", metadata={"help": "the algorithm plugin (algorithm=rloo)"})


@register_algorithm("rloo", RLOOAlgorithmConfig, GROUP_POLICY_METRIC_NAMES, checkpoints=True, transformers_trainer=True)
def train_rloo(context: RunContext) -> None:
    from trl import RLOOConfig, RLOOTrainer

    class CutRLOOTrainer(CutAtNextTurn, RLOOTrainer):
        pass

    train_group_policy(context, CutRLOOTrainer, RLOOConfig)
