"""Puts the project's ``sweeps/`` folder on Hydra's config search path (a Hydra plugin, registered through the
``hydra.plugins`` entry point in pyproject.toml).

That makes the ready Optuna studies in ``sweeps/hparams_search/`` a config group that any working
directory can select (``python run.py hparams_search=kl_coef``). Hydra would read a relative
``hydra.searchpath`` entry against the current directory, so the absolute path is added here instead.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from superhf_lab.config.resources import resource_dir

SWEEPS_DIR = resource_dir("sweeps")


class SuperHFLabSweepsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if SWEEPS_DIR.is_dir():
            search_path.append(provider="superhf_lab", path=f"file://{SWEEPS_DIR}")
