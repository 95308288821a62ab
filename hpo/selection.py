"""Which trial wins: the documented ranking every export and nested CV applies, and the label its
figure carries.

Best trial (`select_best`): highest mean CV accuracy; ties broken by higher mean COVID recall,
then lower accuracy std, then the earlier trial (its position in the run). NaN accuracies never
win. The winner's all-clips model trains for `final_epochs` of its folds' early-stopping epochs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SELECTED_ON",
    "TIE_BREAK",
    "Candidate",
    "NoFiniteTrialError",
    "final_epochs",
    "select_best",
]

TIE_BREAK = (
    "highest mean CV accuracy",
    "then higher mean COVID recall",
    "then lower accuracy std over folds",
    "then the earlier trial in the run",
)
"""The documented order `select_best` ranks trials by."""

SELECTED_ON = "selected on the test folds (paper protocol; optimistic)"
"""The label every figure of the exported best carries: the study picked it by the mean accuracy
over the same test folds it reports."""


class NoFiniteTrialError(ValueError):
    """No candidate trial has a finite accuracy."""


@dataclass(frozen=True)
class Candidate:
    """The numbers `select_best` ranks a trial by."""

    trial_id: str
    order: int  # position of the trial in the run (creation order)
    accuracy: float  # mean CV test accuracy (the study's objective)
    cov_recall: float  # mean COVID recall over folds
    accuracy_std: float

    def rank_key(self) -> tuple[float, float, float, int]:
        """Ascending sort key: best first (see `TIE_BREAK`)."""
        return (-self.accuracy, -self.cov_recall, self.accuracy_std, self.order)


def select_best(candidates: Sequence[Candidate]) -> Candidate:
    """The best candidate by `TIE_BREAK`; NaN accuracies never win.

    Raises:
        NoFiniteTrialError: if no candidate has a finite accuracy.
    """
    finite = [c for c in candidates if math.isfinite(c.accuracy)]
    if not finite:
        raise NoFiniteTrialError(
            f"no trial with a finite accuracy among {len(candidates)} candidates"
        )

    def key(c: Candidate) -> tuple[float, float, float, int]:
        acc, rec, std, order = c.rank_key()
        return (
            acc,
            rec if math.isfinite(rec) else math.inf,
            std if math.isfinite(std) else math.inf,
            order,
        )

    return min(finite, key=key)


def final_epochs(best_epochs: Sequence[int]) -> int:
    """Epochs for the all-clips model: the median of the folds' best epochs, halves rounded up."""
    if not best_epochs:
        raise ValueError("final_epochs needs the folds' best epochs, got none")
    return max(1, math.floor(float(np.median(np.asarray(best_epochs, dtype=float))) + 0.5))
