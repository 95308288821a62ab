"""hpo.train against hand-computed folds, including a fold with no clip of a class."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support

from hpo.train import CLASS_METRICS, flatten, fold_metrics, summarize

# Fold A: every class present. cm rows true, cols predicted = [[1,1,0],[0,1,0],[0,0,1]].
A_TRUE, A_PRED = [0, 0, 1, 2], [0, 1, 1, 2]
# Fold B: no COVID clip (like the paper's fold 1); one reg clip predicted as cov.
B_TRUE, B_PRED = [1, 1, 2, 2, 2], [1, 2, 2, 2, 0]


def test_fold_metrics_hand_computed():
    m = fold_metrics(A_TRUE, A_PRED)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["n"] == 4
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    cov, pne, reg = (m["per_class"][c] for c in ("cov", "pne", "reg"))
    assert (cov["precision"], cov["recall"]) == (1.0, 0.5)
    assert cov["f1"] == pytest.approx(2 / 3)
    assert cov["specificity"] == 1.0  # TN 2, FP 0
    assert (pne["precision"], pne["recall"]) == (0.5, 1.0)
    assert pne["specificity"] == pytest.approx(2 / 3)  # TN 2, FP 1
    assert reg == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "specificity": 1.0, "support": 1}
    assert [m["per_class"][c]["support"] for c in ("cov", "pne", "reg")] == [2, 1, 1]


def test_fold_missing_a_class_counts_zeros():
    m = fold_metrics(B_TRUE, B_PRED)
    assert m["accuracy"] == pytest.approx(0.6)
    cov = m["per_class"]["cov"]
    assert cov == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "specificity": 0.8, "support": 0}
    assert m["per_class"]["reg"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["reg"]["specificity"] == pytest.approx(0.5)
    assert m["per_class"]["pne"]["specificity"] == 1.0


def test_fold_metrics_matches_sklearn_on_random_labels():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    m = fold_metrics(y_true, y_pred)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2], zero_division=0)
    for i, c in enumerate(("cov", "pne", "reg")):
        assert m["per_class"][c]["precision"] == pytest.approx(p[i])
        assert m["per_class"][c]["recall"] == pytest.approx(r[i])
        assert m["per_class"][c]["f1"] == pytest.approx(f[i])
        assert m["per_class"][c]["support"] == s[i]


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        ([0, 1], [0], "y_true has 2 labels but y_pred has 1"),
        ([], [], "empty"),
        ([0, 3], [0, 1], r"y_true holds labels \[3\]"),
        ([0, 1], [0, -1], r"y_pred holds labels \[-1\]"),
    ],
)
def test_fold_metrics_rejects_bad_input(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        fold_metrics(y_true, y_pred)


def test_summarize_population_std_and_support_aware_variants():
    s = summarize([fold_metrics(A_TRUE, A_PRED), fold_metrics(B_TRUE, B_PRED)])
    assert s["folds"] == 2
    assert s["accuracy"]["mean"] == pytest.approx(0.675)
    assert s["accuracy"]["std"] == pytest.approx(0.075)  # ddof=0: |0.75 - 0.6| / 2
    cov = s["per_class"]["cov"]
    assert cov["support"] == [2, 0]
    assert cov["zero_support_folds"] == [1]
    assert cov["precision"]["mean"] == pytest.approx(0.5)
    assert cov["precision"]["std"] == pytest.approx(0.5)
    assert cov["precision"]["mean_supported"] == pytest.approx(1.0)
    assert cov["precision"]["std_supported"] == pytest.approx(0.0)
    assert cov["specificity"]["mean"] == pytest.approx(0.9)
    assert s["per_class"]["pne"]["zero_support_folds"] == []
    # Pooled over both folds' predictions: cm [[1,1,0],[0,2,1],[1,0,3]].
    pooled = s["pooled"]
    assert pooled["confusion_matrix"] == [[1, 1, 0], [0, 2, 1], [1, 0, 3]]
    assert pooled["accuracy"] == pytest.approx(6 / 9)
    assert pooled["per_class"]["cov"]["precision"] == pytest.approx(0.5)
    assert pooled["per_class"]["cov"]["specificity"] == pytest.approx(6 / 7)
    assert pooled["per_class"]["reg"]["recall"] == pytest.approx(0.75)
    assert pooled["per_class"]["cov"]["support"] == 2


def test_summarize_class_absent_everywhere_gives_nan_supported_mean():
    s = summarize([fold_metrics(B_TRUE, B_PRED)])
    assert math.isnan(s["per_class"]["cov"]["recall"]["mean_supported"])
    assert s["per_class"]["cov"]["recall"]["mean"] == 0.0


def test_summarize_rejects_no_folds():
    with pytest.raises(ValueError, match="at least one fold"):
        summarize([])


def test_flatten_names_and_values():
    flat = flatten(summarize([fold_metrics(A_TRUE, A_PRED), fold_metrics(B_TRUE, B_PRED)]))
    classes, stats = ("cov", "pne", "reg"), ("mean", "std")
    expected = {"accuracy", "accuracy_std"} | {
        f"{c}_{m}_{s}" for c in classes for m in CLASS_METRICS for s in stats
    }
    assert set(flat) == expected
    assert all(isinstance(v, float) for v in flat.values())
    assert flat["accuracy"] == pytest.approx(0.675)
    assert flat["cov_precision_std"] == pytest.approx(0.5)
    assert flat["pne_f1_mean"] == pytest.approx(2 / 3)
