"""Evaluation only: a policy (``eval.policy``, or the starting policy ``model``) judged on the test prompts.

``python run.py mode=eval eval.policy=runs:/<run_id>/policy`` runs it whatever ``algorithm`` is set to (so an
experiment's settings stay valid), as does ``algorithm=evaluate``. It logs the
evaluation's ``eval/<source>/*`` metrics at step 0, and the overall ones under the training names too, like
best-of-N, so an evaluated policy overlays with training charts and objectives read it like any run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from superhf_lab.algorithms.registry import register_algorithm
from superhf_lab.config.schema import RunConfig
from superhf_lab.core.errors import ConfigError
from superhf_lab.tracking.store import download_artifacts, is_artifact_uri
from superhf_lab.training.context import RunContext
from superhf_lab.training.evaluation import SHARED_NAMES, PolicyEvaluator, evaluation_metric_names, shared_view
from superhf_lab.training.policies import load_policy_to_evaluate
from superhf_lab.training.rewards import build_scorers

EVALUATED_POLICY_TAG = "superhf_lab.evaluated_policy"


@dataclass
class EvaluateConfig:
    """Nothing to set here: what is evaluated and how are ``eval.*`` (the same for every algorithm)."""

    name: str = field(default="evaluate", metadata={"help": "the algorithm plugin (algorithm=evaluate)"})

    def check(self) -> None:
        pass


def local_policy(location: str | None) -> str | None:
    """``eval.policy`` as a local folder or hub name: an MLflow artifact URI is downloaded first."""
    if location is None or not is_artifact_uri(location):
        return location
    try:
        return download_artifacts(location)
    except Exception as error:  # MLflow raises several types for a bad run id or path
        raise ConfigError(
            f"eval.policy={location!r} could not be downloaded ({str(error).splitlines()[0]}). Use the runs:/<run_id>/"
            "policy URI that a training run tags as superhf_lab.policy_uri"
        ) from None


def describe(config: RunConfig) -> str:
    return f"eval {config.eval.policy or config.model.name_or_path}"


@register_algorithm("evaluate", EvaluateConfig, (*SHARED_NAMES, *evaluation_metric_names()), describe=describe)
def evaluate(context: RunContext) -> None:
    """``eval.policy`` (or the starting policy) on the data mix's test prompts, logged at step 0."""
    config = context.config
    policy, tokenizer, starting = load_policy_to_evaluate(config, context.device, local_policy(config.eval.policy))
    scorer, heldout = build_scorers(config, context.device, config.eval.batch_size)
    context.tracker.set_tag(EVALUATED_POLICY_TAG, config.eval.policy or config.model.name_or_path)
    metrics = PolicyEvaluator(config, tokenizer, scorer, heldout, context.device, context.processes).evaluate(
        policy, starting, context.tracker, 0
    )
    context.tracker.log_metrics(shared_view(metrics), step=0)
