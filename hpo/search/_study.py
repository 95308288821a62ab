"""A study: Ray Tune's Tuner driving OptunaSearch (+ optional ASHA) over `hpo.train.train_cv`.

The driver does the cheap, fail-fast work itself — resolve the feature set key(s) in the store,
compute the split on the feature set's clip ids, check the run name — then hands Ray three
separate objects built from the config: the search (OptunaSearch behind a ConcurrencyLimiter,
persisted to an Optuna RDB storage so ``optuna-dashboard`` shows it), the run policy (scheduler,
budget, storage, failure retries) and the per-trial resources. Trials read features from the
store through their node's cache; nothing large travels from the driver.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import optuna
import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler

from hpo.search import _searcher as _searcher_module
from hpo.search._config import StudyConfig
from hpo.search._optuna_storage import has_study, open_storage, remember
from hpo.search._prepare import (
    compute_split,
    on_this_node,
    resolve_feature_sets,
    start_ray,
    storage_filesystem,
    trial_settings,
)
from hpo.search._run_files import (
    CONTINUED,
    SETTINGS_FILE,
    experiment_paths,
    read_run_file,
    write_run_file,
)
from hpo.search._run_folder import (
    _delete_run,
    _DropOnStart,
    _foreign_run,
    _reachable,
    _run_exists,
    _SetAside,
)
from hpo.search._run_lock import RunLockedError, locked
from hpo.search._searcher import (
    SAMPLERS,
    SearchSettingsChangedError,
    StudySearcher,
    TuneTrialEnd,
    make_sampler,
    needs_new_experiment,
    prepare_study,
    reconcile,
)
from hpo.search._selection import Objective
from hpo.search._trials import StudyResult, TrialRecord, by_study, trial_records
from hpo.train import STUDY_KEY, TrialSettings, paper_best, study_space
from pipeline.files import few
from pipeline.manifest import (
    Split,
)

__all__ = [
    "SAMPLERS",
    "AllTrialsFailedError",
    "RunLockedError",
    "SearchSettingsChangedError",
    "StudyExistsError",
    "StudyInterruptedError",
    "StudySettingsChangedError",
    "make_sampler",
    "run_studies",
    "run_study",
    "train_in_study",
    "train_on_node",
]

# The study's objective, what Optuna records (`hpo.search.Objective`, ``objective.on``): the
# mean k-fold CV accuracy on the test folds or on each fold's inner-validation split, in a
# trial's final result only (every earlier result carries it as None, since Ray Tune wants the
# searcher's metric in every result). ASHA and Optuna's intermediate values use the validation
# curve, whatever the objective.
VALIDATION = "val_accuracy"  # per epoch: the folds' mean inner-validation accuracy
MODE = "max"


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


def _search_space(cfg: StudyConfig) -> dict[str, optuna.distributions.BaseDistribution]:
    fs = cfg.feature_set
    if fs.grid:
        raise ValueError("a grid config runs one study per cell: use hpo.search.run_grid")
    return study_space(cfg.space, fs.backbone, fs.frames)


# --- the search -----------------------------------------------------------------------------


def _searcher(
    cfg: StudyConfig,
    studies: Sequence[StudyConfig],
    max_concurrent: int | None,
    experiment: str = "",
) -> StudySearcher:
    return StudySearcher(
        cfg.optuna_url,
        {study.name: _search_space(study) for study in studies},
        cfg.searcher.sampler,
        cfg.searcher.seed,
        scheduler=cfg.scheduler.name != "none",
        max_concurrent=max_concurrent,
        metric=cfg.objective.objective().metric,
        mode=MODE,
        experiment=experiment,
    )


def _prepare_study(
    cfg: StudyConfig, storage: optuna.storages.BaseStorage, log: Callable[[str], None]
) -> None:
    """The study's Optuna record made, or checked and brought to this run's budget."""
    space = _search_space(cfg)
    prepare_study(
        storage,
        cfg.name,
        budget=cfg.budget.trials,
        max_concurrent=cfg.budget.max_concurrent,
        sampler=cfg.searcher.sampler,
        seed=cfg.searcher.seed,
        n_startup_trials=cfg.searcher.n_startup_trials,
        independent_sampler=cfg.searcher.independent_sampler,
        objective=cfg.objective.objective(),
        points=[paper_best(space)] if cfg.searcher.start_from_paper_best else None,
        log=log,
    )


def _prepare_studies(
    cfg: StudyConfig, studies: Sequence[StudyConfig], log: Callable[[str], None]
) -> optuna.storages.RDBStorage:
    """The experiment's Optuna storage, opened once, with every study's record prepared."""
    storage = open_storage(cfg.optuna_url)
    for study in studies:
        _prepare_study(study, storage, log)
    return storage


def _scheduler(cfg: StudyConfig) -> ASHAScheduler | None:
    if cfg.scheduler.name == "none":
        return None
    # Every result of train_cv carries `val_accuracy` (the folds' mean validation accuracy; the
    # final result repeats the last epoch's) and its `epoch`, so ASHA compares trials on
    # validation only, never on a test score, at epochs: not at Tune reports, which a trial
    # sends every budget.report_interval_s (several epochs each, when epochs are short).
    return ASHAScheduler(
        time_attr="epoch",
        metric=VALIDATION,
        mode=MODE,
        # ASHA stops a trial whose epoch reaches max_t: one past the last epoch, so that the
        # final result (its epoch is the last one) comes after it
        max_t=cfg.budget.max_epochs + 1,
        grace_period=cfg.scheduler.grace_period,
        reduction_factor=cfg.scheduler.reduction_factor,
    )


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


def study_settings(
    settings: TrialSettings, space: Mapping[str, Any], objective: Objective
) -> dict[str, Any]:
    """The training settings a resumed study must share with the one it continues, and the
    objective its trials are ranked by (export reads it: `hpo.search.Objective`)."""
    return {
        "objective": objective.to_dict(),
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
    was = {"objective": Objective().to_dict(), **was}  # a study made before objective.on
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


def train_on_node(config: dict[str, Any], settings: TrialSettings) -> None:
    """`train_cv` with this node's cache dir (`on_this_node`). TensorFlow is imported here, in
    the trial's process, never by the study's driver."""
    from hpo.train import train_cv

    train_cv(config, on_this_node(settings))


Train = Callable[[dict[str, Any], TrialSettings], None]
"""A trial: its config and the study's settings in, results reported through `ray.tune`."""


def train_in_study(
    config: dict[str, Any], studies: Mapping[str, TrialSettings], train: Train
) -> None:
    """`train` with the settings of the study the config names (`STUDY_KEY`): the trial of an
    experiment that searches several studies."""
    params = {k: v for k, v in config.items() if k != STUDY_KEY}
    train(params, studies[config[STUDY_KEY]])


def _trainable(cfg: StudyConfig, settings: Mapping[str, TrialSettings], train: Train) -> Any:
    resources = {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu}
    if len(settings) == 1:
        (only,) = settings.values()
        trainable = tune.with_parameters(train, settings=only)
    else:
        trainable = tune.with_parameters(train_in_study, studies=dict(settings), train=train)
    return tune.with_resources(trainable, resources)


_CALLBACKS: dict[str, Sequence[tune.Callback]] = {}  # run path -> this driver's callbacks


class _DriverCallbacks(tune.Callback):
    """Tune's hooks, passed on to the callbacks this driver registered for the run.

    `Tuner.restore` brings back the RunConfig pickled when the study started, callbacks
    included, and offers no public way to give it new ones. So what Tune pickles is this
    forwarder, which holds the run's path only; the progress view of the driver that runs now
    (not the unpickled one of a driver that died) gets the events, and nothing of the callbacks
    (a storage URL, open files) is written into the run's storage."""

    def __init__(self, run_path: str) -> None:
        self.run_path = run_path


def _forward(hook: str) -> Callable[..., None]:
    def forward(self: _DriverCallbacks, *args: Any, **kwargs: Any) -> None:
        for callback in _CALLBACKS.get(self.run_path, ()):
            getattr(callback, hook)(*args, **kwargs)

    forward.__name__ = hook
    return forward


for _hook in [name for name in vars(tune.Callback) if name == "setup" or name.startswith("on_")]:
    setattr(_DriverCallbacks, _hook, _forward(_hook))


def _new_tuner(
    cfg: StudyConfig,
    studies: Sequence[StudyConfig],
    trainable: Any,
    max_concurrent: int | None,
    run_path: str,
    experiment_path: str,
) -> tune.Tuner:
    """A Tuner for the run's Tune experiment at `experiment_path` (its own or a continuation)."""
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=_searcher(
                cfg, studies, max_concurrent, _experiment_name(run_path, experiment_path)
            ),
            scheduler=_scheduler(cfg),
            # The searcher ends the study: it counts the budget in Optuna's storage, which a
            # resume may raise.
            num_samples=-1,
            time_budget_s=cfg.budget.time_budget_s,
            # One worker process per trial slot: TensorFlow is imported once per slot, not once
            # per trial (seconds each on a small machine).
            reuse_actors=True,
        ),
        run_config=_run_config(cfg, experiment_path),
    )


def _run_config(cfg: StudyConfig, experiment_path: str) -> tune.RunConfig:
    """The RunConfig of the Tune experiment at `experiment_path`: the run folder, or one of its
    continuations (`hpo.search.experiment_paths`)."""
    fs, _path = storage_filesystem(cfg)
    parent, name = experiment_path.rsplit("/", 1)
    return tune.RunConfig(
        name=name,
        storage_path=parent,
        storage_filesystem=fs,
        failure_config=tune.FailureConfig(max_failures=cfg.budget.max_failures),
        # Two: Tune deletes the older checkpoint once it registers a newer one and saves the
        # experiment state after that, so the state a killed driver left may name the
        # second newest; it still exists. On S3 the saved state can lag further: a resume
        # runs such a trial again (`_checkpoint_exists`).
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        # Tune's result.json and progress.csv loggers but not its TensorBoard one (the curves
        # are in Optuna): fit runs with TUNE_DISABLE_AUTO_CALLBACK_LOGGERS, which saves the
        # driver ~0.5 s of importing tensorboardX and an event write per result.
        callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), _DriverCallbacks(experiment_path)],
        verbose=0,
    )


# --- results -----------------------------------------------------------------------------------


def _check_not_all_failed(cfg: StudyConfig, records: Sequence[TrialRecord]) -> None:
    if records and all(r.error for r in records):
        first = (records[0].error or "").strip().splitlines()
        raise AllTrialsFailedError(
            f"all {len(records)} trials of study {cfg.name!r} failed; first error: "
            f"{first[-1] if first else records[0].error} (trial {records[0].trial_id}; full "
            f"tracebacks under {cfg.run_path})"
        )


# --- the study -----------------------------------------------------------------------------------


def run_study(
    cfg: StudyConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[tune.Callback] = (),
    log: Callable[[str], None] = print,
    split: Split | None = None,
    train: Train = train_on_node,
) -> StudyResult:
    """Run (or resume) the study `cfg` and return every trial's result.

    `split` replaces the split computed from ``cfg.split`` (nested CV passes each outer fold's
    inner split, so the search never sees the outer test clips). `train` is the trial
    (`train_on_node`: CNN-LSTM k-fold CV; benchmarks and kill tests pass a trivial one).

    Raises:
        FeatureSetNotFoundError: a feature set is missing from the store (before Ray starts).
        StudyExistsError: the name is taken at the storage path and neither resume nor overwrite.
        StudySettingsChangedError, SearchSettingsChangedError: --resume with other settings.
        AllTrialsFailedError: every trial failed.
        StudyInterruptedError: the first Ctrl-C stopped the study after saving its state.
    """
    results = run_studies(
        cfg, [cfg], resume=resume, overwrite=overwrite, callbacks=callbacks, log=log,
        splits=None if split is None else {cfg.name: split}, train=train,
    )  # fmt: skip
    return results[cfg.name]


def run_studies(
    experiment: StudyConfig,
    studies: Sequence[StudyConfig],
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[tune.Callback] = (),
    log: Callable[[str], None] = print,
    splits: Mapping[str, Split] | None = None,
    train: Train = train_on_node,
    max_concurrent: int | None = None,
) -> dict[str, StudyResult]:
    """Run (or resume) several Optuna studies as one Ray Tune experiment; {name: result}.

    `experiment` names the Tune experiment and gives what its studies share: its run path,
    Ray address, scheduler, time budget, failure retries, resources, sampler and seed, and the
    Optuna storage. Each of `studies` (a grid's cells, nested CV's outer folds) keeps its own
    feature sets, split, space, budget and ``max_concurrent``, its own Optuna study (its name)
    and its run files under its own run path; free trial slots take trials from any unfinished
    study (`hpo.search.StudySearcher`), at most `max_concurrent` live in all (None: what the
    cluster's resources fit). A single study is `experiment` itself (`run_study`).

    Raises: as `run_study`; RunLockedError: another live driver runs the experiment.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    # The feature sets first: a study that cannot start is refused before it touches anything.
    keys = {study.name: resolve_feature_sets(study) for study in studies}
    with locked(experiment.run_path, "tune", endpoint_url=experiment.storage.endpoint_url, log=log):
        return _run_studies(
            experiment, studies, keys, resume=resume, overwrite=overwrite, callbacks=callbacks,
            log=log, splits=splits, train=train, max_concurrent=max_concurrent,
        )  # fmt: skip


def _run_studies(
    experiment: StudyConfig,
    studies: Sequence[StudyConfig],
    keys: Mapping[str, dict[tuple[str, int], str]],
    *,
    resume: bool,
    overwrite: bool,
    callbacks: Sequence[tune.Callback],
    log: Callable[[str], None],
    splits: Mapping[str, Split] | None,
    train: Train,
    max_concurrent: int | None,
) -> dict[str, StudyResult]:
    cfg = experiment
    names = [study.name for study in studies]
    objective = cfg.objective.objective()  # the experiment's studies share it
    shown_storage = remember(cfg.optuna_url)
    fs, storage_path = storage_filesystem(cfg)
    run_path = f"{storage_path}/{cfg.name}"
    _reachable(fs, run_path, cfg)
    # The run's Tune experiments: its own and the continuations of a raised budget. The newest
    # is the one a resume restores; Optuna's trials are matched against all of their records.
    *earlier, current = experiment_paths(fs, run_path)
    restorable = tune.Tuner.can_restore(current, storage_filesystem=fs)
    current_run = _saved_run(fs, current) if restorable else None
    saved = None if current_run is None else _saved_trials(current_run)
    # read once: the earlier experiments have ended, and their records are reported at the end
    earlier_runs = [run for run in (_saved_run(fs, path) for path in earlier) if run is not None]
    saved_all = {k: v for run in earlier_runs for k, v in _saved_trials(run).items()}
    earlier_results = [tune.ResultGrid(run) for run in earlier_runs]
    exists = restorable or _run_exists(fs, run_path)
    exists = exists or any(has_study(cfg.optuna_url, name) for name in names)
    if exists and not (resume or overwrite):
        raise StudyExistsError(
            f"study {cfg.name!r} already exists at {cfg.run_path} (Optuna storage "
            f"{shown_storage}); pass --resume to continue it or --overwrite to "
            "delete it and start again"
        )
    if resume and not restorable and not earlier and len(studies) > 1:
        _refuse_cell_by_cell(fs, run_path, cfg, studies)
    replacing = overwrite and exists  # only once everything below has been checked
    if replacing:
        foreign = _foreign_run(fs, run_path)
        if foreign:
            raise StudyExistsError(
                f"{cfg.run_path} holds {few(foreign)}, not a lushpo study; --overwrite deletes "
                "only a study's run folder: choose another --name or --storage-path"
            )
        restorable, saved, saved_all, earlier, current = False, None, {}, [], run_path
        earlier_results = []
    saved_all.update(saved or {})
    # A tuner.pkl without an experiment state: the driver died before Tune's first save. Nothing
    # of Tune's to restore; the study starts in place and keeps the Optuna trials it asked.
    restorable = restorable and saved is not None
    if resume and not restorable:
        log(f"nothing to resume at {cfg.run_path}; starting study {cfg.name!r}")

    # Nothing of the user's was here: a start that fails before the experiment runs (Ray
    # unreachable, a refused split) leaves nothing to block the name. A study --overwrite
    # replaces is set aside instead, and put back on such a failure (`_SetAside`).
    fresh, fitting, aside = not exists, False, None
    try:
        # The Optuna records (SQLAlchemy, the schema and its version check: about a second) are
        # made or checked in a thread while Ray starts; a study being replaced only opens its
        # storage (it must answer) and is prepared after the old one is deleted.
        with ThreadPoolExecutor(1, thread_name_prefix="optuna-storage") as pool:
            if replacing:
                prepared = pool.submit(open_storage, cfg.optuna_url)
            else:
                prepared = pool.submit(_prepare_studies, cfg, studies, log)
            started = start_ray(cfg)
        try:
            storage = prepared.result()
            node_id = ray.get_runtime_context().get_node_id()
            settings, shapings = {}, {}
            for study in studies:
                split = (splits or {}).get(study.name)
                if split is None:
                    split = compute_split(study, next(iter(keys[study.name].values())), node_id)
                for warning in getattr(split, "warnings", ()):
                    log(f"split: {warning}")
                settings[study.name] = trial_settings(study, keys[study.name], split)
                shapings[study.name] = study_settings(
                    settings[study.name], _search_space(study), objective
                )
            if replacing:  # the config, feature sets, splits, cluster and storage all answered
                log(f"overwriting study {cfg.name!r} at {cfg.run_path}")
                aside = _SetAside(fs, run_path, cfg.optuna_url, names)
                storage = _prepare_studies(cfg, studies, log)
            for study in studies:
                if restorable or earlier:
                    _check_settings(study, shapings[study.name], log)
                else:
                    write_run_file(
                        study.run_path, SETTINGS_FILE, shapings[study.name],
                        study.storage.endpoint_url,
                    )  # fmt: skip
            trainable = _trainable(cfg, settings, train)
            for study in studies:
                _reconcile(study, storage, saved_all, experiment_ended=False, log=log)
            if restorable and _finished(studies, saved_all):
                for study in studies:
                    _reconcile(study, storage, saved_all, experiment_ended=True, log=log)
                with _modules_before_the_layers():
                    tuner = tune.Tuner.restore(current, trainable=trainable, storage_filesystem=fs)
                log(f"study {cfg.name!r} has already finished; nothing to resume")
                every = _records_of(earlier_results, objective) + trial_records(
                    tuner.get_results(), objective
                )
                records = by_study(names, every)
                return {
                    study.name: StudyResult(
                        study.name, study.run_path, shown_storage, records[study.name], True
                    )
                    for study in studies
                }
            # Tune restores an ended search still ended (ray#20886): it adds no trial to that
            # experiment. The experiment is restored for the trials it runs on (those a killed
            # driver left unfinished, errored ones to retry); the trials it cannot add (a raised
            # budget, one asked as the driver died) then run in a continuation of the run.
            grid: tune.ResultGrid | None = None
            moving = (
                restorable
                and not _runs_on(saved or {})
                and needs_new_experiment(storage, names, _experiment_name(run_path, current))
            )
            while True:
                if moving:
                    ended = grid if grid is not None else _saved_result(current_run)
                    earlier_results.append(ended)
                    earlier, current = (
                        [*earlier, current],
                        f"{run_path}/{CONTINUED}{len(earlier) + 1}",
                    )
                    restorable = False
                    log(
                        f"study {cfg.name!r}: its Ray Tune experiment's search had ended, so the "
                        "trials it cannot add (a raised budget, or one asked as the driver died) "
                        f"run in a continuation, {current.rsplit('/', 1)[1]}"
                    )
                if restorable:
                    with _modules_before_the_layers():
                        tuner = tune.Tuner.restore(
                            current, trainable=trainable, resume_errored=True, storage_filesystem=fs
                        )
                else:
                    tuner = _new_tuner(cfg, studies, trainable, max_concurrent, run_path, current)
                start = time.monotonic()
                fitting = True
                _CALLBACKS[current] = [*callbacks, *([_DropOnStart(aside)] if aside else [])]
                try:
                    with (
                        _graceful_sigint(log) as interrupted,
                        _environ(
                            TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1",
                            TUNE_MAX_PENDING_TRIALS_PG=str(_pending(studies, max_concurrent)),
                        ),
                    ):
                        grid = tuner.fit()
                finally:
                    _CALLBACKS.pop(current, None)
                log(f"study {cfg.name!r} ran for {time.monotonic() - start:.1f} s")
                moving = not interrupted() and needs_new_experiment(
                    storage, names, _experiment_name(run_path, current)
                )
                if not moving:
                    break
        finally:
            if started:
                ray.shutdown()
    except BaseException:
        if aside is not None:
            aside.restore(fs, names)  # unless a trial of the new study started
        elif fresh and not fitting:
            _delete_run(fs, run_path, cfg.optuna_url, names)
        raise
    if aside is not None:
        aside.drop()
    if interrupted():
        raise StudyInterruptedError(cfg.name, cfg.run_path)
    assert grid is not None  # fitted at least once
    every = _records_of(earlier_results, objective) + trial_records(grid, objective)
    ends = {
        r.trial_id: TuneTrialEnd("ERROR" if r.error else "TERMINATED", r.metrics) for r in every
    }
    for study in studies:
        _reconcile(study, storage, ends, experiment_ended=True, log=log)
    _check_not_all_failed(cfg, every)
    records = by_study(names, every)
    return {
        study.name: StudyResult(study.name, study.run_path, shown_storage, records[study.name])
        for study in studies
    }


# Where the classes Tune pickles into tuner.pkl (the searcher, the callbacks' forwarder) lived
# before hpo was split into layers (issue 26).
_MODULES_BEFORE_THE_LAYERS = {"hpo.searcher": _searcher_module, "hpo.study": sys.modules[__name__]}


@contextlib.contextmanager
def _modules_before_the_layers():
    """`Tuner.restore` unpickles tuner.pkl itself, and a run saved by a lushpo with the flat
    layout names `StudySearcher` and `_DriverCallbacks` by their old modules. Tune offers no hook
    into its unpickling, so those names resolve to the classes' new homes while it reads, and a
    study interrupted before an upgrade still resumes (Tune saves it anew with the new names)."""
    added = [name for name in _MODULES_BEFORE_THE_LAYERS if name not in sys.modules]
    for name in added:
        sys.modules[name] = _MODULES_BEFORE_THE_LAYERS[name]
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def _refuse_cell_by_cell(
    fs: pafs.FileSystem | None, run_path: str, cfg: StudyConfig, studies: Sequence[StudyConfig]
) -> None:
    """A grid or nested run made by lushpo before its studies ran as one experiment has a Ray
    Tune experiment per study folder and none of its own: this layout cannot continue it (it
    would start the unfinished studies afresh and leave their trials out of the export)."""
    older = [
        s.name
        for s in studies
        if tune.Tuner.can_restore(f"{run_path}/{s.name}", storage_filesystem=fs)
    ]
    if older:
        raise StudyExistsError(
            f"{cfg.run_path} was run study by study by an older lushpo (Ray Tune experiments "
            f"in the folders of {few(older)}), so --resume cannot continue it as one experiment: "
            f"`lushpo export {cfg.run_path}` exports it as it is, or --overwrite starts it again"
        )


def _experiment_name(run_path: str, experiment_path: str) -> str:
    """The empty name for the run folder's own Tune experiment, else the continuation's."""
    return "" if experiment_path == run_path else experiment_path.rsplit("/", 1)[1]


def _records_of(
    results: Sequence[tune.ResultGrid], objective: Objective
) -> tuple[TrialRecord, ...]:
    """The trials of the run's earlier Tune experiments (its continuations' predecessors)."""
    return tuple(record for grid in results for record in trial_records(grid, objective))


def _pending(studies: Sequence[StudyConfig], max_concurrent: int | None) -> int:
    """How many trials Tune may start at once (``TUNE_MAX_PENDING_TRIALS_PG``): Tune allows one
    for a searcher it does not know (it reads `ConcurrencyLimiter` only), which would start
    trials one by one; ours can use every slot its studies' ``max_concurrent`` allow."""
    allowed = sum(study.budget.max_concurrent for study in studies)
    return allowed if max_concurrent is None else min(allowed, max_concurrent)


def _saved_run(fs: pafs.FileSystem | None, experiment_path: str) -> tune.ExperimentAnalysis | None:
    """Ray Tune's saved record of the experiment at `experiment_path`; None when Tune saved no
    experiment state there yet (the driver died before the first save)."""
    try:
        return tune.ExperimentAnalysis(experiment_path, storage_filesystem=fs)
    except ValueError:  # "No experiment snapshot file … was found"
        return None


def _saved_trials(analysis: tune.ExperimentAnalysis) -> dict[str, TuneTrialEnd]:
    """Each trial's end in Ray Tune's saved record, as a resume will restore it."""
    ends = {}
    for trial in analysis.trials:
        ends[trial.trial_id] = TuneTrialEnd(
            trial.status,
            trial.last_result or {},
            restorable=trial.status == "TERMINATED" or _checkpoint_exists(trial.checkpoint),
        )
    return ends


def _checkpoint_exists(checkpoint: tune.Checkpoint | None) -> bool:
    """Whether a resume can continue a trial from `checkpoint`, the latest its saved record
    names (None: the trial starts over). On S3, Tune deletes a trial's older checkpoints
    (`CheckpointConfig.num_to_keep`) before the experiment state naming the newer ones reaches
    storage (Ray's own TODO in ``tune.execution.experiment_state``), so a driver killed in
    between leaves a record naming a checkpoint that is gone."""
    if checkpoint is None or checkpoint.filesystem is None:
        return True
    info = checkpoint.filesystem.get_file_info(checkpoint.path)
    return info.type != pafs.FileType.NotFound


def _reconcile(
    cfg: StudyConfig,
    storage: optuna.storages.BaseStorage,
    tune_trials: Mapping[str, TuneTrialEnd],
    *,
    experiment_ended: bool,
    log: Callable[[str], None],
) -> None:
    """`hpo.search.reconcile` for this study, saying what it changed."""
    changed = reconcile(
        storage,
        cfg.name,
        tune_trials,
        experiment_ended=experiment_ended,
        time_budget=cfg.budget.time_budget_s is not None,
    )
    for what, numbers in changed.items():
        log(f"Optuna trials {numbers} of study {cfg.name!r}: {what} (from Ray Tune's record)")


def _saved_result(run: tune.ExperimentAnalysis | None) -> tune.ResultGrid:
    assert run is not None, "a restorable experiment has a saved record"
    return tune.ResultGrid(run)


def _runs_on(saved: Mapping[str, TuneTrialEnd]) -> bool:
    """Whether a restore of the experiment whose saved record is `saved` runs a trial: one left
    unfinished, or one that errored (``resume_errored=True``), from a checkpoint that exists."""
    return any(t.status != "TERMINATED" and t.restorable for t in saved.values())


def _finished(studies: Sequence[StudyConfig], saved: Mapping[str, TuneTrialEnd]) -> bool:
    """True when the run's saved state holds the whole budget of trials, all completed.
    Errored trials do not count: a resume (``resume_errored=True``) retries them, e.g. once an
    unreachable store is back; unless Tune cannot restore them (their params ran again)."""
    done = [t for t in saved.values() if t.status == "TERMINATED" or not t.restorable]
    return len(done) == len(saved) and len(done) >= sum(s.budget.trials for s in studies)


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
