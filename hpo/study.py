"""A study: Ray Tune's Tuner driving OptunaSearch (+ optional ASHA) over `hpo.trainable.train_cv`.

The driver does the cheap, fail-fast work itself — resolve the feature set key(s) in the store,
compute the split on the feature set's clip ids, check the run name — then hands Ray three
separate objects built from the config: the search (OptunaSearch behind a ConcurrencyLimiter,
persisted to an Optuna RDB storage so ``optuna-dashboard`` shows it), the run policy (scheduler,
budget, storage, failure retries) and the per-trial resources. Trials read features from the
store through their node's cache; nothing large travels from the driver.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
from ray.tune.experiment.trial import Trial
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils.serialization import _loads_with_cloudpickle

from hpo import space as hspace
from hpo.config import StudyConfig
from hpo.quiet import quieted
from hpo.run_files import read_run_file, write_run_file
from hpo.trial_settings import HISTORY, STATE_FILE, TRIAL_FILE, TrialSettings
from pipeline.cluster import connect
from pipeline.files import on_node, s3_filesystem
from pipeline.groups import grouped_split, read_groups
from pipeline.manifest import (
    LABELS,
    METADATA_CSV,
    Clip,
    Manifest,
    Split,
    paper_split,
    stratified_split,
)
from pipeline.store import FeatureSetNotFoundError, open_store

__all__ = [
    "SAMPLERS",
    "AllTrialsFailedError",
    "StudyExistsError",
    "StudyInterruptedError",
    "StudyResult",
    "StudySettingsChangedError",
    "TrialRecord",
    "make_sampler",
    "run_study",
    "train_on_node",
]

# The study's objective, what Optuna records: the mean k-fold CV *test* accuracy, in a trial's
# final result only (every earlier result carries it as None, since Ray Tune wants the searcher's
# metric in every result). ASHA and Optuna's intermediate values use the validation curve.
OBJECTIVE = "test_accuracy"
VALIDATION = "val_accuracy"  # per epoch: the folds' mean inner-validation accuracy
MODE = "max"

SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed),
}
"""Optuna samplers by name; `make_sampler` lists these names when given another."""


class StudyExistsError(RuntimeError):
    """A study of this name already exists at the storage path and neither --resume nor
    --overwrite was given."""


class StudySettingsChangedError(ValueError):
    """--resume with training settings that differ from the study's own (named in the message)."""


class StudyInterruptedError(RuntimeError):
    """Ctrl-C (SIGINT) stopped the study; Ray Tune saved its state, so --resume continues it."""

    def __init__(self, name: str, run_path: str) -> None:
        self.name, self.run_path = name, run_path
        super().__init__(f"study {name!r} interrupted; its state is saved at {run_path}")


class AllTrialsFailedError(RuntimeError):
    """Every trial of the study failed; the message carries the first error and the logs' place."""


@dataclass(frozen=True)
class TrialRecord:
    trial_id: str
    status: str  # TERMINATED | STOPPED (before its test scores: ASHA, time budget) | ERROR
    params: dict[str, Any]
    metrics: dict[str, Any]  # the trial's last result
    folds: list[dict[str, Any]] = field(default_factory=list)  # per-fold metrics (trial.json)
    error: str | None = None
    path: str | None = None  # the trial's directory in the run's storage

    @property
    def value(self) -> float | None:
        """Mean CV test accuracy; None for a failed trial or one stopped before its final
        result (it has only validation scores, not comparable)."""
        v = self.metrics.get(OBJECTIVE, self.metrics.get("accuracy"))  # runs before test_accuracy
        finished = self.metrics.get("final") is True
        return None if self.error or not finished or v is None else float(v)


@dataclass(frozen=True)
class StudyResult:
    name: str
    run_path: str  # <storage_path>/<name>: Ray Tune's experiment dir
    optuna_storage: str
    trials: tuple[TrialRecord, ...]
    already_finished: bool = False  # --resume found nothing left to run

    @property
    def best(self) -> TrialRecord | None:
        done = [t for t in self.trials if t.value is not None]
        return max(done, key=lambda t: t.value) if done else None


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The seeded Optuna sampler registered under `name`."""
    try:
        return SAMPLERS[name](seed)
    except KeyError:
        raise ValueError(
            f"unknown sampler {name!r} (searcher.sampler); valid names: {sorted(SAMPLERS)}"
        ) from None


# --- storage -------------------------------------------------------------------------------------


def storage_filesystem(cfg: StudyConfig) -> tuple[pafs.FileSystem | None, str]:
    """(filesystem, path) for RunConfig: local paths as they are; s3:// through pyarrow's
    S3FileSystem pointed at the configured endpoint (e.g. MinIO or moto) when there is one."""
    path = cfg.storage.storage_path
    if not path.startswith("s3://"):
        return None, path
    return s3_filesystem(cfg.storage.endpoint_url), path[len("s3://") :].rstrip("/")


def _run_exists(fs: pafs.FileSystem | None, run_path: str) -> bool:
    if fs is None:
        return Path(run_path).exists() and any(Path(run_path).iterdir())
    info = fs.get_file_info(pafs.FileSelector(run_path, allow_not_found=True))
    return len(info) > 0


def _delete_run(fs: pafs.FileSystem | None, run_path: str, cfg: StudyConfig) -> None:
    if fs is None:
        shutil.rmtree(run_path, ignore_errors=True)
    else:
        fs.delete_dir_contents(run_path, missing_dir_ok=True)
    # The default sqlite file lives in the run dir and went with it; opening its URL now would
    # fail (no directory), so only a storage that still holds the study is asked to delete it.
    if _optuna_has_study(cfg.storage.optuna_storage, cfg.name):
        optuna.delete_study(study_name=cfg.name, storage=cfg.storage.optuna_storage)


def _optuna_storage(url: str) -> optuna.storages.BaseStorage:
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(url)


def _optuna_has_study(url: str, name: str) -> bool:
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        return False
    try:
        return name in optuna.get_all_study_names(storage=url)
    except Exception:  # an unreachable DB is reported when the study opens it
        return False


# --- driver-side preparation -------------------------------------------------------------------


def resolve_feature_sets(cfg: StudyConfig) -> dict[tuple[str, int], str]:
    """{(backbone, frames): store key} for every feature set the study may read, or a clear error
    naming the store and what it holds. Runs on the driver before any Ray work."""
    if cfg.store is None:
        raise ValueError("no feature store given: set `store` in the config or pass --store")
    store = open_store(cfg.store)
    fs_cfg = cfg.feature_set
    if fs_cfg.key is not None:
        if not store.exists(fs_cfg.key):
            raise store._not_found(fs_cfg.key)
        return {(fs_cfg.backbone[0], fs_cfg.frames[0]): fs_cfg.key}
    keys: dict[tuple[str, int], str] = {}
    for backbone in fs_cfg.backbone:
        for frames in fs_cfg.frames:
            found = store.find(backbone, frames, fs_cfg.sampling)
            if not found:
                held = [m["key"] for m in store.list()]
                raise FeatureSetNotFoundError(
                    f"{backbone}-f{frames}-{fs_cfg.sampling}", store.uri, held
                )
            if len(found) > 1:
                raise ValueError(
                    f"store {store.uri} holds {len(found)} feature sets for {backbone}, "
                    f"{frames} frames, {fs_cfg.sampling} sampling: {found}; "
                    "pick one with feature_set.key"
                )
            keys[(backbone, frames)] = found[0]
    return keys


def cache_dir_for(cfg: StudyConfig, node_id: str) -> str | None:
    """The node cache for `node_id` (`pipeline.files.on_node`)."""
    return on_node(cfg.cache_dir, node_id)


def compute_split(cfg: StudyConfig, key: str, node_id: str) -> Split:
    """The CV split restricted to the feature set's clips (read through this node's cache)."""
    fs = open_store(cfg.store, cache_dir=cache_dir_for(cfg, node_id)).get(key)
    frames = int(fs.features.shape[1])
    manifest = Manifest(
        clips=tuple(
            sorted(
                (
                    Clip(id=cid, label=LABELS[int(lab)], path=Path(cid), frames=frames)
                    for cid, lab in zip(fs.clip_ids, fs.labels, strict=True)
                ),
                key=lambda c: c.id,
            )
        )
    )
    if cfg.split.kind == "stratified":
        return stratified_split(manifest, cfg.split.k, cfg.split.seed)
    if cfg.split.kind == "grouped":
        metadata = cfg.split.metadata or str(Path(cfg.split.data_dir) / METADATA_CSV)
        if not Path(metadata).is_file():
            raise FileNotFoundError(
                f"grouped split needs {metadata} (split.metadata / split.data_dir / "
                "LUSHPO_DATA_DIR)"
            )
        groups = read_groups(metadata, manifest.ids, cfg.split.group_by)
        return grouped_split(manifest, groups, cfg.split.k, cfg.split.seed)
    cross_val = cfg.split.cross_val or str(Path(cfg.split.data_dir) / "paper" / "cross_val.json")
    if not Path(cross_val).is_file():
        raise FileNotFoundError(
            f"paper split needs {cross_val} (split.cross_val / split.data_dir / LUSHPO_DATA_DIR)"
        )
    return paper_split(manifest, Path(cross_val))


def _search_space(cfg: StudyConfig) -> dict[str, optuna.distributions.BaseDistribution]:
    fs = cfg.feature_set
    if fs.grid:
        raise ValueError("a grid config runs one study per cell: use hpo.grid.run_grid")
    return hspace.study_space(cfg.space, fs.backbone, fs.frames)


# --- the Optuna storage across resumes -------------------------------------------------------

PRUNED_ATTR = "lushpo_pruned"  # user attr of a PRUNED Optuna trial: why it has no test result
RETRY_ATTR = "lushpo_retry_of"  # user attr: number of the failed Optuna trial this one retries
# user attr of a trial Tune stopped before its final result had been processed: why. The study's
# end settles it (`_settle_optuna_trials`): COMPLETE if the final result arrived after all, else
# PRUNED with this reason.
STOP_ATTR = "lushpo_stop_requested"
TUNE_ID_ATTR = "tune_trial_id"  # user attr: the Ray Tune trial id (run dir, progress, export)

# Why a trial ended without its final test result (the value of PRUNED_ATTR).
TIME_BUDGET = "time budget: stopped when budget.time_budget_s ran out"
SCHEDULER = "scheduler: stopped early by ASHA on its validation accuracy"
STOPPED = "stopped before its final test result"
FAILURE = "failure: the trial raised (its error.txt is in the run dir); --resume retries it"
DRIVER_LOST = "driver lost: asked by a driver that died before Ray Tune saved it"


def prune_running_trials(study: optuna.Study, keep: set[int], reason: str) -> list[int]:
    """Mark PRUNED, with `reason`, every RUNNING trial of `study` whose storage id is not in
    `keep`; return their numbers. Nothing will ever tell such trials a result."""
    storage = study._storage
    lost = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial._trial_id in keep:
            continue
        storage.set_trial_user_attr(trial._trial_id, PRUNED_ATTR, reason)
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.PRUNED)
        lost.append(trial.number)
    return lost


class StudySearch(OptunaSearch):
    """OptunaSearch that keeps Optuna's record true to the study.

    - Only a trial's final result, with its test accuracy, makes it COMPLETE. A trial that ends
      without one (time budget, ASHA, an error, a driver that died) is PRUNED, and the
      `lushpo_pruned` user attr says why. Intermediate values are the validation curve only.
    - A stop (time budget, ASHA) is not told to Optuna at once: Tune can still process results
      the trial had already sent — its final one among them — after telling the searcher it
      stopped. The trial stays RUNNING with the stop's reason (`lushpo_stop_requested`) until
      the study ends and `_settle_optuna_trials` reads Tune's own record of it.
    - Every Optuna trial carries its Ray Tune trial id (`tune_trial_id`).
    - Tune pickles the searcher with its experiment state, but the storage is written as trials
      are asked and told, so after a SIGKILL the two disagree. `restore` adopts Optuna trials
      that carry a Tune id the pickle lacks (Tune may run them again) and prunes the other
      RUNNING ones (driver lost): Tune samples a fresh trial in their place.
    - A trial that had failed and that `Tuner.restore(resume_errored=True)` runs again gets a
      new Optuna trial with the same params and `lushpo_retry_of`, because a finished Optuna
      trial cannot change state. Results for a trial whose Optuna record is already finished
      (it completed just before the driver died) are not reported twice.
    """

    def __init__(
        self, *args: Any, time_budget_s: float | None = None, scheduler: bool = False, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self._time_budget_s = time_budget_s
        self._scheduler = scheduler
        self._started = time.monotonic()

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._started = time.monotonic()  # the budget counts from this run's start, as Tune's
        # Tune writes its trials before the searcher (`TuneController.save_to_dir`), so a driver
        # stopped in between restores trials this pickle never saw; Tune runs them again and
        # OptunaSearch would raise KeyError on their results. Their Optuna trials carry the Tune
        # id: adopt them (the newest per id: a retry shares its id), a finished one as told. One
        # that is RUNNING and that Tune never saved either is pruned at the study's end.
        adopted = {}
        for trial in self._ot_study.get_trials(deepcopy=False):
            tune_id = trial.user_attrs.get(TUNE_ID_ATTR)
            if tune_id is not None and tune_id not in self._ot_trials:
                adopted[tune_id] = trial
        for tune_id, trial in adopted.items():
            self._ot_trials[tune_id] = optuna.trial.Trial(self._ot_study, trial._trial_id)
            if trial.state.is_finished():
                self._completed_trials.add(tune_id)
        if adopted:  # the pickled sampler's RNG is as far behind: it would draw their params again
            self._ot_study.sampler.reseed_rng()
        known = {t._trial_id for t in self._ot_trials.values()}
        prune_running_trials(self._ot_study, known, DRIVER_LOST)

    def suggest(self, trial_id: str) -> dict | None:
        suggestion = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            self._ot_study._storage.set_trial_user_attr(ot_trial._trial_id, TUNE_ID_ATTR, trial_id)
        return suggestion

    def _stored(self, trial_id: str) -> optuna.trial.FrozenTrial | None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return None
        return self._ot_study._storage.get_trial(ot_trial._trial_id)

    def _state(self, trial_id: str) -> optuna.trial.TrialState | None:
        stored = self._stored(trial_id)
        return None if stored is None else stored.state

    def _reopen_if_failed(self, trial_id: str) -> None:
        if trial_id not in self._completed_trials:
            return
        old = self._stored(trial_id)
        if old is None or old.user_attrs.get(PRUNED_ATTR) != FAILURE:
            return
        self._ot_study.enqueue_trial(
            old.params, user_attrs={RETRY_ATTR: old.number, TUNE_ID_ATTR: trial_id}
        )
        self._ot_trials[trial_id] = self._ot_study.ask(fixed_distributions=old.distributions)
        self._completed_trials.discard(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._reopen_if_failed(trial_id)
        history = result.get(HISTORY) or []  # the epochs since the last report; never test scores
        if not history or self._state(trial_id) != optuna.trial.TrialState.RUNNING:
            return
        for epoch, val_accuracy in history:
            self._ot_trials[trial_id].report(float(val_accuracy), int(epoch))

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        self._reopen_if_failed(trial_id)
        state = self._state(trial_id)
        if state is not None and state.is_finished():
            self._completed_trials.add(trial_id)  # told before the driver died
            return
        final = bool(result) and result.get("final") is True and result.get(OBJECTIVE) is not None
        stored = self._stored(trial_id)
        if not error and not final and stored is not None:
            storage = self._ot_study._storage
            storage.set_trial_user_attr(stored._trial_id, STOP_ATTR, self._why_stopped())
            self._completed_trials.add(trial_id)  # settled at the study's end
            return
        if error:
            if stored is not None:
                self._ot_study._storage.set_trial_user_attr(stored._trial_id, PRUNED_ATTR, FAILURE)
            result, error = None, False  # no value, not an error: OptunaSearch tells PRUNED
        super().on_trial_complete(trial_id, result, error)

    def _why_stopped(self) -> str:
        # getattr: a searcher pickled by an older lushpo lacks these
        budget = getattr(self, "_time_budget_s", None)
        elapsed = time.monotonic() - getattr(self, "_started", time.monotonic())
        if budget is not None and elapsed >= 0.95 * budget:
            return TIME_BUDGET
        return SCHEDULER if getattr(self, "_scheduler", False) else STOPPED


class StudyLimiter(ConcurrencyLimiter):
    """ConcurrencyLimiter that keeps telling the searcher about trials a resume runs again.

    The plain limiter drops results of trials it no longer counts as live, and a trial that had
    errored left that set when it failed: when `Tuner.restore(resume_errored=True)` runs it
    again, its completion would never reach Optuna. Such a trial rejoins the live set on its
    first result (the searcher still knows its id)."""

    def _rerun(self, trial_id: str) -> bool:
        """A trial the searcher knows but the limiter dropped from its live set (it errored)."""
        known = trial_id in getattr(self.searcher, "_ot_trials", {})
        return self._limit_concurrency and known and trial_id not in self.live_trials

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self._rerun(trial_id):
            self.live_trials.add(trial_id)
            self.num_unfinished_live_trials += 1
        super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if self._rerun(trial_id):
            self.searcher.on_trial_complete(trial_id, result=result, error=error)
            return
        super().on_trial_complete(trial_id, result=result, error=error)


class StudyGenerator(SearchGenerator):
    """Ray Tune's SearchGenerator, restored to agree with the trials Tune restores.

    Tune writes its trials (the experiment state) before this generator's state and its
    searchers' (`TuneController.save_to_dir`). A driver killed in between restores a search state
    one save behind: a trial counter short of the trials Tune has, so the study would run past
    its budget, and a concurrency limiter that still counts trials since ended as live, so with
    `max_concurrent` of them it never suggests again and the study hangs. Both are set from the
    experiment state Tune restored: the counter to at least its trials, the live set to its
    unfinished ones (a failed trial Tune runs again rejoins it through `StudyLimiter`)."""

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        newest = _find_newest_experiment_checkpoint(dirpath)
        if newest is None:
            return
        state = _loads_with_cloudpickle(Path(newest).read_bytes())
        trials = [
            Trial.from_json_state(json_state, stub=True) for json_state, _ in state["trial_data"]
        ]
        self._counter = max(self._counter, len(trials))
        if isinstance(self.searcher, ConcurrencyLimiter) and not self.searcher.batch:
            unfinished = (Trial.PENDING, Trial.RUNNING, Trial.PAUSED)
            live = {t.trial_id for t in trials if t.status in unfinished}
            self.searcher.live_trials = live
            self.searcher.num_unfinished_live_trials = len(live)


def _searcher(cfg: StudyConfig, storage: optuna.storages.BaseStorage) -> StudyGenerator:
    if quieted():  # Optuna's "A new study created in RDB …" and the like
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = _search_space(cfg)
    points = [hspace.paper_best(space)] if cfg.searcher.start_from_paper_best else None
    search = StudySearch(
        time_budget_s=cfg.budget.time_budget_s,
        scheduler=cfg.scheduler.name != "none",
        space=space,
        metric=OBJECTIVE,
        mode=MODE,
        points_to_evaluate=points,
        sampler=make_sampler(cfg.searcher.sampler, cfg.searcher.seed),
        study_name=cfg.name,
        storage=storage,
    )
    return StudyGenerator(StudyLimiter(search, max_concurrent=cfg.budget.max_concurrent))


def _scheduler(cfg: StudyConfig) -> ASHAScheduler | None:
    if cfg.scheduler.name == "none":
        return None
    # Every result of train_cv carries `val_accuracy` (the folds' mean validation accuracy; the
    # final result repeats the last epoch's) and training_iteration counts epochs, so ASHA
    # compares trials epoch by epoch on validation only, never on a test score.
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=VALIDATION,
        mode=MODE,
        max_t=cfg.budget.max_epochs + 1,  # + the final CV result
        grace_period=cfg.scheduler.grace_period,
        reduction_factor=cfg.scheduler.reduction_factor,
    )


def trial_settings(
    cfg: StudyConfig, keys: Mapping[tuple[str, int], str], split: Split
) -> TrialSettings:
    """What every trial of this study shares: where its features are, the split, the budget."""
    return TrialSettings(
        store_uri=cfg.store,
        cache_dir=cfg.cache_dir,
        feature_sets=(
            next(iter(keys.values()))
            if len(keys) == 1
            else {f"{b}/{n}": k for (b, n), k in keys.items()}
        ),
        split=split,
        max_epochs=cfg.budget.max_epochs,
        patience=cfg.budget.patience,
        validation_fraction=cfg.training.validation_fraction,
        seed=cfg.training.seed,
        gpu_memory_limit_mb=cfg.resources.gpu_memory_limit_mb,
        intra_op_threads=cfg.resources.intra_op_threads,
        deterministic=None if cfg.training.deterministic == "auto" else cfg.training.deterministic,
        mixed_precision=cfg.training.mixed_precision,
        checkpoint_every=cfg.budget.checkpoint_every,
        checkpoint_interval_s=cfg.budget.checkpoint_interval_s,
        # ASHA decides between epochs; otherwise a report every few seconds is enough for the
        # progress view and the time budget, and spares a driver round trip per epoch.
        report_every_s=0.0 if cfg.scheduler.name == "asha" else cfg.budget.report_interval_s,
    )


SETTINGS_FILE = "lushpo-settings.json"
"""What shaped a study's trials, written when it starts; ``--resume`` refuses to continue with
different values (a changed validation fraction would change the inner split mid-trial)."""

_SETTING_KEYS = {
    "feature_sets": "feature_set",
    "split": "split",
    "split_digest": "split (its folds or groups)",
    "space": "space",
    "max_epochs": "budget.max_epochs",
    "patience": "budget.patience",
    "validation_fraction": "training.validation_fraction",
    "seed": "training.seed",
}


def study_settings(settings: TrialSettings, space: Mapping[str, Any]) -> dict[str, Any]:
    """The training settings a resumed study must share with the one it continues."""
    return {
        "feature_sets": settings.feature_sets,
        "split": settings.split.name,
        "split_digest": settings.split.digest(),
        "space": {k: repr(v) for k, v in sorted(space.items())},
        "max_epochs": settings.max_epochs,
        "patience": settings.patience,
        "validation_fraction": settings.validation_fraction,
        "seed": settings.seed,
    }


def _check_settings(cfg: StudyConfig, now: dict[str, Any], log: Callable[[str], None]) -> None:
    """Refuse a resume whose training settings differ from the study's own, naming each."""
    was = read_run_file(cfg.run_path, SETTINGS_FILE, cfg.storage.endpoint_url)
    if was is None:
        log(f"{cfg.run_path} predates {SETTINGS_FILE}: resuming without comparing settings")
        return
    changed = [
        f"{_SETTING_KEYS.get(k, k)} was {was.get(k)!r}, now {now.get(k)!r}"
        for k in sorted(set(was) | set(now))
        if was.get(k) != now.get(k) and k != "split_digest"
    ]
    if not changed and was.get("split_digest") != now.get("split_digest"):
        changed.append(
            f"{_SETTING_KEYS['split_digest']} changed (digest {was.get('split_digest')} → "
            f"{now.get('split_digest')})"
        )
    if changed:
        raise StudySettingsChangedError(
            f"--resume refused: {'; '.join(changed)}. Restore those settings to continue the "
            "study, or pass --overwrite to start it again"
        )


def on_this_node(settings: TrialSettings) -> TrialSettings:
    """`settings` with this node's cache dir: "{node_id}" in `cache_dir` becomes the id of the
    node the Ray task or trial runs on, so nodes that share a disk (or a test's loopback
    cluster) keep separate caches."""
    node_id = ray.get_runtime_context().get_node_id()
    return dataclasses.replace(settings, cache_dir=on_node(settings.cache_dir, node_id))


def train_on_node(config: dict[str, Any], settings: TrialSettings) -> None:
    """`train_cv` with this node's cache dir (`on_this_node`). TensorFlow is imported here, in
    the trial's process, never by the study's driver."""
    from hpo.trainable import train_cv

    train_cv(config, on_this_node(settings))


def _trainable(cfg: StudyConfig, settings: TrialSettings) -> Any:
    resources = {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu}
    return tune.with_resources(tune.with_parameters(train_on_node, settings=settings), resources)


class CheckpointRepair(tune.Callback):
    """Points a resumed trial at a checkpoint that exists before Ray restores it.

    With ``num_to_keep=1`` Ray deletes a trial's previous checkpoint as soon as it registers
    the next one, and uploads the experiment state afterwards (asynchronously on S3): a driver
    killed in between leaves a state that names a deleted checkpoint, and every restore of that
    trial fails ("does not exist on storage anymore"). `on_trial_start` runs before Ray's
    restore, so the trial is moved to its newest complete checkpoint (one holding lockstep.json
    or trial.json), or, without one, started afresh."""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        latest = trial.latest_checkpoint_result
        if latest is None:
            return
        fs, path = latest.checkpoint.filesystem, latest.checkpoint.path
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            return
        trial_dir = path.rsplit("/", 1)[0]
        infos = fs.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True))
        for candidate in sorted((i.path for i in infos if "/checkpoint_" in i.path), reverse=True):
            names = {f"{candidate}/{STATE_FILE}", f"{candidate}/{TRIAL_FILE}"}
            if any(fs.get_file_info(n).type == pafs.FileType.File for n in names):
                latest.checkpoint = tune.Checkpoint(path=candidate, filesystem=fs)
                return
        trial.run_metadata.checkpoint_manager._latest_checkpoint_result = None


def _tune_callbacks(callbacks: Sequence[tune.Callback]) -> list[tune.Callback]:
    """Ours, and Tune's result.json and progress.csv loggers but not its TensorBoard one (the
    curves are in Optuna): fit runs with TUNE_DISABLE_AUTO_CALLBACK_LOGGERS, which saves the
    driver ~0.5 s of importing tensorboardX and an event write per result."""
    return [CheckpointRepair(), CSVLoggerCallback(), JsonLoggerCallback(), *callbacks]


def _run_config(cfg: StudyConfig, callbacks: Sequence[tune.Callback]) -> tune.RunConfig:
    fs, path = storage_filesystem(cfg)
    return tune.RunConfig(
        name=cfg.name,
        storage_path=path,
        storage_filesystem=fs,
        failure_config=tune.FailureConfig(max_failures=cfg.budget.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        callbacks=_tune_callbacks(callbacks),
        verbose=0,
    )


# --- results -----------------------------------------------------------------------------------


def _read_trial_json(result: Any) -> dict[str, Any]:
    checkpoint = result.checkpoint
    if checkpoint is None:
        return {}
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/trial.json") as f:
            return json.loads(f.read())
    except (FileNotFoundError, OSError, ValueError):
        return {}


def _records(grid: Any) -> tuple[TrialRecord, ...]:
    records = []
    for result in grid:
        metrics = dict(result.metrics or {})
        trial = _read_trial_json(result)
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
                params=dict(result.config or {}),
                metrics=metrics,
                folds=list(trial.get("folds", [])),
                error=None if result.error is None else str(result.error),
                path=str(result.path),
            )
        )
    return tuple(sorted(records, key=lambda r: r.trial_id))


def _check_not_all_failed(cfg: StudyConfig, records: Sequence[TrialRecord]) -> None:
    if records and all(r.error for r in records):
        first = records[0].error.strip().splitlines()
        raise AllTrialsFailedError(
            f"all {len(records)} trials of study {cfg.name!r} failed; first error: "
            f"{first[-1] if first else records[0].error} (trial {records[0].trial_id}; full "
            f"tracebacks under {cfg.run_path})"
        )


# --- the study -----------------------------------------------------------------------------------


def start_ray(cfg: StudyConfig) -> bool:
    """Join cfg.address (token auth as `pipeline.cluster.connect` applies it), or start a local
    instance; True when this call started Ray."""
    return connect(cfg.address, num_cpus=cfg.num_cpus)


def run_study(
    cfg: StudyConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[tune.Callback] = (),
    log: Callable[[str], None] = print,
    split: Split | None = None,
) -> StudyResult:
    """Run (or resume) the study `cfg` and return every trial's result.

    `split` replaces the split computed from ``cfg.split`` (nested CV passes each outer fold's
    inner split, so the search never sees the outer test clips).

    Raises:
        FeatureSetNotFoundError: a feature set is missing from the store (before Ray starts).
        StudyExistsError: the name is taken at the storage path and neither resume nor overwrite.
        AllTrialsFailedError: every trial failed.
        StudyInterruptedError: the first Ctrl-C stopped the study after saving its state.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    keys = resolve_feature_sets(cfg)
    fs, storage_path = storage_filesystem(cfg)
    run_path = f"{storage_path}/{cfg.name}"
    restorable = tune.Tuner.can_restore(run_path, storage_filesystem=fs)
    exists = restorable or _run_exists(fs, run_path)
    exists = exists or _optuna_has_study(cfg.storage.optuna_storage, cfg.name)
    if exists and not (resume or overwrite):
        raise StudyExistsError(
            f"study {cfg.name!r} already exists at {cfg.run_path} (Optuna storage "
            f"{cfg.storage.optuna_storage}); pass --resume to continue it or --overwrite to "
            "delete it and start again"
        )
    if overwrite and exists:
        log(f"overwriting study {cfg.name!r} at {cfg.run_path}")
        _delete_run(fs, run_path, cfg)
        restorable = False
    if resume and not restorable:
        log(f"nothing to resume at {cfg.run_path}; starting study {cfg.name!r}")

    # A new study's Optuna storage (SQLAlchemy, the schema and its version check: about a
    # second) opens in a thread while Ray starts; a restore unpickles the searcher's own.
    with ThreadPoolExecutor(1, thread_name_prefix="optuna-storage") as pool:
        if not restorable:
            storage = pool.submit(_optuna_storage, cfg.storage.optuna_storage)
        started = start_ray(cfg)
    try:
        node_id = ray.get_runtime_context().get_node_id()
        if split is None:
            split = compute_split(cfg, next(iter(keys.values())), node_id)
        for warning in getattr(split, "warnings", ()):
            log(f"split: {warning}")
        settings = trial_settings(cfg, keys, split)
        shaping = study_settings(settings, _search_space(cfg))
        if restorable:
            _check_settings(cfg, shaping, log)
        else:
            write_run_file(cfg.run_path, SETTINGS_FILE, shaping, cfg.storage.endpoint_url)
        trainable = _trainable(cfg, settings)
        if restorable:
            tuner = tune.Tuner.restore(
                run_path,
                trainable=trainable,
                resume_errored=True,
                storage_filesystem=fs,
            )
            if _finished(cfg, fs, run_path):
                grid = tuner.get_results()
                log(f"study {cfg.name!r} has already finished; nothing to resume")
                return StudyResult(
                    cfg.name, cfg.run_path, cfg.storage.optuna_storage, _records(grid), True
                )
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=_searcher(cfg, storage.result()),
                    scheduler=_scheduler(cfg),
                    num_samples=cfg.budget.trials,
                    time_budget_s=cfg.budget.time_budget_s,
                    # One worker process per trial slot: TensorFlow is imported once per
                    # slot, not once per trial (seconds each on a small machine).
                    reuse_actors=True,
                ),
                run_config=_run_config(cfg, callbacks),
            )
        if restorable:
            # Tuner.restore unpickles the old RunConfig; use this run's callbacks (a fresh
            # progress view), never the unpickled ones of the run that died.
            tuner._local_tuner._run_config.callbacks = _tune_callbacks(callbacks)
        start = time.monotonic()
        with _graceful_sigint(log) as interrupted, _environ(TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1"):
            grid = tuner.fit()
        elapsed = time.monotonic() - start
        log(f"study {cfg.name!r} ran for {elapsed:.1f} s")
    finally:
        if started:
            ray.shutdown()
    if interrupted():
        raise StudyInterruptedError(cfg.name, cfg.run_path)
    records = _records(grid)
    _settle_optuna_trials(cfg, elapsed, records, log)
    _check_not_all_failed(cfg, records)
    return StudyResult(cfg.name, cfg.run_path, cfg.storage.optuna_storage, records)


def _settle_optuna_trials(
    cfg: StudyConfig,
    elapsed_s: float,
    records: Sequence[TrialRecord],
    log: Callable[[str], None],
) -> None:
    """Once every Tune trial has ended, no Optuna trial may stay RUNNING, and each agrees with
    Tune's record. A trial whose stop was requested (`STOP_ATTR`) is COMPLETE with its test score
    when its final result reached Tune after all, else PRUNED for that reason. Those left were
    running when the time budget ended the study (Tune stops them without telling the searcher),
    or, without a budget, stopped with the study."""
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage.optuna_storage)
    by_tune_id = {r.trial_id: r for r in records}
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        record = by_tune_id.get(trial.user_attrs.get(TUNE_ID_ATTR))
        if record is not None and record.value is not None:
            study.tell(trial.number, record.value)
        elif STOP_ATTR in trial.user_attrs or record is None:  # None: Tune never saved it
            why = trial.user_attrs.get(STOP_ATTR, DRIVER_LOST)
            storage.set_trial_user_attr(trial._trial_id, PRUNED_ATTR, why)
            storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.PRUNED)
    budget = cfg.budget.time_budget_s
    reason = TIME_BUDGET if budget is not None and elapsed_s >= 0.95 * budget else STOPPED
    pruned = prune_running_trials(study, set(), reason)
    if pruned:
        log(f"Optuna trials {pruned} of study {cfg.name!r}: PRUNED ({reason})")


@contextlib.contextmanager
def _graceful_sigint(log: Callable[[str], None]):
    """The first Ctrl-C asks Ray Tune to stop and save its state; the second raises
    KeyboardInterrupt at once. Yields a callable: did a first Ctrl-C arrive?

    Ray Tune's own SIGINT handler would stop the run as well but leaves no trace the caller can
    read, so it is switched off (TUNE_DISABLE_SIGINT_HANDLER) and this handler forwards the
    first SIGINT as SIGUSR1, which Tune always handles by the same graceful stop. A SIGUSR1 that
    arrives before Tune installs its handler raises KeyboardInterrupt (nothing ran yet)."""
    hit = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield hit.is_set
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if hit.is_set():
            raise KeyboardInterrupt
        hit.set()
        log("interrupted: stopping trials, saving the study state (Ctrl-C again: quit now)")
        os.kill(os.getpid(), signal.SIGUSR1)

    def before_tune(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)
    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGUSR1, before_tune)
    try:
        with _environ(TUNE_DISABLE_SIGINT_HANDLER="1"):
            yield hit.is_set
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGUSR1, previous[1])


@contextlib.contextmanager
def _environ(**values: str):
    """Environment variables Ray Tune reads inside `Tuner.fit`, set for its duration only."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _finished(cfg: StudyConfig, fs: pafs.FileSystem | None, path: str) -> bool:
    """True when the run's saved state holds the whole budget of trials, all completed.
    Errored trials do not count: a resume (``resume_errored=True``) retries them, e.g. once an
    unreachable store is back."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(path, storage_filesystem=fs)
    statuses = [t.status for t in analysis.trials]
    done = [s for s in statuses if s == "TERMINATED"]
    return len(done) == len(statuses) and len(done) >= cfg.budget.trials
