"""hpo.train: lockstep k-fold CV, early stopping, determinism, resume, and the Ray glue."""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

import hpo.train._trainable as trainable
from hpo.train import (
    PAPER_BEST,
    FoldData,
    LockstepCV,
    TrialSettings,
    balanced_class_weights,
    configure_tensorflow,
    cross_validate,
    fold_data,
    predict_proba,
    train_cv,
)
from hpo.train._folds import _seed
from pipeline.manifest import Fold, Split
from tests.support.featuresets import put_synthetic, synthetic_feature_set, synthetic_split

REPO = Path(__file__).resolve().parents[2]
TINY = {
    **PAPER_BEST,
    "lstm_units": 8,
    "lstm_dropout": 0.1,
    "dense_layers": 1,
    "dense_units_1": 8,
    "dense_dropout_1": 0.1,
    "batch_size": 32,  # one batch per epoch: one trace per fold model
    "learning_rate": 1e-2,
}
EPOCHS = 6


@pytest.fixture(scope="module")
def fs():
    return synthetic_feature_set(clips=30, frames=5, dim=16)


@pytest.fixture(scope="module")
def split(fs):
    return synthetic_split(fs, k=2)


@pytest.fixture(scope="module", autouse=True)
def _tf_settings(split):
    configure_tensorflow(
        TrialSettings("file:///unused", "unused", split, intra_op_threads=1, inter_op_threads=1)
    )


def _cv(fs, split, **kwargs):
    options = {"max_epochs": EPOCHS, "patience": 10, "seed": 1, **kwargs}
    return cross_validate(fs.features, fs.labels, fs.clip_ids, split, TINY, **options)


@pytest.fixture(scope="module")
def baseline(fs, split):
    return _cv(fs, split)


# --- settings and data selection ------------------------------------------------------------


def test_settings_pick_the_feature_set_and_pickle(split):
    single = TrialSettings("file:///s", "xception-f20-even-0123456789ab", split)
    assert single.feature_set_key({"lstm_units": 8}) == "xception-f20-even-0123456789ab"
    many = TrialSettings("file:///s", {"xception/20": "kx20", "vgg19/20": "kv20"}, split)
    assert many.feature_set_key({"backbone": "vgg19"}) == "kv20"  # one frames value: implied
    assert many.feature_set_key({"backbone": "xception", "frames": 20}) == "kx20"
    with pytest.raises(ValueError, match="lacks 'backbone' but feature_sets has several"):
        many.feature_set_key({})
    with pytest.raises(ValueError, match=r"no feature set for 'xception/5'"):
        many.feature_set_key({"backbone": "xception", "frames": 5})
    assert pickle.loads(pickle.dumps(many)) == many


def test_settings_reject_out_of_range_fields(split):
    with pytest.raises(ValueError, match=r"'validation_fraction': 1.5.*'patience': 0|patience"):
        TrialSettings("file:///s", "k", split, validation_fraction=1.5, patience=0)
    one_fold = Split("x", (split.folds[0],))
    with pytest.raises(ValueError, match="'split'"):
        TrialSettings("file:///s", "k", one_fold)


def test_fold_data_selects_by_id_with_a_stratified_seeded_inner_split(fs, split):
    folds = fold_data(fs.features, fs.labels, fs.clip_ids, split, validation_fraction=0.2, seed=4)
    again = fold_data(fs.features, fs.labels, fs.clip_ids, split, validation_fraction=0.2, seed=4)
    position = {cid: i for i, cid in enumerate(fs.clip_ids)}
    for data, fold, same in zip(folds, split.folds, again, strict=True):
        test = [position[c] for c in fold.test]
        np.testing.assert_array_equal(data.x_test, fs.features[test])
        np.testing.assert_array_equal(data.y_test, fs.labels[test])
        assert len(data.y_train) + len(data.y_val) == len(fold.train)
        assert sorted(np.bincount(data.y_val, minlength=3)) == [1, 1, 1]  # ~0.2 of 6-7 per class
        np.testing.assert_array_equal(data.x_val, same.x_val)
        train_rows = {r.tobytes() for r in data.x_train}
        assert not train_rows & {r.tobytes() for r in data.x_test}
        assert not train_rows & {r.tobytes() for r in data.x_val}


def test_fold_data_names_missing_clips(fs):
    bad = Split("paper", (Fold(("nope.gif", *fs.clip_ids[:5]), fs.clip_ids[5:8]),) * 2)
    with pytest.raises(ValueError, match=r"fold 0 names 1 clip\(s\) not in .*'nope.gif'"):
        fold_data(fs.features, fs.labels, fs.clip_ids, bad)


# --- cross-validation -----------------------------------------------------------------------


def test_cross_validate_learns_and_reports_the_paper_metrics(baseline, split):
    assert baseline.metrics["accuracy"] >= 0.8  # a learnable set; chance is 1/3
    assert len(baseline.folds) == 2 and len(baseline.epochs) == EPOCHS
    assert [e["epoch"] for e in baseline.epochs] == list(range(1, EPOCHS + 1))
    assert baseline.epochs[-1]["val_loss"] < baseline.epochs[0]["val_loss"]
    for k, fold in enumerate(baseline.folds):
        assert fold["test_ids"] == list(split.folds[k].test)
        assert sum(c["support"] for c in fold["per_class"].values()) == len(fold["test_ids"])
        assert fold["accuracy"] == pytest.approx(np.mean(np.equal(fold["y_true"], fold["y_pred"])))
        assert baseline.metrics[f"fold_{k}_accuracy"] == fold["accuracy"]
    assert baseline.metrics["accuracy"] == pytest.approx(
        np.mean([f["accuracy"] for f in baseline.folds])
    )
    assert {"cov_specificity_mean", "reg_f1_std", "accuracy_std"} <= set(baseline.metrics)
    # objective.on: validation's figures: the restored fold models on their inner-validation
    # splits (the clips early stopping watched), never the test folds
    assert [f["validation"]["accuracy"] for f in baseline.folds] == [
        pytest.approx(f["best_val_accuracy"]) for f in baseline.folds
    ]
    assert baseline.metrics["validation_accuracy"] == pytest.approx(
        np.mean([f["validation"]["accuracy"] for f in baseline.folds])
    )
    assert {"validation_cov_recall_mean", "validation_accuracy_std"} <= set(baseline.metrics)


def test_same_config_and_seed_give_the_same_metrics(fs, split, baseline):
    again = _cv(fs, split)
    assert again.metrics == pytest.approx(baseline.metrics, abs=1e-9)
    np.testing.assert_allclose(
        [e["val_loss"] for e in again.epochs], [e["val_loss"] for e in baseline.epochs], atol=1e-6
    )
    other = _cv(fs, split, seed=2, max_epochs=2)
    assert [e["val_loss"] for e in other.epochs] != [e["val_loss"] for e in baseline.epochs[:2]]


def test_resume_continues_from_the_saved_epoch(fs, split, baseline, tmp_path):
    class Interrupted(Exception):
        pass

    def stop_after_3(cv: LockstepCV, record: dict) -> None:
        if cv.epoch == 3:
            cv.save(tmp_path / "state")
            raise Interrupted

    with pytest.raises(Interrupted):
        _cv(fs, split, on_epoch=stop_after_3)
    state = json.loads((tmp_path / "state" / "lockstep.json").read_text())
    assert state["epoch"] == 3 and len(state["epochs"]) == 3
    assert sorted(p.name for p in (tmp_path / "state").glob("fold-*")) == [
        f"fold-{k}{suffix}" for k in range(2) for suffix in ("-best.npz", ".npz")
    ]
    seen: list[int] = []
    resumed = _cv(
        fs, split, resume_from=tmp_path / "state", on_epoch=lambda cv, r: seen.append(r["epoch"])
    )
    assert seen == list(range(4, EPOCHS + 1))  # continued, not restarted
    assert [e["epoch"] for e in resumed.epochs] == list(range(1, EPOCHS + 1))
    assert resumed.metrics == pytest.approx(baseline.metrics, abs=1e-6)
    np.testing.assert_allclose(
        [e["val_loss"] for e in resumed.epochs],
        [e["val_loss"] for e in baseline.epochs],
        atol=1e-6,
    )


def test_resume_refuses_a_checkpoint_of_other_params(fs, split, tmp_path):
    def save_then_stop(cv, record):
        cv.save(tmp_path)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _cv(fs, split, max_epochs=1, on_epoch=save_then_stop)
    data = fold_data(fs.features, fs.labels, fs.clip_ids, split)
    cv = LockstepCV(data, {**TINY, "learning_rate": 0.5}, max_epochs=2, patience=2, seed=1)
    with pytest.raises(ValueError, match=r"checkpoint .* is for params"):
        cv.restore(tmp_path)


def test_early_stopping_per_fold_restores_the_best_epoch(split):
    # A weak signal: validation loss stalls at different epochs in the two folds (seeded).
    weak = synthetic_feature_set(clips=30, frames=5, dim=16, signal=0.3)
    result = _cv(weak, split, max_epochs=40, patience=2)
    stopped = [f for f in result.folds if f["stopped_early"]]
    assert stopped
    for fold in stopped:
        assert fold["epochs_trained"] == fold["best_epoch"] + 2
        history = [r["folds"][fold["fold"]] for r in result.epochs[: fold["epochs_trained"]]]
        best = min(range(len(history)), key=lambda i: history[i]["val_loss"])
        assert best + 1 == fold["best_epoch"]
        assert fold["best_val_loss"] == pytest.approx(history[best]["val_loss"])
    assert len(result.epochs) == max(f["epochs_trained"] for f in result.folds)
    # Once a fold stops, the lockstep mean keeps counting its best validation loss.
    partial = [r for r in result.epochs if None in r["folds"]]
    assert partial, "expected the folds to stop at different epochs"
    for record in partial:
        losses = [
            r["val_loss"] if r is not None else fold["best_val_loss"]
            for r, fold in zip(record["folds"], result.folds, strict=True)
        ]
        assert record["active_folds"] == sum(r is not None for r in record["folds"])
        assert record["val_loss"] == pytest.approx(np.mean(losses))
    # The fold models hold their best epoch's weights: test scores come from those.
    assert all(f["best_epoch"] <= f["epochs_trained"] for f in result.folds)


def test_standardize_fits_each_fold_to_its_inner_training_clips_only(fs, split):
    # Unscaled features, as backbones give them: dimensions differ by orders of magnitude.
    scaled = replace(fs, features=fs.features * np.logspace(-2, 3, 16, dtype=np.float32) + 7)
    data = fold_data(scaled.features, scaled.labels, scaled.clip_ids, split)
    cv = LockstepCV(data, {**TINY, "standardize": True}, max_epochs=1, patience=1, seed=1)
    for fold, model in zip(data, cv.models, strict=True):
        norm = model.get_layer("standardize")
        flat = fold.x_train.reshape(-1, 16)
        np.testing.assert_allclose(np.ravel(norm.mean), flat.mean(axis=0), rtol=1e-4)
        np.testing.assert_allclose(np.ravel(norm.variance), flat.var(axis=0), rtol=1e-3)
        everything = np.concatenate([fold.x_train, fold.x_val, fold.x_test]).reshape(-1, 16)
        assert not np.allclose(np.ravel(norm.mean), everything.mean(axis=0), rtol=1e-4)
    plain = LockstepCV(data, TINY, max_epochs=1, patience=1, seed=1)
    assert "standardize" not in [layer.name for layer in plain.models[0].layers]


def test_class_weights_balance_the_inner_training_labels():
    weights = balanced_class_weights(np.array([0, 0, 0, 1, 2, 2]))
    assert weights == pytest.approx({0: 6 / 9, 1: 2.0, 2: 1.0})
    assert balanced_class_weights(np.array([1, 1, 2])) == pytest.approx({1: 0.75, 2: 1.5})


# --- one graph for k folds: same maths as k Keras models, traced once ---------------------------


def _uneven_folds(k: int = 5):
    """k folds with different training sizes (one needs an extra, short batch) and class skew."""
    rng = np.random.default_rng(7)
    out = []
    for n_train in (37, 29, 33, 31, 36)[:k]:
        x = rng.normal(size=(n_train + 14, 5, 16)).astype(np.float32)
        y = rng.integers(0, 3, n_train + 14)
        y[:3] = (0, 1, 2)
        out.append(
            FoldData(
                x[:n_train],
                y[:n_train],
                x[n_train : n_train + 6],
                y[n_train : n_train + 6],
                x[n_train + 6 :],
                y[n_train + 6 :],
                tuple(f"c{i}" for i in range(8)),
            )
        )
    return out


def test_one_batched_epoch_equals_keras_training_each_fold_alone():
    """Per-fold Adam, class weights and padded last batches: one lockstep epoch of k folds gives
    the weights and predictions that Keras' own ``train_on_batch`` gives each fold model alone,
    from the same initial weights and batch order (dropout 0, so no random masks)."""
    params = {
        **TINY,
        "lstm_dropout": 0.0,
        "dense_dropout_1": 0.0,
        "batch_size": 16,
        "class_weight": True,
    }
    folds = _uneven_folds(3)
    cv = LockstepCV(folds, params, max_epochs=1, patience=5, seed=3)
    alone = [keras.models.clone_model(m) for m in cv.models]
    for model, source in zip(alone, cv.models, strict=True):
        model.set_weights(source.get_weights())
        model.compile(
            optimizer=keras.optimizers.Adam(params["learning_rate"]),
            loss="sparse_categorical_crossentropy",
        )
    cv.step()
    for k, (model, data) in enumerate(zip(alone, folds, strict=True)):
        order = np.random.default_rng(_seed(3, k, 0, 2**20)).permutation(len(data.y_train))
        weights = balanced_class_weights(data.y_train)
        for start in range(0, len(order), 16):
            rows = order[start : start + 16]
            model.train_on_batch(data.x_train[rows], data.y_train[rows], class_weight=weights)
        for ours, theirs in zip(cv.models[k].get_weights(), model.get_weights(), strict=True):
            np.testing.assert_allclose(ours, theirs, atol=1e-5)
        np.testing.assert_allclose(
            predict_proba(cv.models[k], data.x_test),
            np.asarray(model.predict(data.x_test, verbose=0)),
            atol=1e-5,
        )


def test_a_trial_traces_each_graph_once_and_never_warns_of_retracing(caplog):
    """Fixed shapes per trial: one trace of the training step per set of training folds, one of
    the validation predict, none for scoring; TensorFlow's retracing warning never fires."""
    folds = _uneven_folds()
    with caplog.at_level("WARNING", logger="tensorflow"):
        cv = LockstepCV(folds, {**TINY, "batch_size": 16}, max_epochs=6, patience=2, seed=3)
        while not cv.done:
            cv.step()
        cv.finish()
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
    assert all(step.experimental_get_tracing_count() == 1 for step in cv._steps.values())
    # All five folds, then only those whose training rows need a third batch (37, 33, 36).
    assert {(0, 1, 2, 3, 4), (0, 2, 4)} <= set(cv._steps)
    assert cv._predict_val.experimental_get_tracing_count() == 1


# --- train_cv without a Ray cluster: the report adapter captured ------------------------------


class Reports(list):
    """What train_cv hands to Ray: ``(metrics, copy of the checkpoint dir or None)`` pairs."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __call__(self, metrics, checkpoint_dir=None) -> None:
        copy = None
        if checkpoint_dir is not None:
            copy = self.root / f"{len(list(self.root.glob('*')))}"
            shutil.copytree(checkpoint_dir, copy)
        self.append((dict(metrics), copy))


def _run(settings, reports, checkpoint=None):
    """train_cv in this process with Ray's session calls replaced by recorders."""
    import ray.tune

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainable, "_report", reports)
        patch.setattr(ray.tune, "get_checkpoint", lambda: checkpoint)
        train_cv(dict(TINY), settings)
    return reports


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    """One 4-epoch train_cv run on a file:// store, checkpointing every 2 epochs."""
    root = tmp_path_factory.mktemp("trial")
    uri, key, feature_set = put_synthetic(root / "store", clips=30, frames=5, dim=16)
    split = synthetic_split(feature_set, k=2)
    settings = TrialSettings(
        uri,
        key,
        split,
        max_epochs=4,
        patience=10,
        seed=1,
        checkpoint_every=2,
        checkpoint_interval_s=0,
    )
    return settings, _run(settings, Reports(root / "reported"))


def test_train_cv_reports_each_epoch_then_the_final_result(trial):
    settings, reports = trial
    epochs, (final, final_dir) = reports[:-1], reports[-1]
    assert [m["epoch"] for m, _ in epochs] == [1, 2, 3, 4]
    # Validation and test never share a key: epochs carry validation only.
    assert all(m["final"] is False and m["test_accuracy"] is None for m, _ in epochs)
    assert all(m["validation_accuracy"] is None for m, _ in epochs)  # the final models' only
    assert all("accuracy" not in m and 0 <= m["val_accuracy"] <= 1 for m, _ in epochs)
    assert [d is not None for _, d in epochs] == [False, True, False, False]  # epoch 2; 4 is last
    assert (epochs[1][1] / "lockstep.json").exists()
    assert final["final"] is True and final["epoch"] == 4
    trial_json = json.loads((final_dir / "trial.json").read_text())
    assert final["accuracy"] == pytest.approx(trial_json["summary"]["accuracy"]["mean"])
    assert final["test_accuracy"] == final["accuracy"] >= 0.8
    assert final["val_accuracy"] == epochs[-1][0]["val_accuracy"]
    assert trial_json["feature_set"] == settings.feature_sets and trial_json["params"] == TINY
    assert trial_json["split"] == settings.split.to_dict()
    assert [f["test_ids"] for f in trial_json["folds"]] == [
        list(f.test) for f in settings.split.folds
    ]
    assert all("support" in c for f in trial_json["folds"] for c in f["per_class"].values())
    assert len(trial_json["epochs"]) == 4
    names = sorted(p.name for p in final_dir.iterdir())
    assert names == ["fold-0.h5", "fold-1.h5", "trial.json"]
    model = keras.models.load_model(final_dir / "fold-1.h5")
    probabilities = model.predict(np.zeros((1, 5, 16), np.float32), verbose=0)
    assert probabilities.shape == (1, 3)


def _scores(result: dict) -> dict:
    """A report's numbers, without the validation history it carries for the searcher."""
    from hpo.train import HISTORY

    return {k: v for k, v in result.items() if k != HISTORY}


def test_train_cv_batches_epochs_between_reports_and_loses_none(trial, tmp_path):
    """With `report_every_s`, epochs between reports travel in the next report's history (a
    report is a driver round trip); checkpoints are still reported when due; every epoch's
    validation accuracy reaches the searcher exactly once, the last ones with the final result."""
    from hpo.train import HISTORY

    settings, every_epoch = trial
    batched = _run(replace(settings, report_every_s=3600), Reports(tmp_path / "batched"))
    assert [(m["epoch"], m["final"], d is not None) for m, d in batched] == [
        (2, False, True),  # the checkpoint at epoch 2 is reported at once
        (4, True, True),
    ]
    history = [entry for m, _ in batched for entry in m[HISTORY]]
    assert history == [[m["epoch"], m["val_accuracy"]] for m, _ in every_epoch[:-1]]
    assert every_epoch[-1][0][HISTORY] == []  # reported every epoch: nothing left for the final
    assert batched[-1][0]["accuracy"] == pytest.approx(every_epoch[-1][0]["accuracy"], abs=1e-6)


def test_train_cv_resumes_from_the_ray_checkpoint(trial, tmp_path):
    import ray.tune

    settings, first = trial
    state = ray.tune.Checkpoint.from_directory(str(first[1][1]))  # saved after epoch 2
    resumed = _run(settings, Reports(tmp_path / "resumed"), state)
    assert [m["epoch"] for m, _ in resumed] == [3, 4, 4]
    assert _scores(resumed[-1][0]) == pytest.approx(_scores(first[-1][0]), abs=1e-6)
    # A trial restarted after its final report re-reports the final result without training.
    done = ray.tune.Checkpoint.from_directory(str(first[-1][1]))
    again = _run(settings, Reports(tmp_path / "again"), done)
    assert len(again) == 1 and _scores(again[0][0]) == pytest.approx(_scores(first[-1][0]))
    # A checkpoint of another feature set is refused before any data is read.
    other = replace(settings, feature_sets="synthetic-f5-even-000000000000")
    with pytest.raises(ValueError, match=r"checkpoint .* is for feature set"):
        _run(other, Reports(tmp_path / "other"), state)


def test_train_cv_fails_clearly_on_a_missing_feature_set(trial, tmp_path):
    from pipeline.store import FeatureSetNotFoundError

    settings, _ = trial
    missing = "synthetic-f5-even-ffffffffffff"
    reports = Reports(tmp_path)
    with pytest.raises(FeatureSetNotFoundError, match=missing):
        _run(replace(settings, feature_sets=missing), reports)
    assert reports == []


# --- under a real Ray Tune run ----------------------------------------------------------------


def _crash_once_after_epoch_3(config, settings, marker):
    """Runs in the Ray worker: the first attempt dies right after reporting epoch 3."""
    import hpo.train._trainable as t

    real = t._report
    if not Path(marker).exists():

        def crashing(metrics, checkpoint_dir=None):
            real(metrics, checkpoint_dir)
            if metrics["epoch"] == 3 and not metrics["final"]:
                Path(marker).write_text("crashed")
                raise RuntimeError("injected crash after epoch 3")

        t._report = crashing
    try:
        t.train_cv(config, settings)
    finally:
        t._report = real


@pytest.mark.slow
@pytest.mark.integration
def test_ray_tune_retries_a_failed_trial_from_its_checkpoint(trial, tmp_path):
    import ray
    from ray import tune

    settings = replace(
        trial[0], max_epochs=5, patience=10, seed=1, checkpoint_every=1, intra_op_threads=1
    )
    marker = tmp_path / "crashed"
    ray.init(
        address="local",  # a fresh instance, never another test's running cluster
        num_cpus=1,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )
    try:
        tuner = tune.Tuner(
            tune.with_parameters(_crash_once_after_epoch_3, settings=settings, marker=str(marker)),
            param_space=dict(TINY),
            tune_config=tune.TuneConfig(num_samples=1, metric="test_accuracy", mode="max"),
            run_config=tune.RunConfig(
                name="resume",
                storage_path=str(tmp_path / "ray"),
                failure_config=tune.FailureConfig(max_failures=1),
                verbose=0,
            ),
        )
        result = tuner.fit()[0]
    finally:
        ray.shutdown()
    assert marker.exists(), "the first attempt did not crash"
    assert result.error is None
    assert result.metrics["final"] is True
    history = result.metrics_dataframe
    epochs = history.loc[~history["final"].astype(bool), "epoch"].tolist()
    assert epochs == [1, 2, 3, 4, 5]  # epoch 4 followed 3 after the retry: no restart from 1
    with result.checkpoint.as_directory() as directory:
        trial = json.loads((Path(directory) / "trial.json").read_text())
        names = sorted(p.name for p in Path(directory).glob("fold-*.h5"))
        assert names == ["fold-0.h5", "fold-1.h5"]
    assert result.metrics["accuracy"] == pytest.approx(trial["summary"]["accuracy"]["mean"])
    assert len(trial["epochs"]) == 5


_REUSED_WORKER = """
import logging, sys
from hpo.search import from_dict
from hpo.search._prepare import trial_settings
import tensorflow as tf
from hpo.train import configure_tensorflow
from tests.support.featuresets import synthetic_feature_set, synthetic_split

warnings = []
logging.getLogger("hpo.train").addHandler(
    type("H", (logging.Handler,), {"emit": lambda self, r: warnings.append(r.getMessage())})())
split = synthetic_split(synthetic_feature_set(clips=12, frames=2, dim=4), k=2)
cfg = from_dict({"name": "t", "store": "file:///unread", "split": {"kind": "stratified"},
                 "resources": {"cpu": 2}})
settings = trial_settings(cfg, {("synthetic", 2): "key"}, split)
assert (settings.intra_op_threads, settings.inter_op_threads) == (2, 2), settings
for _trial in range(3):  # the trials a reused worker runs one after another
    configure_tensorflow(settings)
    tf.constant([1.0]) + 1.0  # the runtime starts: its threads are fixed from here on
threading = tf.config.threading
got = (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads())
assert got == (2, 2), got
assert not warnings, warnings
cfg = from_dict({"name": "t", "store": "file:///unread", "split": {"kind": "stratified"},
                 "resources": {"cpu": 0.5, "intra_op_threads": 0}})
settings = trial_settings(cfg, {("synthetic", 2): "key"}, split)
assert (settings.intra_op_threads, settings.inter_op_threads) == (None, 1), settings
print("ok")
"""


def test_threads_default_to_the_trials_cpus_and_a_reused_worker_sets_them_once():
    """Issue 25: TensorFlow's pools are sized by the trial's CPUs, not the node's cores (0:
    TensorFlow's own default), and the later trials of a reused worker set nothing again, so
    they log no warning."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _REUSED_WORKER],
        capture_output=True, text=True, timeout=300, check=False,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr[-3000:]
