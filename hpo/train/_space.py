"""The search space (a superset of the paper's) and the paper's best head as a starting point.

The space is conditional: a trial draws only its active dimensions (`active`), the structural
ones first (`draw_order`: the backbone and N when searched, ``head``, ``dense_layers``), then the
dense blocks up to ``dense_layers`` and the recurrent layer's keys only for a recurrent head. An
inactive dimension would otherwise pollute TPE's per-dimension model, and trials differing only in
it would train the same model. Points (the paper's best) may hold every key; the inactive ones
are not drawn. Optionally the backbone and the frame count N are dimensions too, so one study
covers what the paper ran as 68 separate studies.

Overrides come from the study YAML (``space:``) and replace one dimension's choices or range:
a list (categorical choices), a mapping ``{low, high[, log]}`` (a range; int-valued dimensions
take ``step`` too), or a single value (the dimension is fixed).

``head`` picks the temporal layer (`HEADS`, built by `hpo.train`): ``lstm`` (the paper's, the
default and the only choice unless overridden), ``gru``, or ``pooled`` (mean over frames,
spatial only). Override it with one name or a list, e.g. ``head: [lstm, pooled]``.

``recurrent_dropout`` is fixed at 0 unless a study overrides it: Keras runs an LSTM on the fast
cuDNN kernel only with ``recurrent_dropout == 0`` (docs/performance.md has the trade-off).

Two dimensions are the training recipe rather than the architecture, both off in the paper and
fixed off by default: ``class_weight`` ("balanced" class weights in each training split) and
``standardize`` (per-dimension feature standardisation fitted to each training split, see
`hpo.train`). Searching them (``[false, true]``) keeps the paper's own recipe a point of the space.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

__all__ = [
    "HEADS",
    "PAPER_BEST",
    "RECURRENT_KEYS",
    "STRUCTURE",
    "InvalidSpaceError",
    "active",
    "draw_order",
    "is_paper_best",
    "paper_best",
    "search_space",
    "shown_params",
    "study_space",
]

UNITS = (32, 64, 128, 256, 512, 1024)

HEADS = ("lstm", "gru", "pooled")
"""Temporal layers over the frame axis (`hpo.train`); ``pooled``, the mean over frames, is
spatial-only."""

RECURRENT_KEYS = ("lstm_units", "lstm_dropout", "recurrent_dropout")
"""The dimensions only the recurrent heads (``lstm``, ``gru``) read."""

PAPER_BEST: dict[str, Any] = {
    # Architecture and the 0.4 dropout: the paper's abstract (b-mandelbrot/pulmonary-covid19
    # README.md) and the Keras summary of the published Xception-20 fold model printed in its
    # notebook xception-lstm.ipynb (and model_params.txt): LSTM 512 → Dense 1024 → Dense 1024 →
    # Dense 3, 6,822,915 params. That summary lists no Dropout layer, so the 0.4 is the LSTM's
    # own input dropout and the dense blocks have none.
    "head": "lstm",
    "lstm_units": 512,
    "lstm_dropout": 0.4,
    "dense_layers": 2,
    "dense_units_1": 1024,
    "dense_dropout_1": 0.0,
    "dense_units_2": 1024,
    "dense_dropout_2": 0.0,
    # Not in the notebook, README or model_params.txt (the notebook only loads the trained .h5
    # files): Keras defaults — LSTM recurrent_dropout 0, Adam learning_rate 1e-3, fit batch 32.
    "recurrent_dropout": 0.0,
    "learning_rate": 1e-3,
    "batch_size": 32,
    # Inactive when dense_layers == 2 (not drawn); present so the point covers every key.
    "dense_units_3": 1024,
    "dense_dropout_3": 0.0,
    # The notebook fits raw backbone features without class weights.
    "class_weight": False,
    "standardize": False,
}
"""The paper's best Xception-LSTM head (20 frames) as a full point of the default space."""

PAPER_BEST_FEATURES: dict[str, Any] = {"backbone": "xception", "frames": 20}


class InvalidSpaceError(ValueError):
    """A search-space override has an unknown key or a value of the wrong form."""


FLAGS = ("class_weight", "standardize")
"""True/false dimensions: a single value or a list of them, never a range."""


def _defaults() -> dict[str, BaseDistribution]:
    space: dict[str, BaseDistribution] = {
        "head": CategoricalDistribution(("lstm",)),
        "lstm_units": CategoricalDistribution(UNITS),
        "lstm_dropout": FloatDistribution(0.0, 0.6),
        # Fixed at 0: Keras runs an LSTM on the cuDNN kernel only then (docs/performance.md).
        "recurrent_dropout": CategoricalDistribution((0.0,)),
        "dense_layers": IntDistribution(1, 3),
    }
    for i in (1, 2, 3):
        space[f"dense_units_{i}"] = CategoricalDistribution(UNITS)
        space[f"dense_dropout_{i}"] = FloatDistribution(0.0, 0.6)
    space["learning_rate"] = FloatDistribution(1e-5, 1e-2, log=True)
    space["batch_size"] = CategoricalDistribution((8, 16, 32))
    for flag in FLAGS:
        space[flag] = CategoricalDistribution((False,))
    return space


# What each dimension may hold: (kind, low, high, high_inclusive), checked on every override.
_BOUNDS: dict[str, tuple[type, float, float, bool]] = {
    "lstm_units": (int, 1, float("inf"), True),
    "recurrent_dropout": (float, 0.0, 1.0, False),
    "lstm_dropout": (float, 0.0, 1.0, False),
    "dense_layers": (int, 1, 3, True),
    "learning_rate": (float, 0.0, float("inf"), True),
    "batch_size": (int, 1, float("inf"), True),
}
for _i in (1, 2, 3):
    _BOUNDS[f"dense_units_{_i}"] = _BOUNDS["lstm_units"]
    _BOUNDS[f"dense_dropout_{_i}"] = _BOUNDS["lstm_dropout"]


def _describe(key: str) -> str:
    kind, low, high, closed = _BOUNDS[key]
    if key == "learning_rate":
        rng = "> 0"
    elif high == float("inf"):
        rng = f">= {low:g}"
    else:
        rng = f"in [{low:g}, {high:g}{']' if closed else ')'}"
    name = "int" if kind is int else "number"
    return (
        f"a list of {name}s {rng}, a mapping {{low, high[, log"
        f"{', step' if kind is int else ''}]}} with values {rng}, or a single {name} {rng}"
    )


def _value(key: str, value: Any, where: str) -> int | float:
    kind, low, high, closed = _BOUNDS[key]
    ok_type = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        ok_type = ok_type and float(value) == int(value)
    in_range = ok_type and low <= value and (value <= high if closed else value < high)
    if key == "learning_rate":
        in_range = ok_type and value > 0
    if not in_range:
        raise InvalidSpaceError(
            f"search space override {where} must be {_describe(key)}; got {value!r}"
        )
    return int(value) if kind is int else float(value)


def _flag(key: str, spec: Any) -> CategoricalDistribution:
    values = list(spec) if isinstance(spec, Sequence) and not isinstance(spec, str) else [spec]
    if not values or any(not isinstance(v, bool) for v in values) or len(set(values)) < len(values):
        raise InvalidSpaceError(
            f"search space override 'space.{key}' must be true, false or a list of distinct "
            f"true/false values; got {spec!r}"
        )
    return CategoricalDistribution(tuple(values))


def _head(spec: Any) -> CategoricalDistribution:
    values = list(spec) if isinstance(spec, Sequence) and not isinstance(spec, str) else [spec]
    if not values or any(v not in HEADS for v in values) or len(set(values)) < len(values):
        raise InvalidSpaceError(
            f"search space override 'space.head' must be one of {list(HEADS)} or a list of "
            f"distinct ones; got {spec!r}"
        )
    return CategoricalDistribution(tuple(values))


def _override(key: str, spec: Any) -> BaseDistribution:
    if key in FLAGS:
        return _flag(key, spec)
    if key == "head":
        return _head(spec)
    where = f"'space.{key}'"
    kind = _BOUNDS[key][0]
    if isinstance(spec, Mapping):
        extra = set(spec) - {"low", "high", "log", "step"}
        if extra or "low" not in spec or "high" not in spec or (kind is float and "step" in spec):
            raise InvalidSpaceError(
                f"search space override {where} must be {_describe(key)}; got {dict(spec)!r}"
            )
        low = _value(key, spec["low"], f"{where} low")
        high = _value(key, spec["high"], f"{where} high")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise InvalidSpaceError(f"search space override {where} log must be true/false")
        if low > high:
            raise InvalidSpaceError(f"search space override {where} needs low <= high, got {spec}")
        if log and low <= 0:
            raise InvalidSpaceError(f"search space override {where} with log needs low > 0")
        if kind is int:
            step = spec.get("step", 1)
            if isinstance(step, bool) or not isinstance(step, int) or step < 1:
                raise InvalidSpaceError(f"search space override {where} step must be an int >= 1")
            if log and step != 1:
                raise InvalidSpaceError(f"search space override {where}: log needs step 1")
            return IntDistribution(int(low), int(high), log=log, step=step)
        return FloatDistribution(float(low), float(high), log=log)
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        if len(spec) == 0:
            raise InvalidSpaceError(
                f"search space override {where} must be {_describe(key)}; got an empty list"
            )
        choices = [_value(key, v, where) for v in spec]
        if len(set(choices)) != len(choices):
            raise InvalidSpaceError(f"search space override {where} repeats a choice: {spec}")
        return CategoricalDistribution(tuple(choices))
    return CategoricalDistribution((_value(key, spec, where),))


def _names(key: str, values: Sequence[Any] | None, kind: type) -> CategoricalDistribution | None:
    if values is None:
        return None
    values = list(values)
    if not values or any(not isinstance(v, kind) or isinstance(v, bool) for v in values):
        raise InvalidSpaceError(
            f"search space {key!r} must be a non-empty list of {kind.__name__}s; got {values!r}"
        )
    if len(set(values)) != len(values):
        raise InvalidSpaceError(f"search space {key!r} repeats a choice: {values!r}")
    return CategoricalDistribution(tuple(values))


def search_space(
    overrides: Mapping[str, Any] | None = None,
    *,
    backbones: Sequence[str] | None = None,
    frames: Sequence[int] | None = None,
) -> dict[str, BaseDistribution]:
    """The study's search space as Optuna distributions, for ``OptunaSearch(space=...)``.

    Args:
        overrides: YAML ``space:`` entries replacing a dimension's choices or range (see module
            docstring). Keys must be dimensions of the default space.
        backbones: when given, ``backbone`` becomes a categorical dimension over these names.
        frames: when given, ``frames`` (N) becomes a categorical dimension over these counts.

    Returns:
        ``{name: distribution}`` with the fixed keys ``head, lstm_units, lstm_dropout,
        recurrent_dropout, dense_layers, dense_units_{1,2,3}, dense_dropout_{1,2,3},
        learning_rate, batch_size, class_weight, standardize`` (+ ``backbone``, ``frames``).

    Raises:
        InvalidSpaceError: (a ValueError) naming the key, the allowed forms and the bad value.
    """
    space = _defaults()
    for key, spec in (overrides or {}).items():
        if key not in space:
            raise InvalidSpaceError(
                f"search space override 'space.{key}' is not a dimension; known: {sorted(space)}"
            )
        space[key] = _override(key, spec)
    extra = {
        "backbone": _names("backbone", backbones, str),
        "frames": _names("frames", frames, int),
    }
    for key, dist in extra.items():
        if dist is not None:
            space[key] = dist
    return space


def study_space(
    overrides: Mapping[str, Any], backbones: Sequence[str], frames: Sequence[int]
) -> dict[str, BaseDistribution]:
    """The space of a study over the feature sets of these backbones and frame counts: each of
    ``backbone`` and ``frames`` is a dimension only when the study lists more than one."""
    return search_space(
        overrides,
        backbones=list(backbones) if len(backbones) > 1 else None,
        frames=list(frames) if len(frames) > 1 else None,
    )


def _contains(dist: BaseDistribution, value: Any) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    if isinstance(dist, IntDistribution):
        return dist.low <= value <= dist.high and (value - dist.low) % dist.step == 0
    if isinstance(dist, FloatDistribution):
        return dist.low <= value <= dist.high
    return False


def paper_best(space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    """``PAPER_BEST`` as a point of ``space`` for ``points_to_evaluate``.

    Adds ``backbone="xception"`` and ``frames=20`` when those are dimensions of ``space``.

    Raises:
        InvalidSpaceError: if the paper's point lies outside ``space`` (e.g. an override narrowed
            ``lstm_units``), naming each dimension that excludes it.
    """
    point = {k: v for k, v in {**PAPER_BEST, **PAPER_BEST_FEATURES}.items() if k in space}
    missing = sorted(set(space) - set(point))
    outside = [f"{k}={v!r}" for k, v in point.items() if not _contains(space[k], v)]
    if missing or outside:
        raise InvalidSpaceError(
            f"the paper's best point is outside the search space: {outside + missing}; "
            "widen those dimensions or drop the paper's point from the study"
        )
    return point


def is_paper_best(params: Mapping[str, Any]) -> bool:
    """Whether a trial's params are the paper's head and recipe (`PAPER_BEST`, Xception-20):
    every dimension active in the paper's point, equal; inactive keys a trial holds (flat
    trials from before the conditional space) do not count."""
    params = {"head": "lstm", **params}  # trials from before the head dimension are LSTMs
    point = {**PAPER_BEST, **PAPER_BEST_FEATURES}
    needed = [k for k in PAPER_BEST if active(k, point)]
    features = [k for k in PAPER_BEST_FEATURES if k in params]
    return all(k in params and params[k] == point[k] for k in [*needed, *features])


STRUCTURE = ("backbone", "frames", "head", "dense_layers")
"""The dimensions that decide which others are active: drawn first."""


def active(key: str, params: Mapping[str, Any]) -> bool:
    """Whether dimension `key` shapes the trial whose structural dimensions are `params`: the
    recurrent layer's keys only for a recurrent head (``pooled`` has none), a dense block's keys
    only for the blocks up to ``dense_layers``. Any other key is always active."""
    if key in RECURRENT_KEYS:
        return params.get("head", "lstm") != "pooled"
    block = re.fullmatch(r"dense_(?:units|dropout)_(\d+)", key)
    if block is not None and "dense_layers" in params:
        return int(block[1]) <= int(params["dense_layers"])
    return True


def draw_order(space: Mapping[str, BaseDistribution]) -> list[str]:
    """The dimensions of `space` in the order a trial draws them: `STRUCTURE` first."""
    return [k for k in STRUCTURE if k in space] + [k for k in space if k not in STRUCTURE]


def shown_params(params: dict) -> list[tuple[str, object]]:
    """Sorted (name, value) pairs without the keys the head ignores: the dense blocks past
    ``dense_layers``, and the recurrent layer's keys of a ``pooled`` head (showing them only
    confuses)."""
    layers = params.get("dense_layers")
    out = []
    for name, value in sorted(params.items()):
        if params.get("head") == "pooled" and name in RECURRENT_KEYS:
            continue
        block = name.rsplit("_", 1)
        if (
            isinstance(layers, int)
            and name.startswith(("dense_units_", "dense_dropout_"))
            and block[-1].isdigit()
            and int(block[-1]) > layers
        ):
            continue
        out.append((name, value))
    return out
