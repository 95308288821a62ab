"""A study's trials as Ray Tune recorded them: the one reader that `run_study` (its summary and
best trial) and `hpo.results` (export: the ranking, the download, the card's table) share, so
both see the same trials in the same order and pick the same winner on a tie.

The order is the run's: Tune's experiment keeps its trials in the order it created them, and a
continuation's (`experiment_paths`) follow its predecessor's. `select_best` breaks a tie by it:
the earlier trial wins, whoever ranks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from hpo.search._selection import Objective, select_best
from hpo.train import STUDY_KEY

__all__ = ["StudyResult", "TrialRecord", "by_study", "trial_records"]


@dataclass(frozen=True)
class TrialRecord:
    trial_id: str
    status: str  # TERMINATED | STOPPED (before its test scores: ASHA, time budget) | ERROR
    params: dict[str, Any]  # without `STUDY_KEY`
    metrics: dict[str, Any]  # the trial's last result
    folds: list[dict[str, Any]] = field(default_factory=list)  # per-fold metrics (trial.json)
    error: str | None = None
    path: str | None = None  # the trial's directory in the run's storage
    objective: Objective = field(default_factory=Objective)  # the study's
    study: str | None = None  # its study in an experiment of several (`STUDY_KEY`)
    checkpoint: tune.Checkpoint | None = field(default=None, compare=False, repr=False)

    @property
    def value(self) -> float | None:
        """Mean CV accuracy on the objective's folds; None for a failed trial or one stopped
        before its final result (it has only epoch scores, not comparable)."""
        return None if self.error else self.objective.value(self.metrics)

    @property
    def final(self) -> bool:
        """Whether the trial reached its test scores and left the checkpoint that holds its fold
        models (``trial.json``): what an export can use."""
        return (
            self.error is None
            and self.checkpoint is not None
            and "accuracy" in self.metrics
            and self.metrics.get("final") is not False  # stopped early (ASHA): validation's
        )


@dataclass(frozen=True)
class StudyResult:
    name: str
    run_path: str  # <storage_path>/<name>: Ray Tune's experiment dir
    optuna_storage: str  # masked: no password (`hpo.search.masked`)
    trials: tuple[TrialRecord, ...]  # in run order
    already_finished: bool = False  # --resume found nothing left to run

    @property
    def best(self) -> TrialRecord | None:
        """The best finished trial by `hpo.search.select_best` (feasible first; a tie goes to
        the earlier trial, as in an export)."""
        done = [(order, t) for order, t in enumerate(self.trials) if t.value is not None]
        if not done:
            return None
        ranked = [t.objective.candidate(t.trial_id, order, t.metrics) for order, t in done]
        return self.trials[select_best(ranked).order]


def _read_trial_json(result: tune.Result) -> dict[str, Any]:
    checkpoint = result.checkpoint
    if checkpoint is None:
        return {}
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/trial.json") as f:
            return json.loads(f.read())
    except (FileNotFoundError, OSError, ValueError):
        return {}


def trial_records(
    results: tune.ResultGrid, objective: Objective, *, folds: bool = True
) -> tuple[TrialRecord, ...]:
    """Each trial of `results` (`Tuner.fit`'s, or ``ResultGrid(ExperimentAnalysis(path))`` of a
    saved run) as a `TrialRecord`, in their order. `folds`: read each finished
    trial's per-fold metrics from its checkpoint's ``trial.json`` (one read per trial; an export
    that needs the winner's only passes False)."""
    records = []
    for i in range(len(results)):  # ResultGrid indexes; it declares no __iter__ for mypy
        result = results[i]
        metrics = dict(result.metrics or {})
        params = dict(result.config or {})
        study = params.pop(STUDY_KEY, None)
        records.append(
            TrialRecord(
                trial_id=str(metrics.get("trial_id") or Path(str(result.path)).name),
                status=(
                    "ERROR"
                    if result.error
                    else "TERMINATED"
                    if metrics.get("final") is True
                    else "STOPPED"
                ),
                params=params,
                metrics=metrics,
                folds=list(_read_trial_json(result).get("folds", [])) if folds else [],
                error=None if result.error is None else str(result.error),
                path=str(result.path),
                objective=objective,
                study=study,
                checkpoint=result.checkpoint,
            )
        )
    return tuple(records)


def by_study(
    names: Sequence[str], records: Sequence[TrialRecord]
) -> dict[str, tuple[TrialRecord, ...]]:
    """Each study's trials, in run order; an experiment of one study holds only its own."""
    if len(names) == 1:
        return {names[0]: tuple(records)}
    return {name: tuple(r for r in records if r.study == name) for name in names}
