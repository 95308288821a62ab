"""One trial: k-fold cross-validation of one head config, as a Ray Tune function trainable.

``train_cv(config, settings)`` reads its feature set from the store through the node cache (the
driver never ships features), trains the k fold models in lockstep — epoch e of every fold, then
one report of the mean validation loss and accuracy, so ASHA can stop a bad trial early — and
finally scores every fold model on its test fold with the paper's metrics. Ray glue is thin: the
maths lives in `cross_validate` (no Ray), and `_report` is the only caller of Ray's report API.

Reported results. Validation and test never share a key. Per epoch (``final`` False):
``val_accuracy``, the mean *inner-validation* accuracy over folds (ASHA's metric and Optuna's
intermediate values), and ``test_accuracy`` and ``validation_accuracy`` None (Ray checks the
searcher's metric is in every result). The last result (``final`` True): ``test_accuracy``, the
mean *test* accuracy — the objective under ``objective.on: test_folds`` — plus
``hpo.train.flatten`` of the summary (``accuracy`` is the same test mean),
``fold_{i}_accuracy``, the same flattened metrics of the restored fold models on their
inner-validation splits as ``validation_*`` (``validation_accuracy`` is the objective under
``objective.on: validation``), and the last epoch's ``val_accuracy``.

Checkpoints. Every ``checkpoint_every`` epochs, but no sooner than ``checkpoint_interval_s``
after the trial's previous checkpoint (a save of five fold states costs about a second here, and
Ray copies it to storage; short trials then write none), the lockstep state (``fold-{i}.npz``:
weights and Adam moments; ``fold-{i}-best.npz`` best weights; ``lockstep.json`` with the epoch,
Adam step counts and the early-stopping state) goes with the report, so a retried trial resumes
from ``tune.get_checkpoint()``. The final checkpoint holds ``fold-{i}.h5`` (plain
``tf.keras.models.load_model``) and ``trial.json`` (docs/architecture.md, "Trial result").
A lockstep state of the paper's head is ~110 MB per fold (weights + Adam moments + best
weights), so studies should keep ``CheckpointConfig(num_to_keep=...)`` small.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from hpo.train._lockstep import (
    CVResult,
    LockstepCV,
    cross_validate_with,
)
from hpo.train._settings import HISTORY, STATE_FILE, TRIAL_FILE, TrialSettings
from hpo.train._tensorflow import configure_tensorflow
from pipeline.files import atomic_write_json
from pipeline.manifest import LABELS, Split
from pipeline.store import open_store

__all__ = [
    "train_cv",
    "training_record",
    "write_trial",
]


# --- Ray glue ----------------------------------------------------------------------------------


def _report(metrics: Mapping[str, Any], checkpoint_dir: Path | None = None) -> None:
    """The only caller of Ray's report API (its name moved across Ray versions)."""
    import ray
    from ray import tune

    checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
    # node_id shows where each trial ran (the study's progress view and the cluster tests use it).
    node_id = ray.get_runtime_context().get_node_id()
    tune.report({**metrics, "node_id": node_id}, checkpoint=checkpoint)


def _epoch_result(record: Mapping[str, Any], history: list[list[float]]) -> dict[str, Any]:
    """An epoch's report: validation only. The objectives (`hpo.search.Objective.metric`) are
    None until the final result (Ray Tune wants the searcher's metric in every result)."""
    result = {k: v for k, v in record.items() if k != "folds"}
    objectives = {"test_accuracy": None, "validation_accuracy": None}
    return {**result, **objectives, "final": False, HISTORY: history}


def write_trial(
    directory: Path,
    result: CVResult,
    *,
    params: Mapping[str, Any],
    feature_set: str,
    split: Split,
    training: Mapping[str, Any] | None = None,
) -> None:
    """The final checkpoint: ``fold-{i}.h5`` (no optimizer) and, last, ``trial.json``.

    `training` records the settings that shaped the fold models (seed, epochs, class weights,
    store), so an export can retrain the all-clips model the same way."""
    directory.mkdir(parents=True, exist_ok=True)
    for k, model in enumerate(result.models):
        tmp = directory / f".fold-{k}.tmp.h5"
        model.save(tmp, include_optimizer=False)
        os.replace(tmp, directory / f"fold-{k}.h5")
    trial = {
        "params": dict(params),
        "feature_set": feature_set,
        "split": split.to_dict(),
        "training": dict(training or {}),
        "folds": result.folds,
        "summary": result.summary,
        "metrics": result.metrics,
        "epochs": result.epochs,
        "labels": list(LABELS),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    atomic_write_json(directory / TRIAL_FILE, trial, default=float)


def training_record(settings: TrialSettings) -> dict[str, Any]:
    """The settings of `settings` that an export needs to retrain a trial's model."""
    return {
        "seed": settings.seed,
        "max_epochs": settings.max_epochs,
        "patience": settings.patience,
        "validation_fraction": settings.validation_fraction,
        "store_uri": settings.store_uri,
        "deterministic": settings.deterministic,
        "mixed_precision": settings.mixed_precision,
    }


def _final_result(
    result_metrics: Mapping[str, float],
    epochs: Sequence[Mapping[str, Any]],
    history: list[list[float]] | None = None,
) -> dict[str, Any]:
    """The trial's last report: the test scores (`test_accuracy`, the study's objective, is the
    mean test accuracy; `accuracy` and the rest are `hpo.train.flatten` of the summary) and the
    last epoch's validation accuracy, so ASHA's metric is present without being a test score."""
    val = epochs[-1].get("val_accuracy") if epochs else None
    return {
        **result_metrics,
        "test_accuracy": result_metrics["accuracy"],
        "val_accuracy": val,
        "epoch": len(epochs),
        "final": True,
        HISTORY: history or [],
    }


def train_cv(config: dict[str, Any], settings: TrialSettings) -> None:
    """Ray Tune function trainable; use as ``tune.with_parameters(train_cv, settings=...)``.

    Resumes from ``tune.get_checkpoint()`` when Ray restarts a failed trial: a lockstep state
    continues from its epoch; a final checkpoint re-reports its result.
    """
    # A reused worker (reuse_actors) runs trials one after another: Keras' state of the last
    # one (its models, the layer-name counters) goes, so each trial starts as in a fresh worker.
    keras.backend.clear_session()
    configure_tensorflow(settings)
    from ray import tune

    params = dict(config)
    key = settings.feature_set_key(config)
    checkpoint = tune.get_checkpoint()
    with tempfile.TemporaryDirectory(prefix="lushpo-trial-") as tmp:
        resume: Path | None = None
        if checkpoint is not None:
            resume = Path(checkpoint.to_directory(os.path.join(tmp, "restored")))
            if (resume / TRIAL_FILE).exists():
                trial = json.loads((resume / TRIAL_FILE).read_text())
                _report(_final_result(trial["metrics"], trial["epochs"]), resume)
                return
        extra = {"feature_set": key, "split_digest": settings.split.digest()}
        if resume is not None:
            saved = json.loads((resume / STATE_FILE).read_text())
            if [saved.get(k) for k in extra] != list(extra.values()):
                raise ValueError(
                    f"checkpoint {checkpoint} is for feature set {saved.get('feature_set')!r} "
                    f"and split {saved.get('split_digest')}, not {key!r} and split "
                    f"{extra['split_digest']}"
                )
        fs = open_store(settings.store_uri, settings.cache_dir).get(key)

        last_checkpoint = last_report = time.monotonic()
        pending: list[list[float]] = []  # epochs not reported yet

        def on_epoch(cv: LockstepCV, record: dict[str, Any]) -> None:
            nonlocal last_checkpoint, last_report
            pending.append([record["epoch"], record["val_accuracy"]])
            every = settings.checkpoint_every
            now = time.monotonic()
            due = every and cv.epoch % every == 0 and not cv.done
            checkpoint = due and now - last_checkpoint >= settings.checkpoint_interval_s
            if not checkpoint and now - last_report < settings.report_every_s:
                return  # the trial keeps training; the next report carries this epoch
            result = _epoch_result(record, pending.copy())
            pending.clear()
            if checkpoint:
                state_dir = Path(tempfile.mkdtemp(prefix="state-", dir=tmp))
                cv.save(state_dir, extra)
                _report(result, state_dir)
                last_checkpoint = time.monotonic()
            else:
                _report(result)
            last_report = time.monotonic()

        result = cross_validate_with(fs, settings, params, resume_from=resume, on_epoch=on_epoch)
        final_dir = Path(tmp) / "final"
        write_trial(
            final_dir,
            result,
            params=params,
            feature_set=key,
            split=settings.split,
            training=training_record(settings),
        )
        _report(_final_result(result.metrics, result.epochs, pending), final_dir)
