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

import numpy as np

from hpo import project
from hpo.results._baseline import linear_probe, temporal_claim
from hpo.results._export_folder import add_files, replacing
from hpo.search import (
    GRID_FILE,
    ONE_EXPERIMENT,
    RESCORE_FILE,
    SETTINGS_FILE,
    TIE_BREAK,
    Candidate,
    Objective,
    card_entry,
    experiment_paths,
    final_epochs,
    masked,
    read_nested,
    read_run_file,
    select_best,
    selected_on,
)
from hpo.train import (
    STUDY_KEY,
    bootstrap_ci,
    fit_head,
    float_or_nan,
    fold_metrics,
    is_paper_best,
    predict_proba,
    summarize,
)
from pipeline.files import (
    atomic_write_json,
    library_versions,
    s3_filesystem,
    sha256_file,
)
from pipeline.manifest import Split
from pipeline.paper_layout import write_paper_layout
from pipeline.store import open_store

__all__ = [
    "CARD",
    "ExportError",
    "ExportResult",
    "claim",
    "confidence",
    "export_best",
    "export_checkpoint",
    "export_grid",
    "fold_predictions",
    "read_card",
    "run_filesystem",
    "spatial_baseline",
]

CARD = "model_card.json"
CARD_FORMAT = "lushpo-model-card/1"
_LIBRARIES = (
    "lushpo",
    "tensorflow",
    "keras",
    "numpy",
    "scikit-learn",
    "ray",
    "optuna",
    "opencv-python-headless",
    "h5py",
)


class ExportError(RuntimeError):
    """The run holds no exportable trial, or the output folder cannot be written."""


def read_card(directory: Path | str) -> dict:
    """The model card of an exported folder.

    Raises:
        FileNotFoundError: naming the folder when it has no model_card.json (export incomplete).
        ValueError: when the card is not JSON or has another format.
    """
    path = Path(directory) / CARD
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: {directory} is not a finished `lushpo export` folder"
        )
    try:
        card = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if card.get("format") != CARD_FORMAT:
        raise ValueError(f"{path}: format {card.get('format')!r}, expected {CARD_FORMAT!r}")
    return card


# --- reading the run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _TrialRef:
    candidate: Candidate
    trial: Any  # ray.tune.experiment.Trial
    config: dict


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
    from ray.tune import ExperimentAnalysis

    path, filesystem = run_filesystem(run, endpoint_url)
    if filesystem is None and "://" not in path:
        if not Path(path).is_dir():
            raise ExportError(
                f"{run}: no such run directory (a study's <storage_path>/<name>, e.g. "
                ".lushpo/runs/quick)"
            )
        path = str(Path(path).resolve())  # Ray reads relative paths as URIs without a scheme
    trials = []
    for experiment in experiment_paths(filesystem, path):  # continuations of a raised budget
        try:
            analysis = ExperimentAnalysis(experiment, storage_filesystem=filesystem)
        except (ValueError, FileNotFoundError, OSError) as exc:
            if experiment != path and isinstance(exc, ValueError):
                continue  # "no experiment snapshot": a continuation that died before Tune saved
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"cannot read the Ray Tune run at {run}: {first}") from exc
        trials += analysis.trials
    refs = []
    if study_key is not None:
        trials = [t for t in trials if (t.config or {}).get(STUDY_KEY) == study_key]
    for order, trial in enumerate(trials):
        result = trial.last_result or {}
        if trial.status == "ERROR" or trial.checkpoint is None or "accuracy" not in result:
            continue
        if result.get("final") is False:  # stopped early (ASHA): its accuracy is validation's
            continue
        refs.append(
            _TrialRef(
                objective.candidate(str(trial.trial_id), order, result),
                trial,
                {k: v for k, v in (trial.config or {}).items() if k != STUDY_KEY},
            )
        )
    return refs


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
        ref.trial.checkpoint.to_directory(str(dest))
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
    ref.trial.checkpoint.to_directory(str(dest))
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
        c, result = ref.candidate, ref.trial.last_result or {}
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
                "paper_best": is_paper_best(ref.config),
            }
        )
    return rows


# --- writing the folder ------------------------------------------------------------------------


def _save_h5(model: Any, path: Path) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")  # keeps the .h5 suffix
    model.save(tmp)
    os.replace(tmp, path)


def _select(fs: Any, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    position = {clip: i for i, clip in enumerate(fs.clip_ids)}
    missing = [clip for clip in ids if clip not in position]
    if missing:
        raise ExportError(
            f"feature set {fs.spec.key()} lacks {len(missing)} clips of the trial's split, "
            f"e.g. {missing[:3]}"
        )
    rows = [position[clip] for clip in ids]
    return np.asarray(fs.features[rows], dtype=np.float32), np.asarray(fs.labels)[rows]


def fold_predictions(
    directory: Path, split: dict, features: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]
) -> tuple[list[dict], dict[str, tuple[int, int]]]:
    """Each ``fold-{i}.h5`` in `directory`, loaded the way users load it, scored on its test fold.

    Returns the per-fold metrics and the pooled out-of-fold predictions, clip id → (true label,
    predicted label). `features(ids)` gives those clips' features and labels."""
    import tensorflow as tf

    folds: list[dict[str, Any]] = []
    pooled: dict[str, tuple[int, int]] = {}
    for i, fold in enumerate(split["folds"]):
        # compile=False: scoring needs no optimizer (and Keras would warn about its absence)
        model = tf.keras.models.load_model(directory / f"fold-{i}.h5", compile=False)
        x, y = features(fold["test"])
        pred = predict_proba(model, x).argmax(axis=1)
        folds.append(fold_metrics(y, pred))
        pooled.update(zip(fold["test"], zip(map(int, y), map(int, pred), strict=True), strict=True))
    return folds, pooled


def confidence(pooled: dict[str, tuple[int, int]]) -> dict:
    """`hpo.train.bootstrap_ci` of pooled out-of-fold (true, predicted) labels by clip id."""
    ids = sorted(pooled)
    return bootstrap_ci([pooled[c][0] for c in ids], [pooled[c][1] for c in ids])


def spatial_baseline(fs: Any, split: dict) -> dict:
    """`hpo.results.linear_probe` on the trial's folds, without its per-clip predictions."""

    features = dict(zip(fs.clip_ids, fs.features, strict=True))
    labels = dict(zip(fs.clip_ids, map(int, fs.labels), strict=True))
    probe = linear_probe(features, labels, Split.from_dict(split))
    return {k: v for k, v in probe.items() if k != "predictions"}


def claim(card: dict) -> str:
    """The temporal-vs-spatial sentence for a card (or report) holding ``summary``, ``baseline``,
    ``params`` and optionally ``nested``: on the nested (honest) figure when there is one."""

    nested = card.get("nested") or {}
    honest = nested.get("accuracy", {}).get("mean")
    study = honest if honest is not None else card["summary"]["accuracy"]["mean"]
    return temporal_claim(
        float(study),
        float(card["baseline"]["summary"]["accuracy"]["mean"]),
        honest=honest is not None,
        head=str(card["params"].get("head", "lstm")),
        selected_on=selected_on(card),
    )


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
    front = objective.front({r.candidate.trial_id: r.trial.last_result or {} for r in refs})
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
    export: Callable[..., Any],
    log: Callable[[str], None] = print,
    **kwargs: Any,
) -> dict[str, Any]:
    """Export each cell's best trial of the grid run at `run` into ``out/<cell>`` (cells with no
    finished trial are listed, not exported), then write ``out/grid.json``. `export` is
    `export_best`; `kwargs` go to it. Returns {cell: ExportResult or error text}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    one = grid.get("experiment") == ONE_EXPERIMENT
    for cell in grid["cells"]:
        study = {"optuna_storage": grid["optuna_storage"], "study_name": cell}
        where = {"experiment": run, "study_key": cell} if one else {}
        try:
            cell_run = f"{run.rstrip('/')}/{cell}"
            results[cell] = export(cell_run, out / cell, study=study, **where, **kwargs)
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
