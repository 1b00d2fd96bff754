"""Tags that say where a run came from: its configuration, its code, its sweep or study."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

# A hash of everything that decides what a run computes (seed included; not where its outputs go), so runs of
# one configuration can be found again: `make results` reuses them instead of training twice.
CONFIG_TAG = "superhf_lab.config_fingerprint"


CODE_TAG = "superhf_lab.code_version"  # the git commit that ran (with -dirty for uncommitted code), else the version
# What the code that ran contains, whatever the commit: `make results` reuses runs across commits that change only
# what runs do not read (the README, the tests).
CODE_CONTENT_TAG = "superhf_lab.code_content"
CODE_PATHS = ("superhf_lab", "conf", "sweeps", "run.py")


SOURCE = Path(__file__).resolve().parents[2]  # the checkout holding superhf_lab/


@functools.cache
def code_version() -> str:
    """Which code computed a run: the checkout's commit, marked -dirty when its code or configs have uncommitted
    changes; the package version where there is no checkout (an installed wheel)."""
    from superhf_lab import __version__

    try:
        head = _git("rev-parse", "--short=12", "HEAD")
    except OSError:  # no git on this machine
        return __version__
    if head.returncode != 0:
        return __version__
    return head.stdout.strip() + ("-dirty" if _dirty() else "")


@functools.cache
def code_content() -> str:
    """Which code computed a run, by content: a hash of the git trees of ``CODE_PATHS`` at HEAD (-dirty as in
    :func:`code_version`); the package version where there is no checkout."""
    from superhf_lab import __version__

    try:
        trees = _git("rev-parse", *(f"HEAD:{path}" for path in CODE_PATHS))
    except OSError:
        return __version__
    if trees.returncode != 0:
        return __version__
    return hashlib.sha256(trees.stdout.encode()).hexdigest()[:12] + ("-dirty" if _dirty() else "")


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(SOURCE), *args], capture_output=True, text=True)


def _dirty() -> bool:
    return _git("diff", "--quiet", "HEAD", "--", *CODE_PATHS).returncode != 0


SWEEP_TAG = "superhf_lab.sweep"


ROLE_TAG = "superhf_lab.role"


STUDY_TAG = "superhf_lab.optuna_study"
