"""Algorithm plugins: one module per algorithm under ``superhf_lab.algorithms`` registers itself here.

Adding an algorithm is adding a module (or an entry point in the ``superhf_lab.algorithms`` group of an
installed package) plus ``conf/algorithm/<name>.yaml``; run.py never changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable

import torch

from superhf_lab.checkpoint import CheckpointStore, StopRequest
from superhf_lab.config import ConfigError

if TYPE_CHECKING:
    from superhf_lab.config import RunConfig
    from superhf_lab.tracking import Tracker


@dataclass
class RunContext:
    """What an algorithm receives: the validated config, where to log, the device to use and, for plugins
    that checkpoint, where checkpoints go, whether to resume from the newest one, and SIGTERM's stop request."""

    config: RunConfig
    tracker: Tracker
    device: torch.device
    checkpoints: CheckpointStore | None = None
    resume: bool = False
    stop: StopRequest = field(default_factory=StopRequest)

    @property
    def algorithm(self) -> Any:
        return self.config.algorithm


@dataclass(frozen=True)
class AlgorithmPlugin:
    name: str
    config_class: type
    train: Callable[[RunContext], None]
    metric_names: tuple[str, ...]
    checkpoints: bool = False  # saves and resumes checkpoints, and stops cleanly on SIGTERM


_PLUGINS: dict[str, AlgorithmPlugin] = {}
_discovered = False


def register_algorithm(name: str, config_class: type, metric_names: tuple[str, ...], checkpoints: bool = False):
    """Decorator for an algorithm's ``train(context)`` function."""

    def decorator(train: Callable[[RunContext], None]) -> Callable[[RunContext], None]:
        if name in _PLUGINS and _PLUGINS[name].train is not train:
            raise RuntimeError(f"two algorithm plugins are named {name!r}")
        _PLUGINS[name] = AlgorithmPlugin(name, config_class, train, metric_names, checkpoints)
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
