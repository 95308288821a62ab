"""hpo.results: metrics recomputed from the exported fold files, set beside the paper's row, with
zero-support folds flagged; report.md / report.json / plots; the `lushpo evaluate` command."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

from hpo.cli import main
from hpo.results import evaluate, export_checkpoint, paper_row, read_evaluation
from pipeline.manifest import LABELS, Fold, Split
from tests.support.featuresets import put_synthetic
from tests.support.trial_checkpoint import make_checkpoint


def _split_without_cov_in_fold_0(fs) -> Split:
    """3 folds; fold 0 tests no COVID clip (like the paper's fold 1)."""
    ids = np.asarray(fs.clip_ids)
    by_class = {c: list(ids[fs.labels == c]) for c in range(len(LABELS))}
    tests: list[list[str]] = [[], [], []]
    for c, members in by_class.items():
        folds = [1, 2] if c == 0 else [0, 1, 2]
        for i, clip in enumerate(members):
            tests[folds[i % len(folds)]].append(clip)
    all_ids = set(fs.clip_ids)
    return Split(
        name="synthetic-zero-support",
        folds=tuple(Fold(tuple(sorted(all_ids - set(t))), tuple(sorted(t))) for t in tests),
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    uri, key, fs = put_synthetic(root / "store", clips=24, frames=5, dim=8, backbone="xception")
    split = _split_without_cov_in_fold_0(fs)
    checkpoint, _ = make_checkpoint(root / "checkpoint", uri, key, split)
    out = root / "model"
    card = export_checkpoint(
        checkpoint, out, store=uri, provenance={"run": "r", "trial_id": "t"}
    ).card
    return out, card, uri


def test_report_sets_ours_beside_the_paper_row_and_flags_zero_support(exported, shared_data_dir):
    out, card, _ = exported
    csv = shared_data_dir / "paper" / "evaluation.csv"
    report = evaluate(out, paper_csv=csv)
    row = paper_row(read_evaluation(csv), "xception", 5)

    # Recomputed from the fold files, and equal to what the card records.
    assert report["matches_model_card"] is True
    assert report["folds"] == card["folds"]
    accs = [f["accuracy"] for f in card["folds"]]
    assert report["ours"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert report["ours"]["accuracy"]["std"] == pytest.approx(np.std(accs))  # population std

    assert report["paper"]["model_label"] == "xception-5"
    assert report["paper"]["accuracy"]["mean"] == pytest.approx(row.accuracy[0])
    assert report["deltas"]["accuracy"] == pytest.approx(
        report["ours"]["accuracy"]["mean"] - row.accuracy[0]
    )
    cov_recall = report["ours"]["per_class"]["cov"]["recall"]["mean"]
    assert report["deltas"]["cov_recall"] == pytest.approx(
        cov_recall - row.per_class["cov"]["recall"][0]
    )
    assert report["headline"]["accuracy"] == {"mean": 0.93, "std": 0.13}
    assert report["headline"]["delta_cov_recall"] == pytest.approx(cov_recall - 0.97)

    assert report["zero_support_folds"] == {"cov": [0], "pne": [], "reg": []}
    aware = report["support_aware"]["cov"]["recall"]
    supported = [card["folds"][i]["per_class"]["cov"]["recall"] for i in (1, 2)]
    assert aware["mean_supported"] == pytest.approx(np.mean(supported))
    assert aware["pooled"] == pytest.approx(
        report["summary"]["pooled"]["per_class"]["cov"]["recall"]
    )

    md = (out / "report.md").read_text()
    assert "| metric" in md and "ours xception-5" in md and "paper xception-5" in md
    assert f"{row.accuracy[0]:.3f} ± {row.accuracy[1]:.3f}" in md
    assert "no test clip of cov" in md and "fold 0" in md
    assert "NOT AVAILABLE" in md  # no nested result: a named placeholder, no numbers
    # Labels, intervals, the spatial-only baseline on the same folds, and the claim.
    assert "ours xception-5 (selected on test folds)" in md
    assert report["selected_on"].startswith("selected on the test folds")
    assert report["confidence"] == card["confidence"]
    assert report["baseline"]["folds"] == card["baseline"]["folds"]
    assert "spatial-only baseline" in md and "95% CI" in md and report["claim"] in md
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["paper"]["model_label"] == "xception-5"
    assert on_disk["zero_support_folds"]["cov"] == [0]
    for name in ("confusion_matrix.png", "fold_accuracy.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert any("skipped" in n and "< 2" in n for n in report["notes"])


def test_study_plots_from_an_optuna_storage(exported, tmp_path):
    out, _card, _ = exported
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    study.optimize(
        lambda t: t.suggest_float("x", 0, 1) - 0.1 * t.suggest_int("units", 1, 4), n_trials=4
    )
    report = evaluate(out, optuna_storage=url)
    assert report["plots"]["optimisation history"] == "history.png"
    assert report["plots"]["parameter importances"] == "importances.png"
    assert (out / "history.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "importances.png").read_bytes()[:4] == b"\x89PNG"
    assert report["paper"] is None  # no csv given: the paper columns are empty, not invented
    assert "–" in (out / "report.md").read_text()


def test_features_come_from_the_store_when_the_layout_copy_is_gone(exported, tmp_path):
    import shutil

    out, card, uri = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("features"))
    report = evaluate(copy)  # the store recorded in the card
    assert report["folds"] == card["folds"]
    assert any(uri in n for n in report["notes"])
    card_path = copy / "model_card.json"
    card_path.write_text(json.dumps({**card, "store": None}))
    with pytest.raises(FileNotFoundError, match="no feature store"):
        evaluate(copy)
    assert evaluate(copy, store=uri)["folds"] == card["folds"]


def test_cli_prints_the_table_and_the_report_path(exported, shared_data_dir, capsys, monkeypatch):
    out, _card, _ = exported
    monkeypatch.setenv("LUSHPO_DATA_DIR", str(shared_data_dir))
    assert main(["evaluate", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "paper xception-5" in printed and "accuracy" in printed
    assert f"report: {out / 'report.md'}" in printed
    assert main(["evaluate", str(out / "missing")]) == 2


def test_a_missing_sqlite_study_is_noted_not_created(exported, tmp_path):
    out, _card, _ = exported
    missing = tmp_path / "elsewhere.db"
    report = evaluate(out, optuna_storage=f"sqlite:///{missing}")
    assert not missing.exists()
    assert any("not on this machine" in n for n in report["notes"])
    assert "parameter importances" not in report["plots"]


def test_paper_config_trial_is_the_baseline_of_the_report(exported):
    from hpo.results import estimates_section
    from hpo.results._evaluate import paper_config_baseline

    _, card, _ = exported
    ours = {"accuracy": {"mean": 0.7, "std": 0.1}, "per_class": {"cov": {"recall": {"mean": 0.5}}}}
    trials = [
        {"trial_id": "a", "accuracy": 0.7, "accuracy_std": 0.1, "cov_recall": 0.5},
        {"trial_id": "p", "accuracy": 0.55, "accuracy_std": 0.05, "cov_recall": 0.3},
    ]
    assert paper_config_baseline({**card, "trials": trials}, ours) is None
    report = {"ours": ours, "card": {"trial_id": "a"}, "paper_config": None}
    assert "paper's own head and recipe is not in this study" in estimates_section(report)

    trials[1]["paper_best"] = True
    base = paper_config_baseline({**card, "trials": trials}, ours)
    assert base["trial_id"] == "p" and base["delta_accuracy"] == pytest.approx(0.15)
    table = estimates_section({**report, "paper_config": base})
    assert "trial p (fixed config)" in table and "0.550 ± 0.050" in table
