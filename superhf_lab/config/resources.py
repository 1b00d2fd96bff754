"""Where the packaged configs live: beside the package in a checkout, inside it in a wheel."""

from __future__ import annotations

from pathlib import Path

INSTALLED_RESOURCES = {"conf": "conf", "sweeps": "sweep_configs"}  # where a wheel puts them in the package


def resource_dir(name: str) -> Path:
    """``conf`` or ``sweeps``: beside the package in a checkout, inside it when installed from a wheel (see
    pyproject.toml), so the configs are found whatever the working directory."""
    package = Path(__file__).resolve().parents[1]  # superhf_lab/
    installed = package / INSTALLED_RESOURCES[name]
    return installed if installed.is_dir() else package.parent / name


CONF_DIR = resource_dir("conf")
