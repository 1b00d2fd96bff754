"""Algorithm plugins: one module per algorithm under ``superhf_lab.algorithms`` registers itself here.

Adding an algorithm is adding a module (or an entry point in the ``superhf_lab.algorithms`` group of an
installed package); run.py and the configs never change: the config dataclass's defaults become the
``algorithm=<name>`` config group option (:func:`store_algorithm_configs`).

:func:`_discover` imports this folder's modules through ``importlib``: the lab's one import that runs from the
registry to the algorithms that import it, named here and in ``tools/check_layers.py`` as the single exception.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable

from superhf_lab.core.errors import ConfigError

if TYPE_CHECKING:
    from superhf_lab.config.schema import RunConfig
    from superhf_lab.training.context import RunContext


@dataclass(frozen=True)
class AlgorithmPlugin:
    name: str
    config_class: type
    train: Callable[[RunContext], None]
    metric_names: tuple[str, ...]  # every metric it can log; objectives must name one of these
    checkpoints: bool = False  # saves and resumes checkpoints, and stops cleanly on SIGTERM
    describe: Callable[[RunConfig], str] | None = None  # the run's default name; None: "<name> kl_coef=.. seed=.."
    build: Callable[[RunContext], Any] | None = None  # its trainer, for tools that drive steps (the benchmark)
    # trains through a transformers Trainer (TRL's), which sets accelerate up again from the launch's environment
    transformers_trainer: bool = False

    def run_name(self, config: RunConfig) -> str:
        if self.describe is not None:
            return self.describe(config)
        return f"{self.name} kl_coef={config.kl_coef:g} seed={config.seed}"


_PLUGINS: dict[str, AlgorithmPlugin] = {}
_discovered = False


def register_algorithm(
    name: str,
    config_class: type,
    metric_names: tuple[str, ...],
    checkpoints: bool = False,
    describe: Callable[[RunConfig], str] | None = None,
    build: Callable[[RunContext], Any] | None = None,
    transformers_trainer: bool = False,
):
    """Decorator for an algorithm's ``train(context)`` function."""

    def decorator(train: Callable[[RunContext], None]) -> Callable[[RunContext], None]:
        if name in _PLUGINS and _PLUGINS[name].train is not train:
            raise RuntimeError(f"two algorithm plugins are named {name!r}")
        _PLUGINS[name] = AlgorithmPlugin(
            name,
            config_class,
            train,
            tuple(dict.fromkeys(metric_names)),
            checkpoints,
            describe,
            build,
            transformers_trainer,
        )
        return train

    return decorator


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    import superhf_lab.algorithms as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    for entry_point in entry_points(group="superhf_lab.algorithms"):
        entry_point.load()
    _discovered = True


def store_algorithm_configs() -> None:
    """Each plugin's config defaults as the ``algorithm=<name>`` option, so a default is written once, in its
    dataclass. Stored as a plain dict: :func:`superhf_lab.launch.compose.validate_config` types and checks it.
    :func:`superhf_lab.launch.compose.prepare_composition` calls it, with the run schema's defaults."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    for name in available_algorithms():
        defaults = OmegaConf.to_container(OmegaConf.structured(_PLUGINS[name].config_class))
        store.store(group="algorithm", name=name, node=defaults, replace=True)


def available_algorithms() -> list[str]:
    _discover()
    return sorted(_PLUGINS)


def get_algorithm(name: str | None) -> AlgorithmPlugin:
    """The plugin called ``name``; an unknown name lists the ones there are."""
    _discover()
    if name not in _PLUGINS:
        raise ConfigError(
            f"algorithm.name={name!r} is invalid: available algorithms are {available_algorithms()} "
            "(choose one with algorithm=<name>)"
        )
    return _PLUGINS[name]
