"""The k fold models of one config trained in lockstep (`LockstepCV`): one fixed-shape graph
step per epoch for every fold, per-fold Adam and early stopping; `cross_validate` without Ray,
and `fit_head`, one model on all clips."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from hpo.train._folds import FoldData, FoldState, _seed, fold_data
from hpo.train._metrics import flatten, fold_metrics, summarize
from hpo.train._model import build_model, predict_proba
from hpo.train._settings import STATE_FILE, TrialSettings
from pipeline.files import atomic_write_json
from pipeline.manifest import Split

__all__ = [
    "CVResult",
    "LockstepCV",
    "balanced_class_weights",
    "cross_validate",
    "cross_validate_with",
    "fit_head",
]


def _seed_states(model: keras.Model) -> list[Any]:
    """The model's random seed-generator state variables (dropout masks), in a fixed order."""
    return [v for v in model.variables if v.name == "seed_generator_state"]


def _loss_accuracy(proba: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Sparse cross-entropy (Keras' 1e-7 clipping) and accuracy of probabilities ``proba``."""
    proba = np.asarray(proba, dtype=np.float64)
    picked = np.clip(proba[np.arange(len(y)), y], 1e-7, 1 - 1e-7)
    return float(-np.mean(np.log(picked))), float(np.mean(proba.argmax(axis=1) == y))


def balanced_class_weights(y: np.ndarray) -> dict[int, float]:
    """scikit-learn's "balanced" weights, n / (classes present × count), as Keras' mapping."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(y)
    weights = compute_class_weight("balanced", classes=present, y=y)
    return {int(c): float(w) for c, w in zip(present, weights, strict=True)}


def fit_head(
    x: np.ndarray,
    y: np.ndarray,
    params: Mapping[str, Any],
    *,
    epochs: int,
    seed: int = 0,
) -> keras.Model:
    """The head built and fit on ``(x, y)`` for exactly `epochs` epochs, no validation split:
    the recipe of the exported all-clips ``model.h5`` and of nested CV's outer refits.
    ``params["class_weight"]`` and ``params["standardize"]`` apply as in `LockstepCV`."""
    keras.utils.set_random_seed(seed)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    norm = x if params.get("standardize") else None
    model = build_model(x.shape[1], x.shape[2], params, standardize_on=norm)
    model.fit(
        x,
        y,
        epochs=int(epochs),
        batch_size=int(params.get("batch_size", 32)),
        class_weight=balanced_class_weights(y) if params.get("class_weight") else None,
        shuffle=True,
        verbose=0,
    )
    return model


# Keras' Adam defaults, which `build_model` compiles with; `LockstepCV` applies the same update.
ADAM_BETA_1, ADAM_BETA_2, ADAM_EPSILON = 0.9, 0.999, 1e-7


class LockstepCV:
    """k fold models trained epoch by epoch together, one graph step for all their batches.

    Each fold keeps its own Keras model (built after ``keras.utils.set_random_seed(seed(trial,
    fold))``, standardised on its own inner training clips), its own class weights, Adam moments
    and step count, and its own early stopping. What is shared is the computation: one
    ``tf.function`` step takes a batch of every fold that trains in it, computes their losses in
    one graph, and applies each fold's Adam update (Keras' formula, `ADAM_BETA_1` …) to that
    fold's weights only, so k folds cost one Python call and one graph launch per step instead
    of k. Shapes are fixed per trial — every batch is padded to ``batch_size`` rows (weight 0),
    validation to the largest fold's size — so each graph is traced once. A fold that stops
    early leaves the step: the step graph is keyed by the set of folds that train, so a stopped
    fold costs no compute (one new trace per stopping event; validation still predicts it, a
    few percent of an epoch). Training data sits in tensors captured by the graphs (on the GPU
    when there is one); each step passes only row indices.

    Each epoch of each fold draws its batch order and dropout masks from ``seed(trial, fold,
    epoch)``, so results do not depend on which folds train alongside, or on a resume between
    epochs.
    """

    def __init__(
        self,
        folds: Sequence[FoldData],
        params: Mapping[str, Any],
        *,
        max_epochs: int,
        patience: int,
        seed: int = 0,
    ) -> None:
        self.folds = list(folds)
        self.params = dict(params)
        self.max_epochs, self.patience, self.seed = max_epochs, patience, seed
        self.epoch = 0  # epochs completed
        self.records: list[dict[str, Any]] = []  # one per lockstep epoch, from `step`
        self.states = [FoldState() for _ in self.folds]
        self.best_weights: list[list[np.ndarray] | None] = [None] * len(self.folds)
        self.batch_size = int(self.params.get("batch_size", 32))
        frames, dim = self.folds[0].x_train.shape[1:]
        self.models: list[keras.Model] = []
        for k in range(len(self.folds)):
            keras.utils.set_random_seed(_seed(self.seed, k))
            # Standardised on the fold's inner training clips only: never validation or test.
            norm = self.folds[k].x_train if self.params.get("standardize") else None
            self.models.append(build_model(frames, dim, self.params, standardize_on=norm))
        self._x_train = [tf.constant(f.x_train) for f in self.folds]
        self._y_train = [tf.constant(f.y_train, dtype=tf.int32) for f in self.folds]
        self._sample_weight = [tf.constant(self._class_weights(f.y_train)) for f in self.folds]
        rows = max(len(f.y_val) for f in self.folds)
        self._x_val = tf.constant(
            np.stack([np.resize(f.x_val, (rows, *f.x_val.shape[1:])) for f in self.folds])
        )
        self._moments = [
            [
                (tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v)))
                for v in m.trainable_variables
            ]
            for m in self.models
        ]
        self._adam_steps = tf.Variable(tf.zeros([len(self.folds)], dtype=tf.float32))
        self._steps: dict[tuple[int, ...], Callable[..., Any]] = {}
        self._predict_val = tf.function(self._predict_all)

    def _class_weights(self, y: np.ndarray) -> np.ndarray:
        """Each training clip's weight: its class's "balanced" weight, or 1."""
        from sklearn.utils.class_weight import compute_sample_weight

        balanced = compute_sample_weight("balanced", y) if self.params.get("class_weight") else 1
        return np.broadcast_to(np.asarray(balanced, dtype=np.float32), len(y))

    @property
    def done(self) -> bool:
        return self.epoch >= self.max_epochs or all(s.stopped for s in self.states)

    def step(self) -> dict[str, Any]:
        """Train every still-active fold for one epoch; return the epoch's record."""
        epoch = self.epoch
        active = [k for k, s in enumerate(self.states) if not s.stopped]
        losses = self._train_epoch(active, epoch)
        proba = np.asarray(self._predict_val(self._x_val))
        per_fold: list[dict[str, float] | None] = [None] * len(self.folds)
        for k in active:
            state, data = self.states[k], self.folds[k]
            val_loss, val_accuracy = _loss_accuracy(proba[k, : len(data.y_val)], data.y_val)
            record = {"loss": losses[k], "val_loss": val_loss, "val_accuracy": val_accuracy}
            state.history.append(record)
            if record["val_loss"] < state.best_val_loss:  # NaN never improves
                state.best_val_loss = record["val_loss"]
                state.best_val_accuracy = record["val_accuracy"]
                state.best_epoch = epoch + 1
                state.wait = 0
                self.best_weights[k] = self.models[k].get_weights()
            else:
                state.wait += 1
                if state.wait >= self.patience or not math.isfinite(record["loss"]):
                    state.stopped = True
                    self._restore_best(k)
            per_fold[k] = record
        self.epoch = epoch + 1
        record = self._record(per_fold)
        self.records.append(record)
        return record

    def _train_epoch(self, active: Sequence[int], epoch: int) -> dict[int, float]:
        """One epoch of the ``active`` folds: seeded batch orders and dropout masks, then steps of
        every fold that still has a batch (folds may differ by one batch); returns each fold's
        mean training loss weighted by batch size, as Keras reports it."""
        orders = {}
        for k in active:
            for i, variable in enumerate(_seed_states(self.models[k])):
                variable.assign(np.asarray([_seed(self.seed, k, epoch, i), 0], variable.dtype))
            rng = np.random.default_rng(_seed(self.seed, k, epoch, 2**20))
            orders[k] = rng.permutation(len(self.folds[k].y_train))
        sums = dict.fromkeys(active, 0.0)
        for start in range(0, max(len(o) for o in orders.values()), self.batch_size):
            stepping = tuple(k for k in active if start < len(orders[k]))
            index = np.zeros((len(stepping), self.batch_size), dtype=np.int32)
            count = np.zeros(len(stepping), dtype=np.float32)
            for j, k in enumerate(stepping):
                rows = orders[k][start : start + self.batch_size]
                index[j, : len(rows)] = rows
                count[j] = len(rows)
            step = self._steps.get(stepping)
            if step is None:
                step = self._steps[stepping] = self._make_step(stepping)
            for j, loss in enumerate(np.asarray(step(index, count))):
                sums[stepping[j]] += float(loss) * count[j]
        return {k: sums[k] / len(orders[k]) for k in active}

    def _make_step(self, folds: tuple[int, ...]) -> Callable[..., Any]:
        """The graph step of ``folds``: index ``[len(folds), batch]`` rows of each fold's training
        clips (``count`` real rows, the rest padding with weight 0), each fold's loss summed over
        its real rows ÷ their count (Keras' "sum_over_batch_size"), each fold's Adam update."""
        models = [self.models[k] for k in folds]
        variables = [m.trainable_variables for m in models]
        learning_rate = float(self.params["learning_rate"])

        def step(index: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
            real = tf.sequence_mask(tf.cast(count, tf.int32), self.batch_size, dtype=tf.float32)
            with tf.GradientTape() as tape:
                losses = []
                for j, (k, model) in enumerate(zip(folds, models, strict=True)):
                    x = tf.gather(self._x_train[k], index[j])
                    y = tf.gather(self._y_train[k], index[j])
                    weight = tf.gather(self._sample_weight[k], index[j]) * real[j]
                    # float32 even under mixed precision: the softmax layer is float32
                    loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True))
                    losses.append(tf.reduce_sum(loss * weight) / count[j])
                total = tf.add_n(losses)
            gradients = tape.gradient(total, variables)
            for j, k in enumerate(folds):
                t = self._adam_steps[k] + 1.0
                self._adam_steps[k].assign(t)
                alpha = learning_rate * tf.sqrt(1.0 - ADAM_BETA_2**t) / (1.0 - ADAM_BETA_1**t)
                for var, grad, (m, v) in zip(
                    variables[j], gradients[j], self._moments[k], strict=True
                ):
                    m.assign_add((grad - m) * (1.0 - ADAM_BETA_1))
                    v.assign_add((tf.square(grad) - v) * (1.0 - ADAM_BETA_2))
                    var.assign_sub(m * alpha / (tf.sqrt(v) + ADAM_EPSILON))
            return tf.stack(losses)

        return tf.function(step)

    def _predict_all(self, x: tf.Tensor) -> tf.Tensor:
        """Every fold model's probabilities on its own rows of ``x`` ``[folds, rows, …]``."""
        return tf.stack([m(x[k], training=False) for k, m in enumerate(self.models)])

    def _restore_best(self, k: int) -> None:
        if self.best_weights[k] is not None:
            self.models[k].set_weights(self.best_weights[k])

    def _record(self, per_fold: list[dict[str, float] | None]) -> dict[str, Any]:
        # A stopped fold counts with its best (restored) validation scores.
        pairs = list(zip(per_fold, self.states, strict=True))
        val_loss = [r["val_loss"] if r else s.best_val_loss for r, s in pairs]
        val_acc = [r["val_accuracy"] if r else s.best_val_accuracy for r, s in pairs]
        active = [r for r in per_fold if r]
        return {
            "epoch": self.epoch,
            "val_loss": float(np.mean(val_loss)),
            "val_accuracy": float(np.mean(val_acc)),
            "loss": float(np.mean([r["loss"] for r in active])) if active else math.nan,
            "active_folds": len(active),
            "folds": per_fold,
        }

    def finish(self) -> list[dict[str, Any]]:
        """Restore every fold's best weights and score it on its test fold with `predict_proba`,
        the call every later reader of the fold models (export, evaluate) makes."""
        out = []
        for k, (data, model, state) in enumerate(
            zip(self.folds, self.models, self.states, strict=True)
        ):
            self._restore_best(k)
            proba = predict_proba(model, data.x_test)
            y_pred = np.argmax(proba, axis=1)
            metrics = fold_metrics(data.y_test, y_pred)
            # the restored model on its inner-validation split: what `objective.on: validation`
            # searches and selects on (hpo.search.Objective), never the test fold
            val_pred = np.argmax(predict_proba(model, data.x_val), axis=1)
            metrics.update(
                validation=fold_metrics(data.y_val, val_pred),
                fold=k,
                test_ids=list(data.test_ids),
                y_true=data.y_test.tolist(),
                y_pred=y_pred.tolist(),
                probabilities=np.round(proba, 6).tolist(),
                best_epoch=state.best_epoch,
                epochs_trained=len(state.history),
                stopped_early=state.stopped,
                best_val_loss=state.best_val_loss,
                best_val_accuracy=state.best_val_accuracy,
                train_clips=len(data.y_train),
                val_clips=len(data.y_val),
            )
            out.append(metrics)
        return out

    # -- persistence of the lockstep state (resume) --

    def save(self, directory: Path, extra: Mapping[str, Any] | None = None) -> None:
        """Each fold's weights, Adam moments and best weights, and the early-stopping state."""
        directory.mkdir(parents=True, exist_ok=True)
        for k, model in enumerate(self.models):
            arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
            for i, (m, v) in enumerate(self._moments[k]):
                arrays[f"m{i}"], arrays[f"v{i}"] = m.numpy(), v.numpy()
            np.savez(directory / f"fold-{k}.npz", **arrays)
            best_weights = self.best_weights[k]
            if best_weights is not None:
                best = {f"w{i}": w for i, w in enumerate(best_weights)}
                np.savez(directory / f"fold-{k}-best.npz", **best)  # type: ignore[arg-type]
        state = {
            "epoch": self.epoch,
            "params": self.params,
            "seed": self.seed,
            "adam_steps": self._adam_steps.numpy().tolist(),
            "folds": [asdict(s) for s in self.states],
            "epochs": self.records,
            **(extra or {}),
        }
        atomic_write_json(directory / STATE_FILE, state, default=float)

    def restore(self, directory: Path) -> None:
        """Continue from a state written by `save` (same params and seed, checked)."""
        state = json.loads((directory / STATE_FILE).read_text())
        if state["params"] != self.params or state["seed"] != self.seed:
            raise ValueError(
                f"checkpoint {directory} is for params {state['params']} seed {state['seed']}, "
                f"not {self.params} seed {self.seed}"
            )
        if len(state["folds"]) != len(self.folds):
            raise ValueError(
                f"checkpoint {directory} has {len(state['folds'])} folds, not {len(self.folds)}"
            )
        for k, model in enumerate(self.models):
            with np.load(directory / f"fold-{k}.npz") as arrays:
                model.set_weights([arrays[f"w{i}"] for i in range(len(model.weights))])
                for i, (m, v) in enumerate(self._moments[k]):
                    m.assign(arrays[f"m{i}"])
                    v.assign(arrays[f"v{i}"])
            best = directory / f"fold-{k}-best.npz"
            if best.exists():
                with np.load(best) as arrays:
                    self.best_weights[k] = [arrays[f"w{i}"] for i in range(len(arrays.files))]
            self.states[k] = FoldState(**state["folds"][k])
        self._adam_steps.assign(np.asarray(state["adam_steps"], dtype=np.float32))
        self.epoch = int(state["epoch"])
        self.records = list(state["epochs"])


@dataclass
class CVResult:
    """What `cross_validate` returns: per-fold test metrics, their summary, the epoch records."""

    folds: list[dict[str, Any]]
    summary: dict[str, Any]
    metrics: dict[str, float]  # hpo.train.flatten(summary) + fold_{i}_accuracy
    epochs: list[dict[str, Any]]
    models: list[keras.Model]


def cross_validate(
    features: np.ndarray,
    labels: np.ndarray,
    clip_ids: Sequence[str],
    split: Split,
    params: Mapping[str, Any],
    *,
    max_epochs: int = 100,
    patience: int = 10,
    validation_fraction: float = 0.2,
    seed: int = 0,
    resume_from: Path | None = None,
    on_epoch: Callable[[LockstepCV, dict[str, Any]], None] | None = None,
) -> CVResult:
    """k-fold cross-validation of one head config on in-memory features; no Ray involved.

    Args:
        features: float32 ``[clips, frames, dim]``.
        labels: int label per clip (0 cov, 1 pne, 2 reg).
        clip_ids: id per clip, matched against ``split``'s fold ids.
        split: train/test clip ids per fold.
        params: a search-space point (``hpo.train``); ``batch_size`` defaults to 32;
            ``class_weight`` true weighs each fold's inner training labels "balanced";
            ``standardize`` true starts each fold's head with a ``Normalization`` layer adapted
            to that fold's inner training clips (`hpo.train.build_model`).
        resume_from: a directory written by ``LockstepCV.save``; training continues after
            its epoch, and its epoch records are kept.
        on_epoch: called after each lockstep epoch with the trainer and the epoch record.

    Returns:
        A `CVResult`; ``metrics["accuracy"]`` is the mean test accuracy over folds.
    """
    data = fold_data(
        features, labels, clip_ids, split, validation_fraction=validation_fraction, seed=seed
    )
    cv = LockstepCV(
        data,
        params,
        max_epochs=max_epochs,
        patience=patience,
        seed=seed,
    )
    if resume_from is not None:
        cv.restore(resume_from)
    while not cv.done:
        record = cv.step()
        if on_epoch is not None:
            on_epoch(cv, record)
    folds = cv.finish()
    summary = summarize(folds)
    metrics = flatten(summary)
    metrics.update({f"fold_{f['fold']}_accuracy": float(f["accuracy"]) for f in folds})
    validation = flatten(summarize([f["validation"] for f in folds]))
    metrics.update({f"validation_{k}": v for k, v in validation.items()})
    return CVResult(folds, summary, metrics, epochs=list(cv.records), models=cv.models)


def cross_validate_with(
    fs: Any, settings: TrialSettings, params: Mapping[str, Any], **kwargs: Any
) -> CVResult:
    """`cross_validate` of a feature set with the study's split, budget and seed."""
    return cross_validate(
        fs.features,
        fs.labels,
        fs.clip_ids,
        settings.split,
        params,
        max_epochs=settings.max_epochs,
        patience=settings.patience,
        validation_fraction=settings.validation_fraction,
        seed=settings.seed,
        **kwargs,
    )
