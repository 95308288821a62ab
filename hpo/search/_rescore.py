"""The winner's curse, measured: the study's top-k trials retrained with fresh seeds.

A study's best trial won on one draw of weight initialisation, dropout masks, batch order and
inner validation split. With folds of ~24 clips, that luck alone moves the mean CV accuracy by
several points, so the top trial is partly the luckiest one. ``rescore: {top_k, seeds}`` retrains
each of the top-k trials (by study score) ``seeds`` more times, on the same outer folds, each time
with a fresh training seed — which also draws a new inner validation split — and ranks them by
the mean over those seeds. The exported model is then the re-scored winner (`hpo.results`).

The re-scored mean is still measured on the test folds that chose the top k, so it stays
optimistic; what it removes is the seed luck of the single run. Nested CV
(``lushpo tune --nested``) is the honest estimate.

``<run>/rescore.json`` records, per trial: the study score, each seed's mean CV accuracy, their
mean and population std, and the winner; plus the feature set key and split digest it belongs to,
so an export of another study never picks it up.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from hpo.search._config import StudyConfig
from hpo.search._prepare import (
    compute_split,
    on_this_node,
    resolve_feature_sets,
    start_ray,
    trial_settings,
)
from hpo.search._run_files import RESCORE_FILE, read_run_file, remove_run_file, write_run_file
from hpo.search._selection import TIE_BREAK
from hpo.search._trials import StudyResult, TrialRecord
from hpo.train import TrialSettings, float_or_nan
from pipeline.store import open_store

__all__ = [
    "RESCORE_FILE",
    "rescore_seeds",
    "run_rescore",
    "top_trials",
]

FORMAT = "lushpo-rescore/1"


def rescore_seeds(base: int, count: int) -> list[int]:
    """`count` training seeds drawn from the study's seed, none equal to it (31-bit)."""
    state = np.random.SeedSequence([int(base), 0x5EED]).generate_state(count + 1)
    seeds = [int(s >> 1) for s in state if int(s >> 1) != base]
    return seeds[:count]


def top_trials(result: StudyResult, k: int) -> list[TrialRecord]:
    """The `k` trials with the highest study score (finished trials only; ties: the earlier)."""
    finished = [(i, t, t.value) for i, t in enumerate(result.trials) if t.value is not None]
    finished.sort(key=lambda row: (-row[2], row[0]))
    return [t for _, t, _ in finished[:k]]


def _rescore_remote(
    settings: TrialSettings, params: dict[str, Any], seed: int, prefix: str = ""
) -> dict[str, Any]:
    """Ray task body: one k-fold CV of `params` with training seed `seed` (`cross_validate`),
    scored on the objective's folds (`prefix`: `hpo.search.Objective.prefix`)."""
    from hpo.train import configure_tensorflow, cross_validate_with

    settings = dataclasses.replace(on_this_node(settings), seed=seed)
    configure_tensorflow(settings)
    fs = open_store(settings.store_uri, settings.cache_dir).get(settings.feature_set_key(params))
    result = cross_validate_with(fs, settings, params)  # settings.seed is the fresh seed
    return {
        "seed": seed,
        "accuracy": float(result.metrics[f"{prefix}accuracy"]),
        "cov_recall": float(result.metrics[f"{prefix}cov_recall_mean"]),
        "fold_accuracy": [
            float((f["validation"] if prefix else f)["accuracy"]) for f in result.folds
        ],
    }


def _summary(trial: TrialRecord, runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    acc = np.asarray([r["accuracy"] for r in runs], dtype=np.float64)
    cov = np.asarray([r["cov_recall"] for r in runs], dtype=np.float64)
    return {
        "trial_id": trial.trial_id,
        "params": trial.params,
        "study_accuracy": float_or_nan(trial.value),
        "runs": sorted(runs, key=lambda r: r["seed"]),
        "mean": float(acc.mean()),
        "std": float(acc.std(ddof=0)),
        "cov_recall_mean": float(cov.mean()),
    }


def run_rescore(
    cfg: StudyConfig, result: StudyResult, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Retrain the top ``cfg.rescore.top_k`` trials of `result` with ``cfg.rescore.seeds`` fresh
    seeds each, as Ray tasks with the study's per-trial resources; write and return
    rescore.json's record. The winner has the highest re-scored mean (ties: higher mean COVID
    recall, then the higher study score)."""
    top_k, count = cfg.rescore.top_k, cfg.rescore.seeds
    trials = top_trials(result, top_k)
    if not trials:
        raise ValueError(f"rescore: study {cfg.name!r} has no finished trial to re-score")
    seeds = rescore_seeds(cfg.training.seed, count)
    done = read_run_file(cfg.run_path, RESCORE_FILE, cfg.storage.endpoint_url)
    if (
        done is not None
        and done.get("seeds") == seeds
        and [r["trial_id"] for r in done.get("trials", [])] == [t.trial_id for t in trials]
    ):  # a rerun (`lushpo run`, `tune --resume` of a finished study) does not retrain again
        log(f"rescore: already done for these {len(trials)} trials and seeds; {RESCORE_FILE} kept")
        return done
    remove_run_file(cfg.run_path, RESCORE_FILE, cfg.storage.endpoint_url)
    start = time.monotonic()
    started = start_ray(cfg)
    try:
        import ray

        keys = resolve_feature_sets(cfg)
        node_id = ray.get_runtime_context().get_node_id()
        key = next(iter(keys.values()))
        split = compute_split(cfg, key, node_id)
        settings = trial_settings(cfg, keys, split)
        task = ray.remote(_rescore_remote).options(
            num_cpus=cfg.resources.cpu, num_gpus=cfg.resources.gpu, max_retries=0
        )
        prefix = cfg.objective.objective().prefix
        pending = {
            task.remote(settings, t.params, seed, prefix): t.trial_id
            for t in trials
            for seed in seeds
        }
        log(f"rescore: {len(trials)} trials × {len(seeds)} seeds = {len(pending)} CV runs")
        runs: dict[str, list[dict[str, Any]]] = {t.trial_id: [] for t in trials}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            trial_id = pending.pop(done[0])
            run = ray.get(done[0])
            runs[trial_id].append(run)
            log(
                f"rescore: trial {trial_id} seed {run['seed']}: mean CV accuracy "
                f"{run['accuracy']:.3f} ({len(pending)} runs left)"
            )
    finally:
        if started:
            import ray

            ray.shutdown()
    rows = [_summary(t, runs[t.trial_id]) for t in trials]
    winner = min(
        rows,
        key=lambda r: (
            -r["mean"],
            -r["cov_recall_mean"] if math.isfinite(r["cov_recall_mean"]) else math.inf,
            -r["study_accuracy"],
        ),
    )
    sets = settings.feature_sets
    record = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "study": cfg.name,
        "feature_set": sets if isinstance(sets, str) else dict(sets),
        "split": {"name": split.name, "digest": split.digest()},
        "top_k": top_k,
        "seeds": seeds,
        "seed_rule": "numpy SeedSequence([training.seed, 0x5EED]); each seed also draws the "
        "inner validation split",
        "selection": "highest re-scored mean CV accuracy; ties: higher mean COVID recall, then "
        "higher study score (study ranking: " + ", ".join(TIE_BREAK) + ")",
        "label": (
            "re-scored on the same test folds that chose the top k: less seed luck, still "
            "optimistic"
            if cfg.objective.on == "test_folds"
            else "re-scored on each fold's inner validation split: the test folds unseen"
        ),
        "trials": rows,
        "winner": winner["trial_id"],
        "elapsed_s": round(time.monotonic() - start, 1),
    }
    where = write_run_file(cfg.run_path, RESCORE_FILE, record, cfg.storage.endpoint_url)
    log(
        f"rescore: winner {winner['trial_id']} re-scored {winner['mean']:.3f} ± "
        f"{winner['std']:.3f} over {len(seeds)} seeds (study score "
        f"{winner['study_accuracy']:.3f}); {where}"
    )
    return record
