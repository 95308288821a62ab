"""The paper's evaluation protocol as pure functions: per-fold metrics, their summary, a flat view.

Barros et al. score each cross-validation fold with sklearn's ``classification_report`` (labels
[cov, pne, reg], ``zero_division=0``) plus per-class specificity, then report the mean and the
population standard deviation (ddof=0) over folds. Some folds of the paper's split hold no clip of
a class (fold 1 has no COVID clip), so the protocol's mean counts a zero for that class; the
summary also gives support-aware variants (mean over folds that hold the class, and metrics pooled
over every fold's predictions) so readers can see how much those zeros move the numbers.

`bootstrap_ci` adds the uncertainty the fold std does not give: a percentile bootstrap over the
clips of the pooled out-of-fold predictions (every clip is tested exactly once in k-fold CV).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.manifest import LABELS

__all__ = [
    "BOOTSTRAP",
    "CLASS_METRICS",
    "bootstrap_ci",
    "flatten",
    "float_or_nan",
    "fold_metrics",
    "summarize",
]

CLASS_METRICS: tuple[str, ...] = ("precision", "recall", "f1", "specificity")
"""Per-class metrics, in the order they are reported."""

_LABEL_IDS = list(range(len(LABELS)))


def _specificity(cm: np.ndarray) -> list[float]:
    """TN / (TN + FP) per class (cm rows true, columns predicted); 0 when undefined."""
    total = cm.sum()
    out = []
    for c in range(cm.shape[0]):
        tp = cm[c, c]
        fp = cm[:, c].sum() - tp
        fn = cm[c, :].sum() - tp
        tn = total - tp - fp - fn
        out.append(float(tn / (tn + fp)) if tn + fp > 0 else 0.0)
    return out


def _from_confusion(cm: np.ndarray) -> dict:
    """Accuracy and per-class metrics from a confusion matrix, with sklearn's zero_division=0."""
    cm = np.asarray(cm, dtype=np.int64)
    total = int(cm.sum())
    spec = _specificity(cm)
    per_class = {}
    for c, name in enumerate(LABELS):
        tp = cm[c, c]
        predicted, actual = cm[:, c].sum(), cm[c, :].sum()
        precision = float(tp / predicted) if predicted else 0.0
        recall = float(tp / actual) if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": float(f1),
            "specificity": spec[c],
            "support": int(actual),
        }
    accuracy = float(np.trace(cm) / total) if total else 0.0
    return {
        "accuracy": accuracy,
        "n": total,
        "confusion_matrix": cm.tolist(),
        "per_class": per_class,
    }


def fold_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> dict:
    """Metrics of one test fold, the paper's way.

    Args:
        y_true: true label indices (0 = cov, 1 = pne, 2 = reg).
        y_pred: predicted label indices, same length.

    Returns:
        ``{"accuracy": float, "n": int, "confusion_matrix": [[int]*3]*3 (rows true, columns
        predicted), "per_class": {"cov"|"pne"|"reg": {"precision", "recall", "f1",
        "specificity", "support"}}}``. Precision, recall and F1 come from sklearn's
        ``classification_report(labels=[0, 1, 2], zero_division=0)``.

    Raises:
        ValueError: if the lengths differ, the fold is empty, or a label is outside 0..2.
    """
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("fold_metrics needs at least one test clip, got an empty fold")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        bad = sorted(set(np.unique(y).tolist()) - set(_LABEL_IDS))
        if bad:
            raise ValueError(f"{name} holds labels {bad}; allowed are {_LABEL_IDS} ({LABELS})")
    # sklearn costs seconds to import; only scoring needs it, not every `lushpo` command.
    from sklearn.metrics import classification_report, confusion_matrix

    report = classification_report(
        y_true,
        y_pred,
        labels=_LABEL_IDS,
        target_names=list(LABELS),
        zero_division=0,
        output_dict=True,
    )
    cm = confusion_matrix(y_true, y_pred, labels=_LABEL_IDS)
    spec = _specificity(cm)
    per_class = {
        name: {
            "precision": float(report[name]["precision"]),
            "recall": float(report[name]["recall"]),
            "f1": float(report[name]["f1-score"]),
            "specificity": spec[c],
            "support": int(report[name]["support"]),
        }
        for c, name in enumerate(LABELS)
    }
    # The report says "micro avg" instead of "accuracy" when a fold lacks a class; count directly.
    accuracy = float(np.mean(y_true == y_pred))
    return {
        "accuracy": accuracy,
        "n": int(y_true.size),
        "confusion_matrix": cm.tolist(),
        "per_class": per_class,
    }


def float_or_nan(value: Any) -> float:
    """`value` as a float; NaN for None or anything else that is not a number (a result that
    lacks the metric)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    if len(values) == 0:
        return {"mean": float("nan"), "std": float("nan")}
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=0))}


def summarize(folds: Sequence[dict]) -> dict:
    """Mean and population std (ddof=0) over folds, plus support-aware variants.

    Args:
        folds: ``fold_metrics`` results, one per fold.

    Returns:
        ``{"folds": k, "accuracy": {"mean", "std"}, "per_class": {cls: {metric: {"mean", "std",
        "mean_supported", "std_supported"}, "support": [per fold], "zero_support_folds": [fold
        indices]}}, "pooled": fold-metrics-shaped result over every fold's predictions}``.
        ``mean``/``std`` are the paper's protocol (a fold without the class counts its zeros);
        ``*_supported`` use only the folds where the class has test support > 0 (NaN if none).
        ``pooled`` comes from the sum of the folds' confusion matrices.

    Raises:
        ValueError: if ``folds`` is empty.
    """
    if not folds:
        raise ValueError("summarize needs at least one fold's metrics, got none")
    per_class: dict[str, dict] = {}
    for name in LABELS:
        support = [int(f["per_class"][name]["support"]) for f in folds]
        supported = [i for i, s in enumerate(support) if s > 0]
        entry: dict = {}
        for metric in CLASS_METRICS:
            values = [float(f["per_class"][name][metric]) for f in folds]
            both = _mean_std(values)
            only = _mean_std([values[i] for i in supported])
            entry[metric] = {
                "mean": both["mean"],
                "std": both["std"],
                "mean_supported": only["mean"],
                "std_supported": only["std"],
            }
        entry["support"] = support
        entry["zero_support_folds"] = [i for i, s in enumerate(support) if s == 0]
        per_class[name] = entry
    pooled_cm = np.sum([np.asarray(f["confusion_matrix"], dtype=np.int64) for f in folds], axis=0)
    return {
        "folds": len(folds),
        "accuracy": _mean_std([float(f["accuracy"]) for f in folds]),
        "per_class": per_class,
        "pooled": _from_confusion(pooled_cm),
    }


def flatten(summary: dict) -> dict[str, float]:
    """The summary as flat, Ray-reportable floats.

    Names: ``accuracy``, ``accuracy_std`` and ``{cov|pne|reg}_{precision|recall|f1|specificity}_
    {mean|std}`` (the paper's protocol).
    """
    flat = {
        "accuracy": float(summary["accuracy"]["mean"]),
        "accuracy_std": float(summary["accuracy"]["std"]),
    }
    for name in LABELS:
        for metric in CLASS_METRICS:
            stats = summary["per_class"][name][metric]
            flat[f"{name}_{metric}_mean"] = float(stats["mean"])
            flat[f"{name}_{metric}_std"] = float(stats["std"])
    return flat


BOOTSTRAP: dict[str, Any] = {"resamples": 2000, "level": 0.95, "seed": 0}
"""`bootstrap_ci`'s defaults, recorded beside every interval it gives."""


def bootstrap_ci(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    *,
    resamples: int = BOOTSTRAP["resamples"],
    level: float = BOOTSTRAP["level"],
    seed: int = BOOTSTRAP["seed"],
) -> dict:
    """Percentile-bootstrap confidence intervals for accuracy and per-class recall.

    Resamples clips (with replacement) of the pooled out-of-fold predictions. Each estimate is the
    pooled value on all clips (for accuracy: correct clips / clips, which weighs folds by size,
    unlike the paper's mean over folds). A resample without a clip of a class does not count
    towards that class's recall interval.

    Returns:
        ``{"method", "resamples", "level", "seed", "clips", "accuracy": {"estimate", "low",
        "high"}, "recall": {cls: {"estimate", "low", "high"}}}`` (NaN bounds: class absent).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(
            f"bootstrap_ci needs equal, non-empty label arrays: {y_true.shape=}, {y_pred.shape=}"
        )
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(
            f"bootstrap_ci needs 0 < level < 1 and resamples >= 1: {level=}, {resamples=}"
        )
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, y_true.size, size=(resamples, y_true.size))
    t, correct = y_true[idx], (y_true == y_pred)[idx]
    tail = 100 * (1 - level) / 2

    def interval(estimate: float, samples: np.ndarray) -> dict[str, float]:
        samples = samples[np.isfinite(samples)]
        if samples.size == 0:
            return {"estimate": estimate, "low": float("nan"), "high": float("nan")}
        low, high = np.percentile(samples, [tail, 100 - tail])
        return {"estimate": estimate, "low": float(low), "high": float(high)}

    recall = {}
    for c, name in enumerate(LABELS):
        members = y_true == c
        estimate = float((y_pred[members] == c).mean()) if members.any() else float("nan")
        hits = ((t == c) & correct).sum(axis=1).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            samples = hits / (t == c).sum(axis=1)
        recall[name] = interval(estimate, samples)
    return {
        "method": "percentile bootstrap over clips of the pooled out-of-fold predictions",
        "resamples": int(resamples),
        "level": float(level),
        "seed": int(seed),
        "clips": int(y_true.size),
        "accuracy": interval(float((y_true == y_pred).mean()), correct.mean(axis=1)),
        "recall": recall,
    }
