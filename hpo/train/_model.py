"""The paper's CNN-LSTM head over per-frame backbone features, and its spatial-only rivals.

Barros et al. feed ``[frames, dim]`` backbone features to one LSTM, then one to three ReLU dense
layers, then a 3-way softmax (cov, pne, reg). ``params["head"]`` picks the temporal layer
(`HEADS`): ``lstm`` (the paper's, and the default), ``gru`` (same units and dropouts), or
``pooled`` — the mean over frames, which ignores frame order, so the search can test the paper's
claim that time matters. ``pooled`` ignores ``lstm_units``/``lstm_dropout``/``recurrent_dropout``.

The model uses only built-in Keras layers, so a ``model.save("fold-0.h5")`` file loads with
plain ``tf.keras.models.load_model(path)`` and no ``custom_objects`` — the same way
the paper's notebook loads its published models.

Optionally the head starts with a ``Normalization`` layer adapted to its training clips: backbone
features are unscaled (Xception's pooled activations span orders of magnitude across dimensions),
and standardising them per dimension lets a small head train on ~100 clips. Its mean and variance
are layer weights, so the saved model standardises raw features by itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from hpo.train._space import HEADS, RECURRENT_KEYS
from pipeline.manifest import LABELS

__all__ = [
    "MAX_DENSE_LAYERS",
    "PREDICT_BATCH",
    "build_model",
    "head_of",
    "predict_proba",
    "required_params",
]

MAX_DENSE_LAYERS = 3
"""Dense blocks the search space can ask for; ``dense_units_i``/``dense_dropout_i`` for
``i > dense_layers`` are ignored (a flat trial from before the conditional space holds them)."""


def head_of(params: Mapping[str, Any]) -> str:
    """The head a param set builds; trials from before the ``head`` dimension are ``lstm``."""
    return str(params.get("head", "lstm"))


def required_params(dense_layers: int, head: str = "lstm") -> tuple[str, ...]:
    """The keys ``build_model`` reads for a head with ``dense_layers`` dense blocks."""
    keys = [*(RECURRENT_KEYS if head != "pooled" else ()), "dense_layers", "learning_rate"]
    for i in range(1, dense_layers + 1):
        keys += [f"dense_units_{i}", f"dense_dropout_{i}"]
    return tuple(keys)


def _check(params: Mapping[str, Any]) -> int:
    """Validate the keys the head reads; return the number of dense blocks."""
    head = head_of(params)
    if head not in HEADS:
        raise ValueError(f"model param 'head' must be one of {list(HEADS)}, got {head!r}")
    layers = params.get("dense_layers")
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= 3:
        raise ValueError(f"model param 'dense_layers' must be an int in 1..3, got {layers!r}")
    required = required_params(layers, head)
    missing = [k for k in required if k not in params]
    if missing:
        raise ValueError(f"model params lack {missing} ({layers=}, {head=}); got {sorted(params)}")
    blocks = range(1, layers + 1)
    dropouts = ["lstm_dropout", "recurrent_dropout", *(f"dense_dropout_{i}" for i in blocks)]
    for key in (k for k in dropouts if k in required):
        if not 0.0 <= float(params[key]) < 1.0:
            raise ValueError(f"model param {key!r} must be in [0, 1), got {params[key]!r}")
    units = ["lstm_units", *(f"dense_units_{i}" for i in blocks)]
    for key in (k for k in units if k in required):
        if int(params[key]) != params[key] or int(params[key]) < 1:
            raise ValueError(f"model param {key!r} must be a positive int, got {params[key]!r}")
    if not float(params["learning_rate"]) > 0:
        raise ValueError(f"model param 'learning_rate' must be > 0, got {params['learning_rate']}")
    return layers


def build_model(
    frames: int,
    dim: int,
    params: Mapping[str, Any],
    *,
    sparse_labels: bool = True,
    standardize_on: np.ndarray | None = None,
) -> keras.Model:
    """Build and compile the head: Input(frames, dim) → LSTM, GRU or mean over frames → dense
    blocks → Dense(3, softmax).

    Args:
        frames: frames per clip (N).
        dim: feature size per frame (D, e.g. 2048 for Xception).
        params: a point of ``hpo.train.search_space()``: ``head`` (`HEADS`, default
            ``lstm``), ``lstm_units``, ``lstm_dropout``,
            ``recurrent_dropout``, ``dense_layers`` (1..3), ``dense_units_i`` and
            ``dense_dropout_i`` for i ≤ dense_layers (others ignored), ``learning_rate``.
            Extra keys (``batch_size``, ``backbone``, ...) are ignored.
        sparse_labels: integer labels (sparse categorical cross-entropy) when true, one-hot
            labels (categorical cross-entropy, as in the paper's notebook) when false.
        standardize_on: training features ``[clips, frames, dim]``; when given, the head starts
            with a ``Normalization`` layer holding their per-dimension mean and variance. Pass
            only the clips the model trains on, never test clips. None: raw features (paper).

    Returns:
        A compiled ``keras.Model`` (Adam, cross-entropy, accuracy).

    Raises:
        ValueError: naming the missing or out-of-range parameter.
    """
    if frames < 1 or dim < 1:
        raise ValueError(f"build_model needs frames >= 1 and dim >= 1, got {frames=}, {dim=}")
    layers = _check(params)
    inputs = keras.Input(shape=(frames, dim), name="features")
    x = inputs
    if standardize_on is not None:
        if standardize_on.ndim != 3 or standardize_on.shape[1:] != (frames, dim):
            raise ValueError(
                f"standardize_on must have shape [clips, {frames}, {dim}], "
                f"got {standardize_on.shape}"
            )
        norm = keras.layers.Normalization(axis=-1, name="standardize")
        norm.adapt(np.asarray(standardize_on, dtype=np.float32))
        x = norm(x)
    head = head_of(params)
    if head == "pooled":
        x = keras.layers.GlobalAveragePooling1D(name="mean_over_frames")(x)
    else:
        recurrent = keras.layers.LSTM if head == "lstm" else keras.layers.GRU
        x = recurrent(
            int(params["lstm_units"]),
            dropout=float(params["lstm_dropout"]),
            recurrent_dropout=float(params["recurrent_dropout"]),
            name=head,
        )(x)
    for i in range(1, layers + 1):
        x = keras.layers.Dense(
            int(params[f"dense_units_{i}"]), activation="relu", name=f"dense_{i}"
        )(x)
        x = keras.layers.Dropout(float(params[f"dense_dropout_{i}"]), name=f"dropout_{i}")(x)
    # float32 softmax under a mixed-precision policy: bfloat16 probabilities lose the last digits.
    outputs = keras.layers.Dense(
        len(LABELS), activation="softmax", name="probabilities", dtype="float32"
    )(x)
    model = keras.Model(inputs, outputs, name=f"cnn_{head}_head")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=float(params["learning_rate"])),
        loss="sparse_categorical_crossentropy" if sparse_labels else "categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


PREDICT_BATCH = 256
"""Rows per call of every prediction made for metrics (hpo.train scores test folds the same
way), so every process sees identical numbers."""


def predict_proba(model: Any, features: np.ndarray) -> np.ndarray:
    """Class probabilities [clips, 3] in calls of at most `PREDICT_BATCH` rows.

    The model is called directly rather than through ``model.predict``: ``predict`` traces a
    ``tf.function`` per model and input size, and scoring k fold models one after another on
    folds of different sizes retraced it each time (TensorFlow's retracing warning)."""
    x = np.asarray(features, dtype=np.float32)
    parts = [
        np.asarray(model(x[start : start + PREDICT_BATCH], training=False), dtype=np.float64)
        for start in range(0, len(x), PREDICT_BATCH)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, len(LABELS)))
