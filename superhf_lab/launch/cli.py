"""The command line: ``superhf-lab [overrides]`` (installed), ``python -m superhf_lab`` or ``python run.py`` in a
checkout, and ``-m`` for a sweep (``superhf-lab -m kl_coef=0,0.1,0.35``)."""

import sys

import hydra
from omegaconf import DictConfig

from superhf_lab.config.resources import CONF_DIR
from superhf_lab.core.errors import ConfigError
from superhf_lab.launch.compose import prepare_composition
from superhf_lab.launch.runner import run_experiment
from superhf_lab.launch.sweeps import current_sweep_job
from superhf_lab.runtime.checkpoint import CheckpointSaveError, Preempted
from superhf_lab.runtime.distributed import exit_launched_process, launched_world_size
from superhf_lab.training.data import DataFileError

prepare_composition()  # the dataclasses' defaults become Hydra configs before Hydra composes


def main() -> None:
    """The console script. One of several launched processes (torchrun) ends through
    :func:`~superhf_lab.runtime.distributed.exit_launched_process`, with the status the run ended with."""
    if launched_world_size() == 1:
        run_hydra()
        return
    try:
        run_hydra()
    except SystemExit as stop:
        exit_launched_process(_exit_status(stop.code))
    exit_launched_process(0)


def _exit_status(code: object) -> int:
    """The status Python itself gives a ``SystemExit`` code (a message is printed and means 1)."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


@hydra.main(config_path=str(CONF_DIR), config_name="config")
def run_hydra(cfg: DictConfig) -> float | tuple[float, ...] | None:
    try:
        return run_experiment(cfg)
    except (ConfigError, DataFileError) as error:
        if current_sweep_job() is not None:
            raise  # the sweeper records the job as failed: an Optuna trial becomes FAIL and the study goes on
        print(f"Configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except CheckpointSaveError as error:
        if current_sweep_job() is not None:
            raise
        print(f"Checkpoint error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except Preempted as stop:
        if current_sweep_job() is not None:
            raise  # the whole sweep stops; its next invocation re-queues this trial
        print(f"Preempted: {stop}. Re-run the same command to continue.", file=sys.stderr)
        raise SystemExit(143) from None  # 128 + SIGTERM, as if the signal had ended the process
