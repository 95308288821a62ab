"""objective.on, constraints and directions through a real study: a local Ray instance, the CNN
trainable on synthetic features, Optuna's storage read back, and the CLI's export."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from hpo.search import Constraint, Objective, pareto_front, select_best
from tests.support.featuresets import put_synthetic


def _config(tmp_path, uri: str, objective: dict, **extra) -> dict:
    return {
        "name": "pareto",
        "store": uri,
        "feature_set": {"backbone": "synthetic", "frames": 4},
        "split": {"kind": "stratified", "k": 3, "seed": 0},
        "space": {"head": ["pooled"], "dense_layers": 1, "dense_units_1": [4, 8, 16, 32]},
        "budget": {"trials": 6, "max_concurrent": 2, "max_epochs": 3, "patience": 3},
        "resources": {"cpu": 1, "intra_op_threads": 1},
        "storage": {"storage_path": str(tmp_path / "runs")},
        "cache_dir": str(tmp_path / "cache"),
        "objective": objective,
        **extra,
    }


@pytest.mark.slow
def test_a_validation_pareto_study_tells_optuna_no_test_fold_number_and_exports_the_picked_point(
    tmp_path,
):
    """Under objective.on: validation with two directions, every Optuna value is the trial's
    inner-validation (accuracy, COVID recall) and ASHA reads validation only; `export --pick`
    exports the front's point its rule names, and the card says how it was chosen."""
    import ray

    from hpo.cli import main
    from hpo.results import read_card
    from hpo.search import from_dict
    from hpo.search._study import _scheduler, run_study

    uri, _key, _fs = put_synthetic(tmp_path / "store", clips=45, frames=4, dim=8)
    objective = {
        "on": "validation",
        "directions": {"accuracy": "maximize", "covid_recall": "minimize"},
    }
    cfg = from_dict(
        _config(tmp_path, uri, objective, scheduler={"name": "asha", "grace_period": 2}),
        source="test",
    )
    assert _scheduler(cfg).metric == "val_accuracy"  # the epochs' inner validation, whatever on
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_study(cfg, log=lambda _m: None)
    finally:
        ray.shutdown()

    study = optuna.load_study(study_name="pareto", storage=result.optuna_storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    by_tune_id = {t.trial_id: t for t in result.trials}
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert complete
    for trial in complete:
        metrics = by_tune_id[trial.user_attrs["tune_trial_id"]].metrics
        assert trial.values == [
            metrics["validation_accuracy"],
            metrics["validation_cov_recall_mean"],
        ]

    finals = {t.trial_id: t.metrics for t in result.trials if t.value is not None}
    front = pareto_front(
        {i: [m["validation_accuracy"], -m["validation_cov_recall_mean"]] for i, m in finals.items()}
    )
    assert {t.user_attrs["tune_trial_id"] for t in study.best_trials} == front
    # The rule names the front's most sensitive point: the highest COVID recall on it.
    # The rule names a point other than the front's most accurate one: on a front of accuracy
    # against COVID recall minimised, a lower recall bound leaves out the most accurate point.
    assert len(front) >= 2
    recall = {i: finals[i]["validation_cov_recall_mean"] for i in front}
    top = max(front, key=lambda i: finals[i]["validation_accuracy"])
    bound = max(r for r in recall.values() if r < recall[top])
    rule = f"covid_recall <= {math.ceil(bound * 1000) / 1000}"
    picked = Objective("validation", (Constraint.parse(rule),))
    # ties go to the earlier trial: Optuna's numbers are the order in which Tune made them
    number = {t.user_attrs.get("tune_trial_id"): t.number for t in study.trials}
    expected = select_best([picked.candidate(i, number[i], finals[i]) for i in front])
    assert expected.feasible and expected.trial_id != top
    out = tmp_path / "model"
    assert main(["export", cfg.run_path, "--out", str(out), "--store", uri, "--pick", rule]) == 0
    card = read_card(out)
    assert card["trial_id"] == expected.trial_id
    selection = card["selection"]
    assert selection["front"] == sorted(front) and selection["pick"] == [rule]
    assert selection["feasible"] == sum(picked.feasible(r) for r in finals.values())
    assert selection["selected_on"].startswith("selected without the test folds")
    assert selection["objective"]["directions"] == objective["directions"]
    assert sum(t["on_front"] for t in card["trials"]) == len(front)
    for row in card["trials"]:  # the report compares test-fold figures; the history plots the
        assert row["accuracy"] == pytest.approx(finals[row["trial_id"]]["accuracy"])  # objective
        assert row["objective"] == pytest.approx(finals[row["trial_id"]]["validation_accuracy"])
    # the card's figures are still the test folds' (the exported models on them)
    assert card["summary"]["accuracy"]["mean"] == pytest.approx(
        finals[card["trial_id"]]["accuracy"]
    )


def test_the_front_plot_marks_the_front_and_the_exported_point(tmp_path):
    from hpo.results._report import plot_front

    rows = [
        {"trial_id": "a", "values": [0.9, 0.5], "on_front": True},
        {"trial_id": "b", "values": [0.7, 0.95], "on_front": True},
        {"trial_id": "c", "values": [0.6, 0.4], "on_front": False},
    ]
    plot_front(rows, ["accuracy", "covid_recall"], "b", ["covid_recall >= 0.9"], tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_objective_parsing_names_what_is_wrong():
    assert str(Constraint.parse(" covid_recall>=0.90 ")) == "covid_recall >= 0.9"
    for bad in ("covid_recall > 0.9", "covid_sensitivity >= 0.9", "covid_recall >= 1.5"):
        with pytest.raises(ValueError, match=r"e\.g\. 'covid_recall >= 0\.9'"):
            Constraint.parse(bad)
    assert Objective.from_dict(None) == Objective()  # a study made before objective.on
    two = {"on": "validation", "constraints": [], "directions": {"accuracy": "maximize",
           "covid_recall": "maximize"}}  # fmt: skip
    assert Objective.from_dict(two).to_dict() == two
    with pytest.raises(ValueError, match="two metrics"):
        Objective.from_dict({"directions": {"accuracy": "maximize"}})


def test_the_report_says_how_the_best_was_chosen_and_how_many_trials_were_feasible():
    from hpo.results._report import _selection_note

    selection = {
        "objective": {"on": "validation", "constraints": ["covid_recall >= 0.9"],
                      "directions": {"accuracy": "maximize", "covid_recall": "maximize"}},
        "pick": ["pneumonia_recall >= 0.8"], "front": ["a", "b", "c"], "candidates": 9,
        "feasible": 4,
    }  # fmt: skip
    note = _selection_note({"selected_on": Objective("validation").selected_on,
                            "selection": selection})  # fmt: skip
    assert "selected without the test folds" in note
    assert "3 of 9 finished trials are on its Pareto front" in note
    assert "that meets pneumonia_recall >= 0.8" in note
    assert (
        "(covid_recall >= 0.9, pneumonia_recall >= 0.8, on the same folds as the objective)" in note
    )
    assert "4 of 9 finished trials were feasible; the best feasible one was chosen" in note
    assert "none was" in _selection_note({"selection": {**selection, "feasible": 0}})
