"""The spatial-only baseline every evaluation reports: a linear probe on mean-pooled features.

The paper claims its CNN-LSTM "outperforms models based purely on spatial approaches". The probe
tests that claim on the user's own data and split: each clip's frame features are averaged over
frames (frame order is thrown away), then a scikit-learn pipeline — ``StandardScaler`` →
``LogisticRegression`` with balanced class weights — is fit on each outer training fold and
scored once on its test fold. ``C`` is chosen by an inner stratified k-fold CV on that training
fold only (``GridSearchCV``), so the probe's figure is honest: the test folds pick nothing.

`temporal_claim` turns the study's figure and the probe's into the one sentence the report and
the model card print.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hpo.search import SELECTED_ON
from hpo.train import bootstrap_ci, fold_metrics, summarize
from pipeline.manifest import Split

__all__ = ["C_GRID", "INNER_FOLDS", "linear_probe", "temporal_claim"]

C_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""Inverse regularisation strengths the inner CV chooses from (recorded in every result)."""

INNER_FOLDS = 4
"""Inner CV folds per outer training fold (fewer when a class has fewer training clips)."""

LABEL = "spatial-only baseline (linear probe on mean-pooled features, C by inner CV)"


def _probe(c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
    )


def linear_probe(
    features: Mapping[str, np.ndarray],
    labels: Mapping[str, int],
    split: Split,
    *,
    c_grid: Sequence[float] = C_GRID,
    inner_folds: int = INNER_FOLDS,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit and score the probe on every fold of `split`.

    Args:
        features: clip id → ``[frames, dim]`` features (every clip of the split).
        labels: clip id → label index.
        split: the outer folds (the study's split).
        c_grid: the C values the inner CV picks from.
        inner_folds: stratified inner folds on each outer training fold.
        seed: the inner folds' shuffle seed.

    Returns:
        ``{"label", "model", "c_grid", "inner_folds", "chosen_c": [per fold], "folds": [fold
        metrics], "summary", "confidence": bootstrap_ci of the pooled out-of-fold predictions,
        "predictions": {clip: label index}}``.
    """
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    if not c_grid or any(not c > 0 for c in c_grid):
        raise ValueError(f"linear probe C grid must be non-empty and positive, got {c_grid!r}")
    folds, chosen = [], []
    predictions: dict[str, int] = {}
    for k, fold in enumerate(split.folds):
        x = np.stack([np.asarray(features[c], np.float64).mean(axis=0) for c in fold.train])
        y = np.asarray([labels[c] for c in fold.train])
        n_splits = max(2, min(inner_folds, int(np.bincount(y)[np.unique(y)].min())))
        search = GridSearchCV(
            _probe(1.0),
            {"logisticregression__C": list(c_grid)},
            cv=StratifiedKFold(n_splits, shuffle=True, random_state=seed + k),
            scoring="accuracy",
        )
        with warnings.catch_warnings():
            # A class with fewer clips than inner folds is expected on small data; say nothing.
            warnings.simplefilter("ignore", UserWarning)
            search.fit(x, y)
        x_test = np.stack([np.asarray(features[c], np.float64).mean(axis=0) for c in fold.test])
        pred = search.predict(x_test)
        folds.append(fold_metrics([labels[c] for c in fold.test], pred))
        chosen.append(float(search.best_params_["logisticregression__C"]))
        predictions.update(zip(fold.test, (int(p) for p in pred), strict=True))
    ids = sorted(predictions)
    return {
        "label": LABEL,
        "model": "StandardScaler -> LogisticRegression(class_weight='balanced'), mean over frames",
        "c_grid": [float(c) for c in c_grid],
        "inner_folds": int(inner_folds),
        "chosen_c": chosen,
        "folds": folds,
        "summary": summarize(folds),
        "confidence": bootstrap_ci([labels[c] for c in ids], [predictions[c] for c in ids]),
        "predictions": predictions,
    }


def temporal_claim(
    study_accuracy: float,
    probe_accuracy: float,
    *,
    honest: bool,
    head: str = "lstm",
    selected_on: str = SELECTED_ON,
) -> str:
    """One sentence: does the searched temporal model beat the spatial-only baseline here?

    `study_accuracy` is the nested-CV estimate when `honest`, else the study's best, labelled by
    how it was selected (`selected_on`; on the test folds the sentence says it is optimistic).
    Both are mean accuracies over the same outer folds. When the best model's `head` is
    ``pooled`` it is itself spatial-only, so whatever its score, it cannot support the claim that
    time helps.
    """
    delta = study_accuracy - probe_accuracy
    kind = "nested-CV estimate (honest)" if honest else f"best trial, {selected_on}"
    optimistic = not honest and selected_on == SELECTED_ON
    beats = "beats" if delta > 0 else "does not beat"
    versus = f"{beats} the spatial-only baseline's {probe_accuracy:.3f} ({delta:+.3f} accuracy)"
    claim = "the paper's claim that the temporal model outperforms spatial-only approaches is"
    if head == "pooled":
        return (
            f"On this data and split, the search's best model is itself spatial-only (the pooled "
            f"head, a mean over frames); its {kind}, {study_accuracy:.3f}, {versus}, so {claim} "
            "not supported here."
        )
    supported = delta > 0
    return (
        f"On this data and split, the searched {head.upper()} model's {kind}, "
        f"{study_accuracy:.3f}, {versus}, so {claim} "
        f"{'supported' if supported else 'not supported'} here"
        f"{', on an optimistic figure' if supported and optimistic else ''}."
    )
