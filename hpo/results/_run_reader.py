"""Reading a finished study for export: its Ray Tune run (continuations included), each trial
with a checkpoint and a final score ranked by the objective, the re-scored winner, the nested
estimate, and the trials table of the card."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.results._card import (
    ExportError,
)
from hpo.search import (
    Candidate,
    Objective,
    TrialRecord,
    card_entry,
    experiment_paths,
    read_nested,
    select_best,
    trial_records,
)
from hpo.train import (
    float_or_nan,
    is_paper_best,
)
from pipeline.files import (
    s3_filesystem,
)
from pipeline.manifest import Split

__all__ = [
    "run_filesystem",
]


@dataclass(frozen=True)
class _TrialRef:
    candidate: Candidate
    record: TrialRecord  # a `TrialRecord.final` trial's

    def download(self, dest: Path) -> None:
        """The trial's final checkpoint (fold models, trial.json) into `dest`."""
        if self.record.checkpoint is None:  # not a final trial's: `_read_run` keeps none such
            raise ExportError(f"trial {self.candidate.trial_id} has no checkpoint")
        self.record.checkpoint.to_directory(str(dest))


def run_filesystem(run: str, endpoint_url: str | None) -> tuple[str, Any]:
    """(path, pyarrow filesystem) for reading the run; s3:// through `endpoint_url` if given
    (MinIO, moto), as `hpo.search` writes it."""
    if not run.startswith("s3://") or not endpoint_url:
        return run, None
    return run[len("s3://") :].rstrip("/"), s3_filesystem(endpoint_url)


def _read_run(
    run: str,
    endpoint_url: str | None = None,
    study_key: str | None = None,
    objective: Objective | None = None,
) -> list[_TrialRef]:
    """Every trial of the run with a checkpoint and a final accuracy, in run order, ranked by
    `objective` (default: the test folds); with `study_key`, those of that study only (an
    experiment of several: a grid's cells)."""
    objective = objective or Objective()
    from ray.tune import ExperimentAnalysis, ResultGrid

    path, filesystem = run_filesystem(run, endpoint_url)
    if filesystem is None and "://" not in path:
        if not Path(path).is_dir():
            raise ExportError(
                f"{run}: no such run directory (a study's <storage_path>/<name>, e.g. "
                ".lushpo/runs/quick)"
            )
        path = str(Path(path).resolve())  # Ray reads relative paths as URIs without a scheme
    records: list[TrialRecord] = []
    for experiment in experiment_paths(filesystem, path):  # continuations of a raised budget
        try:
            analysis = ExperimentAnalysis(experiment, storage_filesystem=filesystem)
        except (ValueError, FileNotFoundError, OSError) as exc:
            if experiment != path and isinstance(exc, ValueError):
                continue  # "no experiment snapshot": a continuation that died before Tune saved
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"cannot read the Ray Tune run at {run}: {first}") from exc
        # the folds come from the winner's own trial.json: no read per trial here
        records += trial_records(ResultGrid(analysis), objective, folds=False)
    if study_key is not None:
        records = [r for r in records if r.study == study_key]
    # `order` is the trial's place in the run, as in `hpo.search.StudyResult.best`: a tie
    # goes to the same trial the study reported as its best
    return [
        _TrialRef(objective.candidate(r.trial_id, order, r.metrics), r)
        for order, r in enumerate(records)
        if r.final
    ]


def _complete(record: dict) -> bool:
    folds = record.get("split", {}).get("folds", [])
    return bool(folds) and len(record.get("folds", [])) == len(folds)


def _download_best(refs: list[_TrialRef], dest: Path) -> tuple[_TrialRef, dict]:
    """Best trial whose checkpoint holds a complete trial.json, downloaded into `dest`."""
    remaining = list(refs)
    while remaining:
        best = select_best([r.candidate for r in remaining])
        ref = next(r for r in remaining if r.candidate == best)
        remaining.remove(ref)
        if dest.exists():
            shutil.rmtree(dest)
        ref.download(dest)
        record_path = dest / "trial.json"
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            if _complete(record):
                return ref, record
    raise ExportError(
        f"none of the {len(refs)} trials with a checkpoint holds a complete trial.json "
        "(fold-{i}.h5 for every fold); were all trials stopped early?"
    )


def _rescored_winner(
    refs: list[_TrialRef], rescore: dict, dest: Path, log: Callable[[str], None]
) -> _TrialRef | None:
    """The re-scored winner (`hpo.search`) downloaded into `dest`, or None with a warning when
    rescore.json does not belong to this run's trials, feature set and split."""

    ref = next((r for r in refs if r.candidate.trial_id == rescore.get("winner")), None)
    if ref is None:
        log(
            f"warning: rescore.json refused: its winner {rescore.get('winner')} is not a trial here"
        )
        return None
    ref.download(dest)
    record = json.loads((dest / "trial.json").read_text())
    ours = (record["feature_set"], Split.from_dict(record["split"]).digest())
    theirs = (rescore.get("feature_set"), (rescore.get("split") or {}).get("digest"))
    if not _complete(record) or ours != theirs:
        log(
            f"warning: rescore.json refused: it is for feature set {theirs[0]!r} and split "
            f"{str(theirs[1])[:12]}, trial {ref.candidate.trial_id} for {ours[0]!r} and "
            f"{ours[1][:12]}"
        )
        shutil.rmtree(dest)
        return None
    return ref


def _study_location(run: str) -> dict | None:
    """Where the run's Optuna study lives: `hpo.search`'s default is ``<run>/optuna.db``, named
    after the run (``<storage_path>/<name>``); other storages are named with ``study=``."""
    if "://" in run:
        return None
    db = Path(run) / "optuna.db"
    if not db.is_file():
        return None
    return {"optuna_storage": f"sqlite:///{db.resolve()}", "study_name": Path(run).name}


def _nested_entry(run: str, endpoint_url: str | None, log: Callable[[str], None]) -> dict | None:
    """The card's ``nested`` entry from the run's nested.json (``lushpo tune --nested``), if any."""

    try:
        nested = read_nested(run, endpoint_url)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read the nested CV result of {run}: {exc}") from exc
    if nested is None:
        return None
    acc = nested["accuracy"]
    log(
        f"nested CV result found: accuracy {acc['mean']:.4f} ± {acc['std']:.4f} over "
        f"{len(nested.get('outer_folds', []))} outer folds"
    )
    return card_entry(nested)


def _nested_mismatch(nested: dict | None, feature_set: str, split: dict) -> str | None:
    """Why a nested result is not this export's honest figure (another feature set or outer
    split), or None when it is: the card shows only a nested CV of the same data and folds."""
    if not nested:
        return None

    digest = Split.from_dict(split).digest()
    theirs = (nested.get("feature_set"), (nested.get("outer_split") or {}).get("digest"))
    if theirs == (feature_set, digest):
        return None
    return (
        f"nested.json refused: it is for feature set {theirs[0]!r} and outer split digest "
        f"{str(theirs[1])[:12]}, this export for {feature_set!r} and {digest[:12]}; run "
        "`lushpo tune --nested` on this study's config to get its honest figure"
    )


def _trials_table(refs: list[_TrialRef], objective: Objective, front: set[str]) -> list[dict]:
    """Every candidate trial's test-fold figures (``accuracy``, ``accuracy_std``,
    ``cov_recall``: what the report compares), its ``objective`` (the accuracy on the objective's
    folds, for the optimisation-history plot) and, for a multi-objective study, its ``values``;
    ``paper_best`` marks the paper's own head and recipe (`hpo.train.PAPER_BEST`), the report's
    baseline."""

    def finite(value: Any) -> float | None:  # JSON: null, not NaN
        number = float_or_nan(value)
        return number if math.isfinite(number) else None

    rows = []
    for ref in refs:
        c, result = ref.candidate, ref.record.metrics
        rows.append(
            {
                "trial_id": c.trial_id,
                "order": c.order,
                "accuracy": finite(result.get("accuracy")),
                "accuracy_std": finite(result.get("accuracy_std")),
                "cov_recall": finite(result.get("cov_recall_mean")),
                "objective": finite(c.accuracy),
                "feasible": c.feasible,
                "values": objective.values(result),
                "on_front": c.trial_id in front,
                "paper_best": is_paper_best(ref.record.params),
            }
        )
    return rows
