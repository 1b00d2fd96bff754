"""The report's study plots are Optuna's own, and studies can live in a journal file instead of a database."""

import optuna

from superhf_lab.reporting import report
from superhf_lab.tracking.studies import optuna_storage


def _study(storage: str, directions: list[str]) -> optuna.Study:
    study = optuna.create_study(study_name="s", storage=optuna_storage(storage), directions=directions)
    for trial_number in range(4):
        trial = study.ask()
        kl_coef, lr = trial.suggest_float("kl_coef", 0, 1), trial.suggest_float("lr", 1e-5, 1e-2, log=True)
        study.tell(trial, [kl_coef + trial_number, lr][: len(directions)])
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    return study


def test_a_journal_file_holds_a_study_and_the_report_draws_optunas_plots(tmp_path):
    storage = f"journal:{tmp_path}/studies.log"
    _study(storage, ["maximize"])
    study = report.load_study("s", storage)
    assert len(study.trials) == 5, "loaded back from the journal file"
    paths = report.plot_study(study, tmp_path / "single")
    assert [p.name for p in paths] == list(report.STUDY_PLOTS)
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_a_multi_objective_study_gets_a_history_and_importances_per_objective_and_a_pareto_front(tmp_path):
    study = _study(f"sqlite:///{tmp_path}/optuna.db", ["maximize", "minimize"])
    paths = report.plot_study(study, tmp_path / "multi")
    assert [p.name for p in paths] == [
        "optuna_history_0.png",
        "optuna_param_importances_0.png",
        "optuna_history_1.png",
        "optuna_param_importances_1.png",
        report.PARETO_PLOT,
    ]
    assert all(p.stat().st_size > 10_000 for p in paths)
