"""hpo.results: best-trial choice, the exported folder, and .h5 files that reproduce the card's
metrics when loaded with plain tf.keras in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from hpo.results import (
    CARD,
    MANIFEST,
    ExportError,
    OwnershipError,
    export_best,
    export_checkpoint,
    owned_files,
    read_card,
    read_paper_layout,
)
from hpo.search import Candidate, NoFiniteTrialError, final_epochs, select_best
from tests.support.featuresets import put_synthetic, synthetic_split
from tests.support.trial_checkpoint import TINY_PARAMS, make_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _c(trial_id, order, acc, rec=0.5, std=0.1):
    return Candidate(trial_id=trial_id, order=order, accuracy=acc, cov_recall=rec, accuracy_std=std)


def test_select_best_tie_break_order():
    assert select_best([_c("a", 0, 0.7), _c("b", 1, 0.8)]).trial_id == "b"
    # equal accuracy → higher COVID recall
    assert select_best([_c("a", 0, 0.8, rec=0.6), _c("b", 1, 0.8, rec=0.9)]).trial_id == "b"
    # equal accuracy and recall → lower std
    assert select_best([_c("a", 0, 0.8, std=0.2), _c("b", 1, 0.8, std=0.1)]).trial_id == "b"
    # all equal → earlier trial
    assert select_best([_c("b", 3, 0.8), _c("a", 1, 0.8)]).trial_id == "a"
    # NaN never wins; NaN tie-break values rank last
    assert select_best([_c("a", 0, float("nan")), _c("b", 1, 0.1)]).trial_id == "b"
    assert select_best([_c("a", 0, 0.8, rec=float("nan")), _c("b", 1, 0.8)]).trial_id == "b"
    with pytest.raises(NoFiniteTrialError, match="no trial with a finite accuracy"):
        select_best([_c("a", 0, float("nan"))])


def test_final_epochs_is_the_rounded_median():
    assert final_epochs([3, 7, 5]) == 5
    assert final_epochs([2, 3]) == 3  # 2.5 rounds up
    assert final_epochs([4, 1, 9, 2]) == 3
    with pytest.raises(ValueError):
        final_epochs([])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    uri, key, fs = put_synthetic(root / "store", clips=24, frames=4, dim=8, backbone="xception")
    split = synthetic_split(fs, k=3)
    # Standardised heads: the fresh-process check below covers the Normalization layer too.
    params = {**TINY_PARAMS, "standardize": True}
    checkpoint, _ = make_checkpoint(root / "checkpoint", uri, key, split, params=params)
    out = root / "model"
    result = export_checkpoint(
        checkpoint, out, store=uri, provenance={"run": "local-test", "trial_id": "t0"}
    )
    return out, result.card, fs, split, checkpoint, uri


def test_card_records_what_the_issue_asks(exported):
    out, card, fs, split, checkpoint, _ = exported
    assert read_card(out) == json.loads((out / CARD).read_text())
    assert card["params"] == {**TINY_PARAMS, "standardize": True}
    assert card["backbone"] == "xception" and card["frames"] == 4 and card["sampling"] == "even"
    assert card["weights_sha256"] == fs.spec.weights_sha256
    assert card["feature_set"] == fs.spec.key()
    assert card["dataset_digest"] == fs.spec.dataset_digest
    assert card["split"] == split.to_dict()
    assert card["clips"] == 24 and card["feature_dim"] == 8
    assert len(card["folds"]) == 3 and card["summary"]["folds"] == 3
    assert {"tensorflow", "keras", "numpy", "ray", "optuna"} <= set(card["library_versions"])
    assert card["run"] == "local-test" and card["trial_id"] == "t0"
    trial = json.loads((checkpoint / "trial.json").read_text())
    best = [f["best_epoch"] for f in trial["folds"]]
    assert card["fold_best_epochs"] == best
    assert card["final_model"]["epochs"] == final_epochs(best)
    # The all-clips model standardises with the statistics of every clip.
    norm = keras.models.load_model(out / "model.h5").get_layer("standardize")
    np.testing.assert_allclose(np.ravel(norm.mean), fs.features.reshape(-1, 8).mean(0), rtol=1e-4)
    # The copied fold files reproduce the trial's own test-fold metrics.
    assert card["trial_metrics_reproduced"] is True
    for ours, theirs in zip(card["folds"], trial["folds"], strict=True):
        assert ours["confusion_matrix"] == theirs["confusion_matrix"]
    assert sorted(p.name for p in out.glob("*.h5")) == [
        "fold-0.h5",
        "fold-1.h5",
        "fold-2.h5",
        "model.h5",
    ]
    assert [p.name for p in out.glob(".*")] == [MANIFEST]  # no temp files left behind
    # Labelled, with intervals, a spatial-only baseline on the same folds, and the claim.
    pooled = card["summary"]["pooled"]
    conf = card["confidence"]
    assert conf["clips"] == 24 and conf["level"] == 0.95
    assert conf["accuracy"]["estimate"] == pytest.approx(pooled["accuracy"])
    assert conf["accuracy"]["low"] <= conf["accuracy"]["estimate"] <= conf["accuracy"]["high"]
    for cls in ("cov", "pne", "reg"):
        assert conf["recall"][cls]["estimate"] == pytest.approx(pooled["per_class"][cls]["recall"])
    base = card["baseline"]
    assert "spatial-only baseline" in base["label"] and len(base["chosen_c"]) == 3
    assert "predictions" not in base and base["summary"]["folds"] == 3
    assert (
        "spatial-only baseline" in card["claim"] and "selected on the test folds" in card["claim"]
    )


def test_paper_layout_copy_holds_the_same_features(exported):
    out, card, fs, *_ = exported
    assert card["paper_layout"] == "features/features_4/xception"
    x, y = read_paper_layout(out / card["paper_layout"], list(fs.clip_ids))
    np.testing.assert_array_equal(x, fs.features)
    np.testing.assert_array_equal(y, fs.labels)


_FRESH = """
import json, sys
import numpy as np
import tensorflow as tf
from hpo.train import fold_metrics
from pipeline.store import open_store

out, uri = sys.argv[1], sys.argv[2]
card = json.load(open(f"{out}/model_card.json"))
fs = open_store(uri).get(card["feature_set"])
pos = {c: i for i, c in enumerate(fs.clip_ids)}
folds = []
for i, fold in enumerate(card["split"]["folds"]):
    model = tf.keras.models.load_model(f"{out}/fold-{i}.h5")
    rows = [pos[c] for c in fold["test"]]
    proba = model.predict(np.asarray(fs.features[rows]), batch_size=256, verbose=0)
    folds.append(fold_metrics(fs.labels[rows], proba.argmax(axis=1)))
final = tf.keras.models.load_model(f"{out}/model.h5")
print(json.dumps({"folds": folds, "final_shape": list(final.output_shape)}))
"""


@pytest.mark.slow  # a fresh TensorFlow import takes 15-50 s on the shared 2-core machine
def test_every_h5_loads_in_a_fresh_process_and_reproduces_the_card(exported):
    out, card, _fs, _split, _ckpt, uri = exported
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH, str(out), uri],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["folds"] == card["folds"]  # exactly: confusion matrices and every float
    assert got["final_shape"] == [None, 3]


def test_refuses_a_non_empty_folder_and_incomplete_checkpoints(exported, tmp_path):
    out, _card, _fs, _split, checkpoint, uri = exported
    with pytest.raises(OwnershipError, match="not empty"):
        export_checkpoint(checkpoint, out, store=uri)
    broken = tmp_path / "broken"
    broken.mkdir()
    trial = json.loads((checkpoint / "trial.json").read_text())
    trial["folds"] = trial["folds"][:2]
    (broken / "trial.json").write_text(json.dumps(trial))
    with pytest.raises(ExportError, match="metrics for 2 folds, split has 3"):
        export_checkpoint(broken, tmp_path / "out", store=uri)
    with pytest.raises(ExportError, match=r"trial\.json does not exist"):
        export_checkpoint(tmp_path / "nothing", tmp_path / "out2", store=uri)
    with pytest.raises(ExportError, match="no-run: no such run directory"):
        export_best(str(tmp_path / "no-run"), tmp_path / "out3", store=uri)
    assert not (tmp_path / "out3").exists()  # a failed export leaves no folder


@pytest.mark.slow
def test_export_best_of_a_real_tiny_study(tmp_path, s3_endpoint):
    """run_study on a local Ray instance, then export its best trial and check the choice; the
    same run copied to S3 (moto on loopback) exports the same trial from its s3:// URI."""
    import ray

    from hpo.search import from_dict, run_study

    uri, _key, _fs = put_synthetic(tmp_path / "store", clips=24, frames=4, dim=8)
    cfg = from_dict(
        {
            "name": "tiny",
            "store": uri,
            "feature_set": {"backbone": "synthetic", "frames": 4},
            "split": {"kind": "stratified", "k": 3, "seed": 0},
            "space": {"lstm_units": [8, 16], "dense_layers": 1, "dense_units_1": [8, 16]},
            "budget": {"trials": 2, "max_concurrent": 1, "max_epochs": 2, "patience": 2},
            "resources": {"cpu": 1, "intra_op_threads": 1},
            "storage": {"storage_path": str(tmp_path / "runs")},
            "cache_dir": str(tmp_path / "cache"),
        },
        source="test",
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_study(cfg, log=lambda _m: None)
    finally:
        ray.shutdown()
    done = [t for t in result.trials if t.value is not None]
    import optuna

    from hpo.search import TUNE_ID_ATTR

    # Ties (same accuracy, recall and spread, likely on 24 random clips) go to the earlier trial:
    # Optuna's trial number is the order in which Tune made them.
    study = optuna.load_study(study_name="tiny", storage=result.optuna_storage)
    order = {t.user_attrs.get(TUNE_ID_ATTR): t.number for t in study.get_trials(deepcopy=False)}
    expected = select_best(
        [
            _c(
                t.trial_id,
                order[t.trial_id],
                float(t.metrics["accuracy"]),
                float(t.metrics["cov_recall_mean"]),
                float(t.metrics["accuracy_std"]),
            )
            for t in done
        ]
    )
    from hpo.cli import main

    assert main(["export", cfg.run_path, "--out", str(tmp_path / "model"), "--store", uri]) == 0
    card = read_card(tmp_path / "model")
    assert card["trial_id"] == expected.trial_id
    assert card["summary"]["accuracy"]["mean"] == pytest.approx(expected.accuracy, abs=1e-12)
    assert card["selection"]["candidates"] == len(done)
    assert card["selection"]["selected_on"].startswith("selected on the test folds")
    assert card["study"]["study_name"] == "tiny"
    assert card["study"]["optuna_storage"].startswith("sqlite:///")
    assert card["trial_metrics_reproduced"] is True
    assert len(card["trials"]) == len(done)

    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint.url)
    client.create_bucket(Bucket="runs")
    run_dir = Path(cfg.run_path)
    for path in run_dir.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "runs", f"studies/tiny/{path.relative_to(run_dir)}")
    from_s3 = export_best(
        "s3://runs/studies/tiny", tmp_path / "from-s3", store=uri, endpoint_url=s3_endpoint.url
    )
    assert from_s3.card["trial_id"] == card["trial_id"]
    assert from_s3.card["folds"] == card["folds"]
    assert from_s3.card["run"] == "s3://runs/studies/tiny"


def test_a_nested_result_of_other_data_or_folds_is_refused(exported, tmp_path):
    _, card, fs, split, checkpoint, uri = exported
    ours = {"feature_set": fs.spec.key(), "outer_split": {"digest": split.digest()}}
    nested = {**ours, "accuracy": {"mean": 0.6, "std": 0.1}}
    same = export_checkpoint(
        checkpoint, tmp_path / "same", store=uri, provenance={"nested": nested}
    ).card
    assert same["nested"] == nested and "nested_refused" not in same
    assert "nested-CV estimate (honest), 0.600" in same["claim"]
    for other in ({"feature_set": "resnet50-f4-even-0"}, {"outer_split": {"digest": "ab" * 32}}):
        lines: list[str] = []
        card = export_checkpoint(
            checkpoint,
            tmp_path / "other",
            store=uri,
            overwrite=True,
            provenance={"nested": {**nested, **other}},
            log=lines.append,
        ).card
        assert card["nested"] is None and card["nested_refused"].startswith("nested.json refused")
        assert any("nested.json refused" in line for line in lines)
        assert "selected on the test folds" in card["claim"]


def _listing(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_overwrite_replaces_only_what_lushpo_wrote(exported, tmp_path):
    """Issue 23, item 1: --overwrite removes only the files an export's list names, refuses a
    folder with no list (naming what it would touch), and a failed export changes nothing."""
    _, _card, _fs, _split, checkpoint, uri = exported
    users = tmp_path / "users"
    (users / "features" / "mine").mkdir(parents=True)
    (users / "report.md").write_text("my notes")
    (users / "holiday.png").write_text("p")
    (users / "features" / "mine" / "important.csv").write_text("d")
    before = _listing(users)
    with pytest.raises(OwnershipError, match=r"holds files lushpo did not write \(features/mine"):
        export_checkpoint(checkpoint, users, store=uri, overwrite=True)
    assert _listing(users) == before

    out = tmp_path / "out"
    export_checkpoint(checkpoint, out, store=uri)
    owned = owned_files(out)
    assert CARD in owned and "model.h5" in owned and not any(n.startswith(".") for n in owned)
    assert owned == set(_listing(out)) - {MANIFEST}
    # The card and the list have the mode of the files Keras wrote (mkstemp's 0600 before).
    modes = {name: (out / name).stat().st_mode & 0o777 for name in (CARD, MANIFEST, "model.h5")}
    assert modes[CARD] == modes[MANIFEST] == modes["model.h5"], modes
    (out / "notes.txt").write_text("mine")
    (out / "features" / "mine").mkdir()
    (out / "features" / "mine" / "important.csv").write_text("d")
    listed = json.loads((out / MANIFEST).read_text())
    listed["files"].append("fold-9.h5")  # as an earlier export with more folds wrote it
    (out / MANIFEST).write_text(json.dumps(listed))
    (out / "fold-9.h5").write_text("from an earlier export")
    previous = _listing(out)

    # A failed export (its feature set is gone from the store) changes nothing in the folder.
    with pytest.raises(Exception, match="not found"):
        export_checkpoint(checkpoint, out, store=str(tmp_path / "empty-store"), overwrite=True)
    assert _listing(out) == previous
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.export-")]

    export_checkpoint(checkpoint, out, store=uri, overwrite=True)
    after = _listing(out)
    assert after["notes.txt"] == b"mine" and after["features/mine/important.csv"] == b"d"
    assert "fold-9.h5" not in after and owned_files(out) == owned

    # A new export's file where the user keeps one of the same name: refused, nothing moved.
    (out / "fold-0.h5").unlink()
    listed = json.loads((out / MANIFEST).read_text())
    listed["files"].remove("fold-0.h5")
    (out / MANIFEST).write_text(json.dumps(listed))
    (out / "fold-0.h5").write_text("the user's")
    previous = _listing(out)
    with pytest.raises(OwnershipError, match=r"fold-0\.h5, which lushpo did not write"):
        export_checkpoint(checkpoint, out, store=uri, overwrite=True)
    assert _listing(out) == previous


def test_export_reads_the_store_the_trial_read(exported, tmp_path, monkeypatch):
    """Issue 23: `tune --store X` then `export RUN` looked in the project's store instead."""
    _, _card, _fs, _split, checkpoint, uri = exported
    monkeypatch.setenv("LUSHPO_STORE", (tmp_path / "another-store").as_uri())
    card = export_checkpoint(checkpoint, tmp_path / "out").card
    assert card["store"] == uri
