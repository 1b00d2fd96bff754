"""The error every bad setting raises, so the run stops before it wastes time, naming the key and the fix."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""


def require(condition: bool, key: str, value: Any, fix: str) -> None:
    """Raise a :class:`ConfigError` naming ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{key}={value!r} is invalid: {fix}")
