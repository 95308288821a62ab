"""Which trial wins: the study's objective, the documented ranking every export and nested CV
applies, and the label its figure carries.

`Objective` says which folds the search sees (``objective.on``): the test folds (the paper's
protocol: the study's objective is the mean test-fold accuracy) or each fold's inner validation
split (the split early stopping uses), so that the test folds never reach the sampler, the
scheduler or the choice of the best trial. Its constraints (``covid_recall >= 0.9``) are measured
on the same folds; a trial that breaks one is infeasible. With ``objective.directions`` (accuracy
and, say, COVID recall) the study is multi-objective: Optuna keeps a Pareto front, and an export
picks one point of it by a rule (`pareto_front`, ``export --pick``).

Best trial (`select_best`): feasible first; then highest mean CV accuracy on the objective's
folds; ties broken by higher mean COVID recall, then lower accuracy std, then the earlier trial
(its position in the run). NaN accuracies never win. The winner's all-clips model trains for
`final_epochs` of its folds' early-stopping epochs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from hpo.train import CLASS_METRICS, float_or_nan

__all__ = [
    "OBJECTIVE_ON",
    "SELECTED_ON",
    "SELECTED_WITHOUT_TEST",
    "TIE_BREAK",
    "Candidate",
    "Constraint",
    "NoFiniteTrialError",
    "Objective",
    "final_epochs",
    "pareto_front",
    "select_best",
    "selected_on",
]

TIE_BREAK = (
    "feasible (every objective.constraints holds) first",
    "highest mean CV accuracy on the objective's folds",
    "then higher mean COVID recall",
    "then lower accuracy std over folds",
    "then the earlier trial in the run",
)
"""The documented order `select_best` ranks trials by."""

SELECTED_ON = "selected on the test folds (paper protocol; optimistic)"
"""The label every figure of a best trial carries under ``objective.on: test_folds``: the study
picked it by the mean accuracy over the same test folds it reports."""
SELECTED_WITHOUT_TEST = "selected without the test folds (on each fold's inner validation)"
"""The label under ``objective.on: validation``: the search and the choice of the best saw only
the inner-validation splits, so its test-fold figure is an estimate, not a selected maximum."""

Direction = Literal["minimize", "maximize"]


def selected_on(card: Mapping[str, Any]) -> str:
    """The label of an export's figures: its card's selection, `SELECTED_ON` for older cards."""
    return (card.get("selection") or {}).get("selected_on") or SELECTED_ON


OBJECTIVE_ON = ("test_folds", "validation")
"""What ``objective.on`` accepts: the folds whose accuracy the search maximises."""

CLASSES = {"covid": "cov", "pneumonia": "pne", "healthy": "reg"}  # names users write → LABELS
_CONSTRAINT = re.compile(r"^\s*([a-z]+)_([a-z0-9]+)\s*(>=|<=)\s*([0-9]*\.?[0-9]+)\s*$")
DIRECTIONS = ("maximize", "minimize")


def metric_key(name: str, prefix: str = "") -> str:
    """A trial result's key of the metric users call `name`: ``accuracy`` or
    ``<class>_<metric>`` such as ``covid_recall`` (the mean over the folds); ValueError else."""
    if name == "accuracy":
        return f"{prefix}accuracy"
    label, _, metric = name.partition("_")
    if label not in CLASSES or metric not in CLASS_METRICS:
        raise ValueError(
            f"'accuracy' or '<class>_<metric>' with class one of {', '.join(CLASSES)} and "
            f"metric one of {', '.join(CLASS_METRICS)} (e.g. 'covid_recall')"
        )
    return f"{prefix}{CLASSES[label]}_{metric}_mean"


@dataclass(frozen=True)
class Constraint:
    """A bound on a mean per-class metric over the objective's folds: ``covid_recall >= 0.9``."""

    label: str  # covid | pneumonia | healthy
    metric: str  # recall | precision | specificity | f1
    op: str  # >= | <=
    bound: float

    @classmethod
    def parse(cls, text: str) -> Constraint:
        """Raises ValueError with the accepted form when `text` is not one."""
        match = _CONSTRAINT.match(str(text))
        if (
            not match
            or match[1] not in CLASSES
            or match[2] not in CLASS_METRICS
            or not 0 <= float(match[4]) <= 1
        ):
            raise ValueError(
                f"'<class>_<metric> >= or <= <number in [0, 1]>' with class one of "
                f"{', '.join(CLASSES)} and metric one of {', '.join(CLASS_METRICS)} "
                "(e.g. 'covid_recall >= 0.9')"
            )
        return cls(match[1], match[2], match[3], float(match[4]))

    def __str__(self) -> str:
        return f"{self.label}_{self.metric} {self.op} {self.bound:g}"

    def key(self, prefix: str) -> str:
        """The trial result's key of the metric (`hpo.train.flatten`'s names)."""
        return metric_key(f"{self.label}_{self.metric}", prefix)

    def violation(self, value: float) -> float:
        """Optuna's convention: <= 0 holds, > 0 by how much it is broken."""
        return self.bound - value if self.op == ">=" else value - self.bound


@dataclass(frozen=True)
class Objective:
    """What the search maximises and where it looks (``objective.on``), and its constraints.

    A trial's final result carries both sets of figures (`hpo.train`): the test folds' under
    the paper's names (``accuracy``, ``cov_recall_mean``, …) and the restored models' on each
    fold's inner-validation split under ``validation_`` names. The objective reads one set only.
    """

    on: str = "test_folds"
    constraints: tuple[Constraint, ...] = field(default=())
    # (metric, maximize|minimize) pairs: a multi-objective study; () the accuracy alone
    directions: tuple[tuple[str, Direction], ...] = field(default=())

    @property
    def prefix(self) -> str:
        return "" if self.on == "test_folds" else "validation_"

    @property
    def metric(self) -> str:
        """The final result's key Optuna is told: the mean accuracy on the objective's folds."""
        return "test_accuracy" if self.on == "test_folds" else "validation_accuracy"

    @property
    def shown(self) -> str:
        """The objective's name in lushpo's output: ``accuracy`` (the test folds', as the paper's
        tables call it) or ``validation_accuracy``."""
        return f"{self.prefix}accuracy"

    @property
    def selected_on(self) -> str:
        return SELECTED_ON if self.on == "test_folds" else SELECTED_WITHOUT_TEST

    def value(self, result: Mapping[str, Any]) -> float | None:
        """The objective of a trial's final result (its accuracy on the objective's folds, the
        first of a multi-objective study's values too); None before it (a stopped trial)."""
        if result.get("final") is not True:
            return None
        value = result.get(self.metric, result.get("accuracy") if not self.prefix else None)
        return None if value is None else float(value)

    @property
    def optuna_directions(self) -> list[Direction]:
        return [d for _, d in self.directions] or ["maximize"]

    def values(self, result: Mapping[str, Any]) -> list[float] | None:
        """What Optuna is told of a final result: [accuracy], or the `directions`' metrics in
        their order; None before the final result or when one is missing or NaN."""
        value = self.value(result)
        if value is None or not self.directions:
            return None if value is None else [value]
        found = [float_or_nan(result.get(metric_key(m, self.prefix))) for m, _ in self.directions]
        return found if all(math.isfinite(v) for v in found) else None

    def violations(self, result: Mapping[str, Any]) -> dict[str, float] | None:
        """Each constraint's violation (<= 0: holds) in a final result; None when one of its
        metrics is missing or NaN (a class absent from every fold's split)."""
        out = {}
        for c in self.constraints:
            value = float_or_nan(result.get(c.key(self.prefix)))
            if not math.isfinite(value):
                return None
            out[str(c)] = c.violation(value)
        return out

    def feasible(self, result: Mapping[str, Any]) -> bool:
        found = self.violations(result)
        return found is not None and all(v <= 0 for v in found.values())

    def candidate(self, trial_id: str, order: int, result: Mapping[str, Any]) -> Candidate:
        """The numbers `select_best` ranks the trial of `result` (a final result) by."""
        p = self.prefix
        return Candidate(
            trial_id=trial_id,
            order=order,
            accuracy=float_or_nan(result.get(f"{p}accuracy")),
            cov_recall=float_or_nan(result.get(f"{p}cov_recall_mean")),
            accuracy_std=float_or_nan(result.get(f"{p}accuracy_std")),
            feasible=self.feasible(result),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"on": self.on, "constraints": [str(c) for c in self.constraints]}
        if self.directions:  # absent when single: a study made before directions reads the same
            out["directions"] = dict(self.directions)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Objective:
        """`to_dict`'s form; None (a run or study made before ``objective``): the test folds."""
        data = data or {}
        on = data.get("on", "test_folds")
        if on not in OBJECTIVE_ON:
            raise ValueError(f"objective.on must be one of {OBJECTIVE_ON}, got {on!r}")
        directions = tuple((data.get("directions") or {}).items())
        for metric, direction in directions:
            metric_key(metric)
            if direction not in DIRECTIONS:
                raise ValueError(f"a direction is one of {DIRECTIONS}, got {direction!r}")
        if directions and len(directions) < 2:
            raise ValueError("two metrics or more (or none)")
        constraints = tuple(Constraint.parse(c) for c in data.get("constraints") or ())
        return cls(on, constraints, directions)

    def with_pick(self, rules: Sequence[str]) -> Objective:
        """This objective with an export's ``--pick`` rules as more constraints: the point of a
        Pareto front (or the trial) it names is the best by accuracy that meets them."""
        picked = tuple(Constraint.parse(rule) for rule in rules)
        return Objective(self.on, self.constraints + picked, self.directions)

    def front(self, results: Mapping[str, Mapping[str, Any]]) -> set[str]:
        """The ids of `results` ({id: final result}) on the Pareto front of `directions`
        (every id for a single objective)."""
        if not self.directions:
            return set(results)
        signs = [1.0 if d == "maximize" else -1.0 for _, d in self.directions]
        points = {}
        for trial_id, result in results.items():
            values = self.values(result)
            if values is not None:
                points[trial_id] = [s * v for s, v in zip(signs, values, strict=True)]
        return pareto_front(points)


def pareto_front(points: Mapping[str, Sequence[float]]) -> set[str]:
    """The keys of `points` no other point dominates (every value >=, one >; all maximised)."""

    def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and any(
            x > y for x, y in zip(a, b, strict=True)
        )

    return {k for k, p in points.items() if not any(dominates(q, p) for q in points.values())}


class NoFiniteTrialError(ValueError):
    """No candidate trial has a finite accuracy."""


@dataclass(frozen=True)
class Candidate:
    """The numbers `select_best` ranks a trial by."""

    trial_id: str
    order: int  # position of the trial in the run (creation order)
    accuracy: float  # mean CV accuracy on the objective's folds (the study's objective)
    cov_recall: float  # mean COVID recall over the same folds
    accuracy_std: float
    feasible: bool = True  # every objective.constraints holds

    def rank_key(self) -> tuple[bool, float, float, float, int]:
        """Ascending sort key: best first (see `TIE_BREAK`)."""
        return (not self.feasible, -self.accuracy, -self.cov_recall, self.accuracy_std, self.order)


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

    def key(c: Candidate) -> tuple[bool, float, float, float, int]:
        infeasible, acc, rec, std, order = c.rank_key()
        return (
            infeasible,
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
