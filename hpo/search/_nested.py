"""Nested cross-validation: an honest estimate of what the whole search-then-train recipe scores.

The plain study picks the hyperparameters with the best mean accuracy over the CV test folds and
reports that same accuracy, so the figure is optimistic: the test folds took part in the
selection. Nested CV keeps them out of it. For each OUTER fold of the configured split:

1. the outer fold's training clips (only those) are split into ``inner_k`` stratified, seeded
   inner folds (`inner_split`: the `pipeline.manifest.stratified_split` rule over those clips,
   seed mixed from ``split.seed`` and the outer fold's index);
2. a full study (the same search and budget as the config) runs on those inner folds, named
   ``<name>-outer-<k>`` in the config's Optuna storage; every outer fold's inner study runs in
   one Ray Tune experiment under ``<run_path>/nested/`` (`hpo.search.run_studies`), so free trial
   slots take trials from any fold;
3. its best trial (`hpo.search.select_best`'s rule) is retrained on the whole outer training set
   for the median of its inner folds' best epochs (`hpo.search.final_epochs`, no early stopping:
   nothing is left to stop on) as a Ray task with the trials' resources, and scored ONCE on the
   outer test fold with the paper's metrics.

`summarize` over the outer folds is the honest figure. Everything lands in ``<run_path>/
nested.json`` (temp name + rename; one PUT on s3://), which ``lushpo export`` copies into the
model card's ``nested`` entry (`card_entry`) and ``lushpo evaluate`` shows beside the
paper-style figure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import tune

from hpo.search._config import StudyConfig
from hpo.search._optuna_storage import masked
from hpo.search._prepare import (
    cache_dir_for,
    compute_split,
    on_this_node,
    resolve_feature_sets,
    start_ray,
    trial_settings,
)
from hpo.search._run_files import read_run_file, remove_run_file, write_run_file
from hpo.search._selection import TIE_BREAK, final_epochs, select_best
from hpo.search._study import run_studies
from hpo.search._trials import StudyResult, TrialRecord
from hpo.train import TrialSettings, float_or_nan, fold_metrics, shown_params, summarize
from pipeline.files import jsonable
from pipeline.groups import grouped_split
from pipeline.manifest import LABELS, Clip, Manifest, Split, check_split, stratified_split
from pipeline.store import open_store

__all__ = [
    "NESTED_FILE",
    "NestedLeakError",
    "card_entry",
    "inner_split",
    "nested_table",
    "outer_config",
    "read_nested",
    "refit_and_score",
    "run_nested",
]

NESTED_FILE = "nested.json"
FORMAT = "lushpo-nested/1"
NESTED_DIR = "nested"  # under the run path: the inner studies' one Ray Tune experiment


class NestedLeakError(RuntimeError):
    """An outer test clip reached an inner split: the estimate would not be honest."""


# --- splits ------------------------------------------------------------------------------------


def _mix(seed: int, outer: int) -> int:
    """A 31-bit seed per outer fold, independent of run order."""
    return int(np.random.SeedSequence([int(seed), int(outer)]).generate_state(1)[0] >> 1)


def inner_split(
    train_ids: Sequence[str],
    labels: Mapping[str, str],
    k: int,
    seed: int,
    outer: int = 0,
    groups: Mapping[str, str] | None = None,
) -> Split:
    """Stratified `k`-fold split of one outer fold's training clips, and of nothing else; a
    stratified *group* k-fold when `groups` (clip → patient/source) is given.

    Args:
        train_ids: the outer fold's training clip ids.
        labels: clip id → class name (one of LABELS) for at least those clips.
        k: inner folds.
        seed: the study's split seed; mixed with `outer` so each outer fold draws its own.
        outer: the outer fold's index.

    Returns:
        A Split named ``inner-<outer>`` whose train ∪ test is exactly `train_ids` (warnings, as
        `stratified_split`'s, name inner folds missing a class).
    """
    missing = [c for c in train_ids if c not in labels]
    if missing:
        raise ValueError(
            f"outer fold {outer}: no label for {len(missing)} clip(s), e.g. {missing[:3]}"
        )
    if len(set(train_ids)) < k:
        raise ValueError(
            f"outer fold {outer}: {len(set(train_ids))} training clips cannot make {k} inner folds"
        )
    manifest = Manifest(
        clips=tuple(
            Clip(id=c, label=labels[c], path=Path(c), frames=0) for c in sorted(set(train_ids))
        )
    )
    if groups is None:
        split = stratified_split(manifest, k, _mix(seed, outer))
    else:
        split = grouped_split(manifest, groups, k, _mix(seed, outer))
    inner = Split(
        f"inner-{outer}",
        split.folds,
        tuple(f"outer fold {outer}, inner {w}" for w in split.warnings),
        split.groups,
    )
    check_split(inner, train_ids, source=f"outer fold {outer}: inner split")
    return inner


def _check_no_leak(outer: int, test_ids: Sequence[str], inner: Split) -> None:
    held_out = set(test_ids)
    leaked = sorted(
        held_out.intersection(c for fold in inner.folds for c in (*fold.train, *fold.test))
    )
    if leaked:
        raise NestedLeakError(
            f"outer fold {outer}: {len(leaked)} outer test clip(s) in the inner split, "
            f"e.g. {leaked[:3]}"
        )


def outer_config(cfg: StudyConfig, outer: int) -> StudyConfig:
    """The inner study of outer fold `outer`: named ``<name>-outer-<outer>``, its run files
    under ``<run_path>/nested/<name>-outer-<outer>``, its Optuna study in the config's own
    Optuna storage; its trials run in `inner_experiment`."""
    storage = {"storage_path": f"{cfg.run_path}/{NESTED_DIR}"}  # the Optuna storage is kept
    return cfg.replace(name=f"{cfg.name}-outer-{outer}", storage=storage)


def inner_experiment(cfg: StudyConfig) -> StudyConfig:
    """The Ray Tune experiment at ``<run_path>/nested`` that runs every outer fold's inner
    study (`hpo.search.run_studies`)."""
    return cfg.replace(name=NESTED_DIR, storage={"storage_path": cfg.run_path})


# --- the refit on the whole outer training set -------------------------------------------------


def refit_and_score(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    params: Mapping[str, Any],
    *,
    epochs: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit the head on (x_train, y_train) for exactly `epochs` epochs and score it once on the
    test clips; the same recipe as the exported ``model.h5`` (`hpo.results`). No Ray."""
    from hpo.train import fit_head, predict_proba

    model = fit_head(
        x_train,
        y_train,
        params,
        epochs=epochs,
        seed=seed,
    )
    proba = predict_proba(model, x_test)
    y_pred = proba.argmax(axis=1)
    metrics = fold_metrics(np.asarray(y_test, dtype=np.int64), y_pred)
    metrics.update(
        y_true=np.asarray(y_test).astype(int).tolist(),
        y_pred=y_pred.astype(int).tolist(),
        probabilities=np.round(proba, 6).tolist(),
    )
    return metrics


def _refit_remote(
    settings: TrialSettings,
    params: dict[str, Any],
    train_ids: list[str],
    test_ids: list[str],
    epochs: int,
) -> dict[str, Any]:
    """Ray task body: read the feature set through this node's cache, then `refit_and_score`."""
    from hpo.train import configure_tensorflow

    settings = on_this_node(settings)
    configure_tensorflow(settings)
    fs = open_store(settings.store_uri, settings.cache_dir).get(settings.feature_set_key(params))
    position = {c: i for i, c in enumerate(fs.clip_ids)}
    absent = [c for c in (*train_ids, *test_ids) if c not in position]
    if absent:
        raise ValueError(
            f"feature set {fs.spec.key()} lacks {len(absent)} clip(s), e.g. {absent[:3]}"
        )
    train = [position[c] for c in train_ids]
    test = [position[c] for c in test_ids]
    labels = np.asarray(fs.labels, dtype=np.int64)
    metrics = refit_and_score(
        fs.features[train],
        labels[train],
        fs.features[test],
        labels[test],
        params,
        epochs=epochs,
        seed=settings.seed,
    )
    metrics["test_ids"] = list(test_ids)
    return metrics


# --- selection ---------------------------------------------------------------------------------


def _best(result: StudyResult) -> TrialRecord:
    """The inner study's best finished trial by `hpo.search.select_best`'s documented rule."""
    finished = [
        t
        for t in result.trials
        if t.error is None and t.metrics.get("final") is True and t.value is not None
    ]
    if not finished:
        raise RuntimeError(
            f"inner study {result.name!r} has no trial that finished its cross-validation "
            f"(run {result.run_path})"
        )
    candidates = [t.objective.candidate(t.trial_id, i, t.metrics) for i, t in enumerate(finished)]
    return finished[select_best(candidates).order]


def _inner_best_epochs(trial: TrialRecord) -> list[int]:
    epochs = [f.get("best_epoch") for f in trial.folds]
    if not epochs or not all(isinstance(e, int) and e > 0 for e in epochs):
        raise RuntimeError(
            f"trial {trial.trial_id} ({trial.path}) records no best epoch per inner fold: {epochs}"
        )
    return [e for e in epochs if isinstance(e, int)]


# --- reading and writing nested.json ------------------------------------------------------------


def _write(cfg: StudyConfig, record: dict[str, Any]) -> str:
    """nested.json in the run dir (`hpo.search`)."""
    return write_run_file(cfg.run_path, NESTED_FILE, jsonable(record), cfg.storage.endpoint_url)


def _remove(cfg: StudyConfig) -> None:
    """Drop an earlier nested.json (``--overwrite``), so an interrupted rerun leaves none stale."""
    remove_run_file(cfg.run_path, NESTED_FILE, cfg.storage.endpoint_url)


def read_nested(run: str, endpoint_url: str | None = None) -> dict[str, Any] | None:
    """The run's nested.json (local path or s3:// run), or None when the run has none."""
    return read_run_file(run, NESTED_FILE, endpoint_url)


def card_entry(nested: Mapping[str, Any]) -> dict[str, Any]:
    """The model card's ``nested`` entry: nested.json without the inner splits' clip lists (their
    digests and sizes stay) and without per-clip probabilities, so the card stays small."""
    entry = {k: v for k, v in nested.items() if k != "outer_folds"}
    folds = []
    for fold in nested.get("outer_folds", []):
        slim = {k: v for k, v in fold.items() if k != "inner_split"}
        slim["test"] = {k: v for k, v in fold.get("test", {}).items() if k != "probabilities"}
        folds.append(slim)
    entry["outer_folds"] = folds
    return entry


# --- the nested run ----------------------------------------------------------------------------


def _outer_record(
    k: int,
    outer_test: Sequence[str],
    outer_train: Sequence[str],
    inner: Split,
    result: StudyResult,
    best: TrialRecord,
    best_epochs: list[int],
    epochs: int,
    test: dict[str, Any],
) -> dict[str, Any]:
    return {
        "outer_fold": k,
        "study": result.name,
        "run_path": result.run_path,
        "train_clips": len(outer_train),
        "test_clips": len(outer_test),
        "inner_split": inner.to_dict(),
        "inner_split_digest": inner.digest(),
        "inner_warnings": list(inner.warnings),
        "trials": len(result.trials),
        "trials_finished": sum(1 for t in result.trials if t.value is not None),
        "best_trial_id": best.trial_id,
        "params": dict(best.params),
        "inner_accuracy": {
            "mean": float_or_nan(best.metrics.get("accuracy")),
            "std": float_or_nan(best.metrics.get("accuracy_std")),
        },
        "inner_cov_recall": float_or_nan(best.metrics.get("cov_recall_mean")),
        "inner_best_epochs": best_epochs,
        "epochs": epochs,
        "test": test,
    }


def run_nested(
    cfg: StudyConfig,
    *,
    inner_k: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Callable[[StudyConfig], Sequence[tune.Callback]] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Nested CV of the study `cfg`; returns the nested.json record (also written to the run dir).

    Args:
        cfg: the study; its split gives the outer folds, its budget each inner study's budget.
        inner_k: inner folds per outer training set (default ``cfg.split.k``).
        resume / overwrite: passed to the inner studies' experiment (see `run_studies`).
        callbacks: the inner experiment's config (``budget.trials`` all folds' total) → its
            Ray Tune callbacks (e.g. a progress view).
        log: progress messages.

    Raises:
        NestedLeakError: an outer test clip reached an inner split (a bug; never expected).
        Whatever `run_studies` raises (StudyExistsError, AllTrialsFailedError…).
    """
    inner_k = cfg.split.k if inner_k is None else int(inner_k)
    if inner_k < 2:
        raise ValueError(f"inner folds must be >= 2, got {inner_k} (--inner-folds)")
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    keys = resolve_feature_sets(cfg)
    key = next(iter(keys.values()))
    if overwrite:
        _remove(cfg)
    start = time.monotonic()
    started = start_ray(cfg)
    try:
        node_id = ray.get_runtime_context().get_node_id()
        outer = compute_split(cfg, key, node_id)
        for warning in outer.warnings:
            log(f"outer split: {warning}")
        fs = open_store(cfg.store_uri, cache_dir=cache_dir_for(cfg, node_id)).get(key)
        labels = {c: LABELS[int(y)] for c, y in zip(fs.clip_ids, fs.labels, strict=True)}
        del fs
        refit = ray.remote(_refit_remote).options(
            num_cpus=cfg.resources.cpu, num_gpus=cfg.resources.gpu, max_retries=0
        )
        inner_splits: dict[str, Split] = {}
        studies: list[StudyConfig] = []
        for k, fold in enumerate(outer.folds):
            inner = inner_split(
                fold.train, labels, inner_k, cfg.split.seed, outer=k, groups=outer.groups
            )
            _check_no_leak(k, fold.test, inner)
            studies.append(outer_config(cfg, k))
            inner_splits[studies[-1].name] = inner
            log(
                f"outer fold {k + 1}/{len(outer.folds)}: study {studies[-1].name!r} on "
                f"{len(fold.train)} training clips in {inner_k} inner folds; "
                f"{len(fold.test)} test clips held out"
            )
        # Every outer fold's inner study in one Ray Tune experiment: free slots take trials
        # from any fold (each keeps its own budget and max_concurrent).
        experiment = inner_experiment(cfg)
        total = sum(study.budget.trials for study in studies)
        results = run_studies(
            experiment,
            studies,
            resume=resume,
            overwrite=overwrite,
            callbacks=callbacks(experiment.replace(budget={"trials": total})) if callbacks else (),
            log=log,
            splits=inner_splits,
        )
        refits = []
        for k, (fold, study) in enumerate(zip(outer.folds, studies, strict=True)):
            result, inner = results[study.name], inner_splits[study.name]
            best = _best(result)
            best_epochs = _inner_best_epochs(best)
            epochs = final_epochs(best_epochs)
            settings = trial_settings(cfg, keys, inner)
            task = refit.remote(
                settings, dict(best.params), list(fold.train), list(fold.test), epochs
            )
            refits.append((k, fold, inner, result, best, best_epochs, epochs, task))
        folds: list[dict[str, Any]] = []
        for k, fold, inner, result, best, best_epochs, epochs, task in refits:
            test = ray.get(task)
            log(
                f"outer fold {k}: best inner trial {best.trial_id} (inner accuracy "
                f"{float_or_nan(best.metrics.get('accuracy')):.3f}), retrained {epochs} epochs on "
                f"{len(fold.train)} clips, outer test accuracy {test['accuracy']:.3f}"
            )
            folds.append(
                _outer_record(
                    k, fold.test, fold.train, inner, result, best, best_epochs, epochs, test
                )
            )
    finally:
        if started:
            ray.shutdown()
    summary = summarize([f["test"] for f in folds])
    cov = summary["per_class"]["cov"]["recall"]
    record = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "name": cfg.name,
        "run_path": cfg.run_path,
        "optuna_storage": masked(cfg.storage.optuna_storage),
        "feature_set": key,
        "outer_split": {"name": outer.name, "digest": outer.digest(), "folds": len(outer.folds)},
        "inner_folds": inner_k,
        "inner_seed_rule": "numpy SeedSequence([split.seed, outer fold]) → stratified_split",
        "budget": {"trials": cfg.budget.trials, "max_epochs": cfg.budget.max_epochs},
        "selection": "inner mean CV accuracy; ties: " + ", ".join(TIE_BREAK),
        "refit_rule": "whole outer training set, median of the best trial's inner best epochs",
        "outer_folds": folds,
        "summary": summary,
        "accuracy": summary["accuracy"],
        "cov_recall": {"mean": cov["mean"], "std": cov["std"]},
        "elapsed_s": round(time.monotonic() - start, 1),
    }
    where = _write(cfg, record)
    log(
        f"nested CV: accuracy {summary['accuracy']['mean']:.3f} ± {summary['accuracy']['std']:.3f}"
        f" over {len(folds)} outer folds; wrote {where}"
    )
    return record


def nested_table(record: Mapping[str, Any]) -> str:
    """Per outer fold: inner CV accuracy of the selected config, epochs, outer test accuracy and
    COVID recall; then the honest mean ± std (what ``lushpo tune --nested`` prints)."""

    header = f"{'outer':>5} {'clips':>11} {'trials':>6} {'inner acc':>9} {'epochs':>6} "
    header += f"{'test acc':>8} {'cov rec':>7}  selected params"
    lines = [f"nested CV of {record['name']}: {record['outer_split']['name']} outer split", header]
    lines.append("-" * len(header))
    for f in record["outer_folds"]:
        inner = f["inner_accuracy"]["mean"]
        params = " ".join(f"{k}={_short(v)}" for k, v in shown_params(f["params"]))
        lines.append(
            f"{f['outer_fold']:>5} {f['train_clips']:>5}/{f['test_clips']:<5} "
            f"{f['trials_finished']:>6} {_short(inner):>9} {f['epochs']:>6} "
            f"{_short(f['test']['accuracy']):>8} "
            f"{_short(f['test']['per_class']['cov']['recall']):>7}  {params}"
        )
    acc, cov = record["accuracy"], record["cov_recall"]
    lines.append(
        f"honest estimate: accuracy {_short(acc['mean'])} ± {_short(acc['std'])}, "
        f"COVID recall {_short(cov['mean'])} ± {_short(cov['std'])} "
        f"({record['inner_folds']} inner folds; "
        f"{', '.join(str(f['trials_finished']) for f in record['outer_folds'])} finished trials "
        f"of a budget of {record['budget']['trials']} per outer fold)"
    )
    return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else "nan"
    return str(value)
