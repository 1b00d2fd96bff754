"""Tags that say where a run came from: its configuration, its code, its sweep or study."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

# A hash of everything that decides what a run computes (seed included; not where its outputs go), so runs of
# one configuration can be found again: `make results` reuses them instead of training twice.
CONFIG_TAG = "superhf_lab.config_fingerprint"


CODE_TAG = "superhf_lab.code_version"  # the git commit that ran (with -dirty for uncommitted code), else the version


SOURCE = Path(__file__).resolve().parents[2]  # the checkout holding superhf_lab/


@functools.cache
def code_version() -> str:
    """Which code computed a run: the checkout's commit, marked -dirty when its code or configs have uncommitted
    changes; the package version where there is no checkout (an installed wheel)."""
    from superhf_lab import __version__

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(SOURCE), *args], capture_output=True, text=True)

    try:
        head = git("rev-parse", "--short=12", "HEAD")
    except OSError:  # no git on this machine
        return __version__
    if head.returncode != 0:
        return __version__
    dirty = git("diff", "--quiet", "HEAD", "--", "superhf_lab", "conf", "sweeps", "run.py").returncode != 0
    return head.stdout.strip() + ("-dirty" if dirty else "")


SWEEP_TAG = "superhf_lab.sweep"


ROLE_TAG = "superhf_lab.role"


STUDY_TAG = "superhf_lab.optuna_study"
