"""Composing a run's config the way run.py does, and validating it against the schema and its algorithm's dataclass."""

from __future__ import annotations

from dataclasses import is_dataclass

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from superhf_lab.config.resources import CONF_DIR
from superhf_lab.config.schema import RunConfig
from superhf_lab.core.errors import ConfigError


def prepare_composition() -> None:
    """Everything Hydra needs before it composes conf/config.yaml, for the command line and for
    :func:`compose_run_config` alike: the schema's defaults (``run_defaults``), each algorithm plugin's
    (``algorithm=<name>``), both from their dataclasses, and the ``launch_time`` resolver."""
    from superhf_lab.algorithms.registry import store_algorithm_configs
    from superhf_lab.config.defaults import store_run_defaults
    from superhf_lab.runtime.distributed import register_launch_time_resolver

    store_run_defaults()
    store_algorithm_configs()
    register_launch_time_resolver()


def compose_run_config(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """The config ``run.py`` composes for these overrides, outside a Hydra run (tools and tests)."""
    from hydra import compose, initialize_config_dir

    prepare_composition()
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose("config", overrides=overrides, return_hydra_config=return_hydra_config)


def validate_config(cfg: DictConfig) -> RunConfig:
    """Type-check and range-check a composed config; returns typed objects or raises ConfigError."""
    from superhf_lab.algorithms.registry import get_algorithm  # plugins import this module

    algorithm_name = OmegaConf.select(cfg, "algorithm.name")
    plugin = get_algorithm(algorithm_name)
    schema = OmegaConf.structured(RunConfig)
    schema.algorithm = OmegaConf.structured(plugin.config_class)
    try:
        merged = OmegaConf.merge(schema, cfg)
        run_config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(_describe_omegaconf_error(error)) from None
    assert isinstance(run_config, RunConfig) and is_dataclass(run_config.algorithm)
    run_config.check()
    return run_config


def _describe_omegaconf_error(error: OmegaConfBaseException) -> str:
    key = getattr(error, "full_key", None) or "?"
    reason = str(error).splitlines()[0]
    return f"config key '{key}': {reason}. Check the spelling and type against conf/ and superhf_lab/config/schema.py."
