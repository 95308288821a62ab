"""Export a study's best trial: fold models, a model retrained on every clip, a model card.

What a clinician-researcher takes away is one folder:

* ``fold-{i}.h5`` — the best trial's cross-validation models, copied from its checkpoint;
* ``model.h5`` — the same head retrained on all clips (for `lushpo predict`), for the median of
  the folds' early-stopping epochs, since there is no held-out data left to stop on;
* ``features/features_{N}/{backbone}/…`` — the feature set in the paper's own npy layout;
* ``model_card.json`` — written last (temp name + rename): hyperparameters, backbone, weights
  sha256, N, sampling, split, feature set key, per-fold metrics recomputed from the copied fold
  files, library versions, dataset hash, trial id, run path, and where the Optuna study lives.

Every ``.h5`` holds only built-in Keras layers, so plain ``tf.keras.models.load_model(path)``
loads it with no custom objects.

Best trial (``select_best``, on the folds of the study's ``objective.on``, from its
``lushpo-settings.json``): feasible first (``objective.constraints``), then highest mean CV
accuracy; ties broken by higher mean COVID recall, then lower accuracy std, then the earlier trial
(its position in the run). Only trials whose final checkpoint holds a complete ``trial.json`` (one
metrics entry per fold) are candidates. The card's figures are the test folds' either way.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hpo import project
from hpo.results._card import (
    _LIBRARIES,
    CARD,
    CARD_FORMAT,
    ExportError,
    _select,
    claim,
    confidence,
    fold_predictions,
    spatial_baseline,
)
from hpo.results._export_folder import add_files, replacing
from hpo.results._run_reader import (
    _complete,
    _download_best,
    _nested_entry,
    _nested_mismatch,
    _read_run,
    _rescored_winner,
    _study_location,
    _TrialRef,
    _trials_table,
)
from hpo.search import (
    GRID_FILE,
    ONE_EXPERIMENT,
    RESCORE_FILE,
    SETTINGS_FILE,
    TIE_BREAK,
    Objective,
    final_epochs,
    masked,
    read_run_file,
)
from hpo.train import (
    fit_head,
    summarize,
)
from pipeline.files import (
    atomic_write_json,
    library_versions,
    sha256_file,
)
from pipeline.paper_layout import write_paper_layout
from pipeline.store import open_store

__all__ = [
    "ExportResult",
    "export_best",
    "export_checkpoint",
    "export_grid",
]


# --- writing the folder ------------------------------------------------------------------------


def _save_h5(model: Any, path: Path) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")  # keeps the .h5 suffix
    model.save(tmp)
    os.replace(tmp, path)


def _same_metrics(a: dict, b: dict) -> bool:
    return a.get("confusion_matrix") == b.get("confusion_matrix") and math.isclose(
        float(a.get("accuracy", math.nan)), float(b.get("accuracy", math.nan)), abs_tol=1e-12
    )


def _best_epochs(record: dict) -> list[int]:
    """Each fold's early-stopping epoch (``best_epoch`` of trial.json's fold entries)."""
    epochs = [f.get("best_epoch") for f in record["folds"]]
    if all(isinstance(e, int) and e > 0 for e in epochs):
        return [int(e) for e in epochs]
    listed = record.get("epochs", [])
    if listed and all(isinstance(e, int) for e in listed):  # the contract's plain list
        return [int(e) for e in listed]
    raise ExportError(f"trial.json records no best epoch per fold (folds' best_epoch: {epochs})")


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    card: dict


def export_checkpoint(
    checkpoint: Path | str,
    out: Path | str,
    *,
    store: str | None = None,
    cache_dir: str | None = None,
    overwrite: bool = False,
    provenance: dict | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> ExportResult:
    """Export one trial checkpoint folder (``fold-{i}.h5`` + ``trial.json``) into `out`.

    Args:
        checkpoint: a local folder holding the trial's final checkpoint.
        out: the folder to write; must be empty or absent unless `overwrite`.
        store: feature store URI holding the trial's feature set (``trial.json``'s key);
            default: the store the trial read (``trial.json``'s training record), else
            `hpo.project.store_uri`.
        cache_dir: node cache for s3:// stores.
        overwrite: replace an earlier export in `out`.
        provenance: extra card fields (run, trial_id, selection, trials, study).
        log: progress messages.

    Raises:
        ExportError: incomplete checkpoint, or the feature set lacks clips.
        OwnershipError: `out` not empty without `overwrite`, or holding files lushpo did not
            write (`hpo.results`); nothing in `out` changes on any error.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    record = _finished_record(checkpoint)
    with replacing(out, overwrite, last=CARD, log=log) as stage:  # checks `out` before any work
        built = stage / "export"
        card = _write_export(checkpoint, record, built, store, cache_dir, provenance, log)
    log(f"wrote {out / CARD}")
    return ExportResult(out, card)


def _finished_record(checkpoint: Path) -> dict:
    record_path = checkpoint / "trial.json"
    if not record_path.is_file():
        raise ExportError(f"{record_path} does not exist: not a finished trial's checkpoint")
    record = json.loads(record_path.read_text())
    if not _complete(record):
        raise ExportError(
            f"{record_path}: metrics for {len(record.get('folds', []))} folds, "
            f"split has {len(record.get('split', {}).get('folds', []))}"
        )
    return record


def _write_export(
    checkpoint: Path,
    record: dict,
    out: Path,
    store: str | None,
    cache_dir: str | None,
    provenance: dict | None,
    log: Callable[[str], None],
) -> dict:
    """Write the export of `checkpoint` (its `record`) into the fresh folder `out`; the card."""

    out.mkdir(parents=True)
    k = len(record["split"]["folds"])
    for i in range(k):
        source = checkpoint / f"fold-{i}.h5"
        if not source.is_file():
            raise ExportError(f"{checkpoint} lacks fold-{i}.h5 (the split has {k} folds)")
        part = out / f".fold-{i}.h5.part"
        shutil.copyfile(source, part)
        os.replace(part, out / f"fold-{i}.h5")

    key = record["feature_set"]
    # The store the trial read, unless told otherwise: `tune --store X` then `export RUN`.
    store = store or (record.get("training") or {}).get("store_uri") or project.store_uri()
    fs = open_store(store, cache_dir=cache_dir).get(key)
    log(f"feature set {key}: {fs.features.shape[0]} clips × {fs.spec.frames} frames")

    folds, pooled = fold_predictions(out, record["split"], lambda ids: _select(fs, ids))
    reproduced = len(folds) == len(record["folds"]) and all(
        _same_metrics(a, b) for a, b in zip(folds, record["folds"], strict=True)
    )
    if not reproduced:
        log("warning: the fold files do not reproduce trial.json's fold metrics; card uses files")

    params = dict(record["params"])
    training = dict(record.get("training") or {})
    seed = int(training.get("seed", 0))
    best_epochs = _best_epochs(record)
    epochs = final_epochs(best_epochs)
    n = int(fs.features.shape[0])
    log(f"retraining on all {n} clips for {epochs} epochs (median of {best_epochs})")

    _save_h5(fit_head(fs.features, fs.labels, params, epochs=epochs, seed=seed), out / "model.h5")
    model_sha256 = sha256_file(out / "model.h5")  # `predict` refuses a model.h5 swapped since

    layout_root = out / "features"
    written = write_paper_layout(fs, layout_root)
    layout = layout_root / f"features_{fs.spec.frames}" / fs.spec.backbone
    if not (layout / "filenames.npy").is_file():
        if written is not None and (Path(written) / "filenames.npy").is_file():
            layout = Path(written)
        else:
            raise ExportError(f"write_paper_layout did not create {layout}/filenames.npy")

    spec = fs.spec
    card = {
        "format": CARD_FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": None,
        "trial_id": record.get("trial_id"),
        "selection": None,
        "params": params,
        "training": training,
        "backbone": spec.backbone,
        "weights_sha256": spec.weights_sha256,
        "frames": spec.frames,
        "sampling": spec.sampling,
        "preprocessing_version": spec.preprocessing_version,
        "dataset_digest": spec.dataset_digest,
        "feature_set": key,
        "feature_dim": int(fs.features.shape[2]),
        "clips": n,
        "split": record["split"],
        "folds": folds,
        "summary": summarize(folds),
        "trial_metrics_reproduced": reproduced,
        "fold_best_epochs": best_epochs,
        "final_model": {
            "file": "model.h5",
            "sha256": model_sha256,
            "epochs": epochs,
            "epochs_rule": "median of the folds' best (early-stopping) epochs, halves rounded up",
            "clips": n,
            "seed": seed,
        },
        "fold_models": [f"fold-{i}.h5" for i in range(k)],
        "paper_layout": layout.relative_to(out).as_posix(),
        "study": None,
        "store": store,
        "trials": [],
        "nested": record.get("nested"),
        "library_versions": library_versions(_LIBRARIES),
        "feature_set_meta": fs.meta,
    }
    card.update(provenance or {})
    refused = _nested_mismatch(card.get("nested"), key, record["split"])
    if refused:
        log(f"warning: {refused}")
        card["nested"], card["nested_refused"] = None, refused
    card["confidence"] = confidence(pooled)
    card["baseline"] = spatial_baseline(fs, record["split"])
    card["claim"] = claim(card)
    if not reproduced:
        card["trial_folds"] = record["folds"]
    atomic_write_json(out / CARD, card, default=str)
    return card


def export_best(
    run: str,
    out: Path | str,
    *,
    store: str | None = None,
    cache_dir: str | None = None,
    overwrite: bool = False,
    study: dict | None = None,
    endpoint_url: str | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    experiment: str | None = None,
    study_key: str | None = None,
    pick: Sequence[str] = (),
) -> ExportResult:
    """Export the best trial (see `TIE_BREAK`) of the Ray Tune run at `run` into `out`.

    Args:
        run: the run directory ``<storage_path>/<name>``, a local path or an s3:// URI.
        out: the folder to write; must be empty or absent unless `overwrite`.
        store: feature store URI holding the trial's feature set; default as in
            `export_checkpoint`.
        cache_dir: node cache for s3:// stores.
        overwrite: replace an earlier export in `out`.
        study: ``{"optuna_storage", "study_name"}`` of the run's Optuna study (its password is
            masked in the card; give it to evaluate again); default ``<run>/optuna.db``
            (hpo.search's default for local runs) when it exists.
        endpoint_url: S3 endpoint (MinIO, moto) for an s3:// run; default: AWS's.
        log: progress messages.
        experiment, study_key: the Ray Tune experiment that holds the run's trials when it is
            not `run` itself, and the study whose trials to take from it (a grid's cell:
            `hpo.search`); `run` still holds the study's own files (rescore.json).
        pick: rules such as ``covid_recall >= 0.9`` (`hpo.search.Constraint`) the exported
            trial must meet, on the objective's folds: the highest accuracy that meets them (on
            the Pareto front of a study with ``objective.directions``).

    Raises:
        ExportError: the run cannot be read or holds no complete trial; see `export_checkpoint`.
    """
    out = Path(out)
    # before touching `out`: a failed read leaves nothing
    settings = read_run_file(run, SETTINGS_FILE, endpoint_url) or {}  # none: an older run
    study_objective = Objective.from_dict(settings.get("objective"))
    try:
        objective = study_objective.with_pick(pick)
    except ValueError as exc:
        raise ExportError(f"--pick: {exc}") from None
    refs = _read_run(experiment or run, endpoint_url, study_key, objective)
    if not refs:
        raise ExportError(f"the run at {run} has no finished trial with a checkpoint")
    with replacing(out, overwrite, last=CARD, log=log) as stage:
        card = _export_best(
            run, stage, refs, (objective, study_objective, pick), store, cache_dir, study,
            endpoint_url, log,
        )  # fmt: skip
    log(f"wrote {out / CARD}")
    return ExportResult(out, card)


def _export_best(
    run: str,
    stage: Path,
    refs: list[_TrialRef],
    objectives: tuple[Objective, Objective, Sequence[str]],
    store: str | None,
    cache_dir: str | None,
    study: dict | None,
    endpoint_url: str | None,
    log: Callable[[str], None],
) -> dict:
    """Download the best trial's checkpoint into `stage`, write its export beside it; the card.
    `objectives`: the one trials are ranked by, the study's own, and the --pick rules that make
    the first from the second."""
    objective, study_objective, pick = objectives
    front = objective.front({r.candidate.trial_id: r.record.metrics for r in refs})
    rescore = read_run_file(run, RESCORE_FILE, endpoint_url)
    ref = None
    if rescore is not None:
        ref = _rescored_winner(refs, rescore, stage / "checkpoint", log)
        if ref is None:
            rescore = None
    if ref is None:
        ref, _record = _download_best(
            [r for r in refs if r.candidate.trial_id in front], stage / "checkpoint"
        )
    c = ref.candidate
    feasible = sum(r.candidate.feasible for r in refs)
    log(
        f"best trial {c.trial_id}: {objective.shown} {c.accuracy:.4f} (of {len(refs)} finished "
        f"trials{f', {feasible} feasible' if objective.constraints else ''}"
        f"{f', {len(front)} on the Pareto front' if objective.directions else ''}; "
        f"{objective.selected_on}{'; the re-scored winner' if rescore else ''})"
    )
    if objective.constraints and not c.feasible:
        log(f"warning: no finished trial meets {', '.join(objective.to_dict()['constraints'])}")
    provenance = {
        "run": run,
        "trial_id": c.trial_id,
        "selection": {
            "selected_on": objective.selected_on,
            "objective": study_objective.to_dict(),
            "pick": list(pick),
            "front": sorted(front) if objective.directions else None,
            "metric": objective.shown,
            "mode": "max",
            "tie_break": list(TIE_BREAK),
            "candidates": len(refs),
            "feasible": feasible if objective.constraints else None,
            "best": dataclasses.asdict(c),
            "rescored": rescore is not None,
        },
        "rescore": rescore,
        "study": (
            {**study, "optuna_storage": masked(study.get("optuna_storage"))}
            if study
            else _study_location(run)
        ),
        "trials": _trials_table(refs, objective, front),
        "nested": _nested_entry(run, endpoint_url, log),
    }
    checkpoint = stage / "checkpoint"
    record = _finished_record(checkpoint)
    return _write_export(checkpoint, record, stage / "export", store, cache_dir, provenance, log)


def export_grid(
    run: str,
    out: Any,
    grid: dict,
    *,
    log: Callable[[str], None] = print,
    **kwargs: Any,
) -> dict[str, Any]:
    """Export each cell's best trial of the grid run at `run` into ``out/<cell>`` (cells with no
    finished trial are listed, not exported), then write ``out/grid.json``. `kwargs` go to
    `export_best`. Returns {cell: ExportResult or error text}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    one = grid.get("experiment") == ONE_EXPERIMENT
    for cell in grid["cells"]:
        study = {"optuna_storage": grid["optuna_storage"], "study_name": cell}
        where = {"experiment": run, "study_key": cell} if one else {}
        try:
            cell_run = f"{run.rstrip('/')}/{cell}"
            results[cell] = export_best(cell_run, out / cell, study=study, **where, **kwargs)
            log(f"{cell}: exported to {out / cell}")
        except Exception as error:
            results[cell] = str(error)
            log(f"{cell}: not exported: {error}")
    exported = [c for c, r in results.items() if not isinstance(r, str)]
    record = {"name": grid["name"], "run": run, "cells": exported, "not_exported": {
        c: r for c, r in results.items() if isinstance(r, str)}}  # fmt: skip
    atomic_write_json(out / GRID_FILE, record, sort_keys=False)
    add_files(out, [GRID_FILE])
    return results
