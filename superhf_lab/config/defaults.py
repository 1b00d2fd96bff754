"""The run schema's defaults as a Hydra config, ``run_defaults``, first in conf/config.yaml's defaults list: a default
is written once, in its dataclass (superhf_lab/config/schema.py), and conf/ holds only what differs from it.

Stored as a plain dict, as each algorithm's defaults are (``superhf_lab.algorithms.registry.store_algorithm_configs``):
:func:`superhf_lab.launch.compose.validate_config` types and checks the composed config, with its own messages.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from superhf_lab.config.schema import RunConfig

RUN_DEFAULTS = "run_defaults"

# Sections a config group supplies whole, left out so that a config composes the same keys as its group files give:
# ``algorithm`` and ``heldout_reward_model`` are null until their group fills them (``heldout_reward_model: null``
# leaves the key out), and a prompt mix (``data``, ``preferences``) is its conf/data/ or conf/preferences/ file's.
SUPPLIED_BY_GROUPS = ("algorithm", "heldout_reward_model", "data", "preferences")


def run_defaults() -> dict[str, Any]:
    """RunConfig's defaults, untyped, without the sections config groups supply."""
    defaults = OmegaConf.to_container(OmegaConf.structured(RunConfig))
    assert isinstance(defaults, dict)
    for key in SUPPLIED_BY_GROUPS:
        del defaults[key]
    return defaults


def store_run_defaults() -> None:
    """Register :func:`run_defaults` in Hydra's ConfigStore as ``run_defaults``, before Hydra composes."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=RUN_DEFAULTS, node=run_defaults(), replace=True)
