"""Ray Tune's search over Optuna studies whose storage is the studies' only record.

`StudySearcher` is a `ray.tune.search.Searcher` (Tune's documented extension point) that asks
and tells Optuna through its public API. Tune pickles the searcher with its experiment state;
the searcher pickles its configuration only — study name, masked storage URL, space, sampler
name and seed — and reads everything else from the storage each time a driver starts:

- **budget and concurrency** are the study's user attributes (`prepare_study` writes them), so
  ``--resume`` with a larger budget or another ``max_concurrent`` takes effect;
- **the trials asked** and **the trials live** are counted from the storage, each Optuna trial
  carrying its Tune trial id (``tune_trial_id``), so a Tune search state saved a moment before
  the driver died can neither overrun nor hang the study;
- **the sampler** is made afresh before each ask, seeded from (seed, trial number): TPE, random
  and CMA-ES keep no state of their own beyond their RNG and what the storage holds, so a study
  resumed after a kill draws what the uninterrupted one would have.

Trial states say what happened. COMPLETE only with the trial's final score on the objective's
folds (`hpo.search.Objective`: the test folds, or each fold's inner validation split, which
keeps every test-fold number out of the storage), with its constraints set through Optuna's
``Trial.set_constraint`` so that TPE models feasibility and `FrozenTrial.constraints` says it.
FAIL for a trial that raised or that Tune lost, with the reason (`REASON_ATTR`); TPE leaves FAIL
trials out of its model. PRUNED only for a stop by the scheduler (ASHA) or the time budget, with
the reason taken from how Tune ended the trial: a scheduler stop reaches `on_trial_complete`,
while the experiment's own stop (the time budget) ends trials without telling the searcher, and
`reconcile` marks those from Tune's record once the experiment has ended.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from hpo.search._optuna_storage import masked, open_storage
from hpo.search._selection import Objective
from hpo.train import HISTORY, STUDY_KEY, active, draw_order

__all__ = [
    "CHECKPOINT_LOST",
    "DRIVER_LOST",
    "FAILURE",
    "REASON_ATTR",
    "RETRY_ATTR",
    "SAMPLERS",
    "SCHEDULER",
    "STOPPED",
    "TIME_BUDGET",
    "TUNE_ID_ATTR",
    "SearchSettingsChangedError",
    "StudySearcher",
    "TuneTrialEnd",
    "ask_active",
    "make_sampler",
    "needs_new_experiment",
    "prepare_study",
    "reconcile",
    "sampler_seed",
    "startup_trials",
]

SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed, startup, _independent: optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=startup
    ),
    "random": lambda seed, _startup, _independent: optuna.samplers.RandomSampler(seed=seed),
    # what CMA-ES cannot model (categorical dimensions) goes to the configured independent
    # sampler; the config refuses cmaes over a categorical space without one (hpo.search)
    "cmaes": lambda seed, _startup, independent: optuna.samplers.CmaEsSampler(
        seed=seed, independent_sampler=independent, warn_independent_sampling=independent is None
    ),
}
"""Optuna samplers by name, made from (seed, TPE's start-up trials, an independent sampler);
`make_sampler` lists these names when given another."""

STARTUP_BEFORE = 10
"""TPE's start-up trials in a study made before ``searcher.n_startup_trials`` existed (Optuna's
default), so that a resume of it draws as it did."""


def startup_trials(budget: int) -> int:
    """TPE's random start-up trials by default: a quarter of the study's budget, 1 to 10
    (Optuna's 10 would leave half of a 20-trial cell of the paper's grid random search)."""
    return max(1, min(STARTUP_BEFORE, budget // 4))


# Optuna trial user attributes
TUNE_ID_ATTR = "tune_trial_id"  # the Ray Tune trial id (run dir, progress, export)
RETRY_ATTR = "lushpo_retry_of"  # number of the FAIL trial whose params this one runs again
REASON_ATTR = "lushpo_reason"  # why a trial is FAIL or PRUNED
SAME_AS_ATTR = "lushpo_same_params_as"  # a draw skipped: that trial has its active params
LOST_ATTR = "lushpo_asked_for"  # the Tune id that asked a trial Tune never saved (then adopted)

# Optuna study user attributes, written by the driver (`prepare_study`)
BUDGET_ATTR = "lushpo_budget"
CONCURRENCY_ATTR = "lushpo_max_concurrent"
SEARCH_ATTR = "lushpo_search"  # sampler, seed, objective, …: what a resume may not change
# the Ray Tune experiment (`StudySearcher`'s `experiment`) whose search ended the study's budget
ENDED_ATTR = "lushpo_search_ended_in"

# Why a trial ended without its final test score (REASON_ATTR)
TIME_BUDGET = "time budget: stopped when budget.time_budget_s ran out"
SCHEDULER = "scheduler: stopped early by ASHA on its validation accuracy"
STOPPED = "stopped before its final test result"
FAILURE = "failure: the trial raised (its error.txt is in the run dir); --resume retries it"
DRIVER_LOST = "driver lost: asked by a driver that died before Ray Tune saved the trial"
REPEAT = "repeat: drew the active params of an earlier trial; not trained, not in the budget"
MAX_REPEATS = 10  # repeats in a row after which a draw is trained anyway (a small, spent space)
CHECKPOINT_LOST = (
    "checkpoint lost: Ray Tune's saved record names a checkpoint it had already deleted; "
    "run again from the start"
)


class SearchSettingsChangedError(ValueError):
    """--resume with search settings (sampler, seed, start-up trials, independent sampler, the
    objective) other than the study's own."""


def make_sampler(
    name: str,
    seed: int,
    *,
    n_startup_trials: int = STARTUP_BEFORE,
    independent: str | None = None,
) -> optuna.samplers.BaseSampler:
    """The seeded Optuna sampler registered under `name`; `independent` names the sampler of
    the dimensions `name` cannot model (CMA-ES: categorical ones)."""
    for key, value in (("sampler", name), ("independent_sampler", independent)):
        if value is not None and value not in SAMPLERS:
            raise ValueError(
                f"unknown sampler {value!r} (searcher.{key}); valid names: {sorted(SAMPLERS)}"
            )
    other = None if independent is None else make_sampler(independent, seed)
    return SAMPLERS[name](seed, n_startup_trials, other)


def sampler_seed(seed: int, number: int) -> int:
    """The sampler's seed for the study's trial `number`: the same on every run of the study."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def _opened(storage: str | optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """`storage` itself, or the storage at that URL: a driver that prepares and reconciles many
    studies (a grid's 48 cells) opens one (SQLAlchemy, the schema check: about a second)."""
    return open_storage(storage) if isinstance(storage, str) else storage


def prepare_study(
    storage: str | optuna.storages.BaseStorage,
    name: str,
    *,
    budget: int,
    max_concurrent: int,
    sampler: str,
    seed: int,
    n_startup_trials: int | None = None,
    independent_sampler: str | None = None,
    objective: Objective | None = None,
    points: list[dict[str, Any]] | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Create the study `name` (maximising, or in `objective`'s directions), or check a resumed
    one's search settings and apply its new budget and concurrency, saying so. `points` are
    enqueued in a new study only.

    The search settings (`SEARCH_ATTR`) are the study's: the sampler, its seed, TPE's start-up
    trials (`n_startup_trials`, default `startup_trials(budget)`, fixed when the study is made so
    that a raised budget draws as before), CMA-ES's independent sampler, and the objective (which
    folds Optuna is told about, and the constraints; default the test folds)."""
    make_sampler(sampler, seed, independent=independent_sampler)  # an unknown name fails here
    storage = _opened(storage)
    objective = objective or Objective()
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=objective.optuna_directions,
        load_if_exists=True,
    )
    search = {
        "sampler": sampler,
        "seed": seed,
        "independent_sampler": independent_sampler,
        "n_startup_trials": n_startup_trials or startup_trials(budget),
        "objective": objective.to_dict(),
    }
    was = study.user_attrs.get(SEARCH_ATTR)
    if was is None:
        study.set_user_attr(SEARCH_ATTR, search)
        for point in points or ():
            study.enqueue_trial(point)
    else:
        was = {
            "independent_sampler": None,
            "n_startup_trials": STARTUP_BEFORE,
            "objective": Objective().to_dict(),  # a study made before objective.on
            **was,
        }
        if n_startup_trials is None:  # the default: the study's own, whatever the budget now
            search["n_startup_trials"] = was["n_startup_trials"]
        changed = [
            f"{k if k == 'objective' else f'searcher.{k}'} was {was.get(k)!r}, now {v!r}"
            for k, v in search.items()
            if was.get(k) != v
        ]
        if changed:
            raise SearchSettingsChangedError(
                f"--resume refused: {'; '.join(changed)}. The study's trials were drawn with "
                "the old settings; restore them to continue, or pass --overwrite to start again"
            )
    for attr, key, value in (
        (BUDGET_ATTR, "budget.trials", budget),
        (CONCURRENCY_ATTR, "budget.max_concurrent", max_concurrent),
    ):
        before = study.user_attrs.get(attr)
        if before is not None and before != value:
            log(f"study {name!r}: {key} {before} -> {value} (applied)")
        if before != value:
            study.set_user_attr(attr, value)


def needs_new_experiment(
    storage: str | optuna.storages.BaseStorage, names: Sequence[str], experiment: str
) -> bool:
    """Whether the studies `names` want trials that the Ray Tune experiment `experiment` cannot
    add: its search ended (`StudySearcher` returned FINISHED) and a budget was raised since.
    Tune restores an ended search as ended (ray#20886), so those trials need another
    experiment; the storage's count of the trials asked carries over to it."""
    storage = _opened(storage)
    studies = [optuna.load_study(study_name=name, storage=storage) for name in names]
    if not any(study.user_attrs.get(ENDED_ATTR) == experiment for study in studies):
        return False
    return any(not _Live(storage, name, {}).done_asking() for name in names)


def ask_active(study: optuna.Study, space: Mapping[str, BaseDistribution]) -> optuna.trial.Trial:
    """Ask `study` for a trial and draw its active dimensions of `space` only (define-by-run,
    through Optuna's public ``suggest_*``), the structural ones first (`hpo.train`). An
    enqueued point gives its own values; its inactive keys are not drawn."""
    trial = study.ask()
    for name in draw_order(space):
        if not active(name, trial.params):
            continue
        dist = space[name]
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, optuna.distributions.IntDistribution):
            trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        elif isinstance(dist, optuna.distributions.FloatDistribution):
            trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            raise TypeError(f"{name}: no suggest_* for {type(dist).__name__}")
    return trial


@dataclass(frozen=True)
class TuneTrialEnd:
    """What Ray Tune's record says of one trial: its status and its last result."""

    status: str  # Tune's: PENDING | RUNNING | PAUSED | TERMINATED | ERROR
    result: Mapping[str, Any] | None = None
    # False: a trial Tune would continue from a checkpoint its saved record names but storage no
    # longer holds, so its restore fails ("does not exist on storage anymore")
    restorable: bool = True


def reconcile(
    storage: str | optuna.storages.BaseStorage,
    name: str,
    tune_trials: Mapping[str, TuneTrialEnd],
    *,
    experiment_ended: bool,
    time_budget: bool,
) -> dict[str, list[int]]:
    """Make the study's RUNNING Optuna trials agree with Ray Tune's record `tune_trials`.

    Before a resume (`experiment_ended` False) and after a study that ran to its end (True):
    a trial Tune finished is told its end (COMPLETE with the final score on the study's objective,
    FAIL when it errored, else PRUNED: the experiment stopped it, which is the time budget when
    there is one). A trial
    Tune never saved is released (its Tune id cleared, the asking id kept in ``lushpo_asked_for``)
    so that the resumed searcher gives its params to the next Tune trial; after the experiment's
    end it is FAIL (driver lost). Trials Tune will continue are left alone, unless Tune cannot
    restore them (`TuneTrialEnd.restorable`): those are FAIL (checkpoint lost). Before a resume,
    a finished trial Tune's record lacks or cannot restore runs again from the start
    (`_run_again_what_tune_lost`). Returns the
    numbers of the trials so ended, released or run again, by what happened to them."""
    storage = _opened(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    study_id = storage.get_study_id_from_name(name)
    stopped = TIME_BUDGET if time_budget else STOPPED
    objective = _study_objective(study)
    done: dict[str, list[int]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        tune_id = trial.user_attrs.get(TUNE_ID_ATTR)
        end = tune_trials.get(tune_id) if tune_id is not None else None
        if end is None:
            if experiment_ended:
                storage.set_trial_user_attr(trial_id, REASON_ATTR, DRIVER_LOST)
                study.tell(trial.number, state=TrialState.FAIL)
                what = "FAIL"
            elif tune_id is not None:
                storage.set_trial_user_attr(trial_id, LOST_ATTR, tune_id)
                storage.set_trial_user_attr(trial_id, TUNE_ID_ATTR, None)
                what = "released"
            else:
                continue  # released before: the next suggestion adopts it
        elif not end.restorable and not experiment_ended:
            storage.set_trial_user_attr(trial_id, REASON_ATTR, CHECKPOINT_LOST)
            study.tell(trial.number, state=TrialState.FAIL)
            what = "FAIL"  # and run again below, from the start
        elif end.status == "ERROR":
            storage.set_trial_user_attr(trial_id, REASON_ATTR, FAILURE)
            study.tell(trial.number, state=TrialState.FAIL)
            what = "FAIL"
        elif end.status == "TERMINATED" and _tell_final(
            study, objective, trial_id, trial.number, end.result
        ):
            what = "COMPLETE"
        elif end.status == "TERMINATED" or experiment_ended:
            storage.set_trial_user_attr(trial_id, REASON_ATTR, stopped)
            study.tell(trial.number, state=TrialState.PRUNED)
            what = "PRUNED"
        else:
            continue  # Tune runs it on
        done.setdefault(what, []).append(trial.number)
    if not experiment_ended:
        _run_again_what_tune_lost(study, storage, study_id, tune_trials, done)
    return done


def _study_objective(study: optuna.Study) -> Objective:
    return Objective.from_dict((study.user_attrs.get(SEARCH_ATTR) or {}).get("objective"))


def _tell_final(
    study: optuna.Study,
    objective: Objective,
    trial_id: int,
    number: int,
    result: Mapping[str, Any] | None,
) -> bool:
    """Tell Optuna trial `number` COMPLETE with its final `result`'s score on the study's
    `objective` (its values, for a multi-objective study), its constraints set first; False
    (nothing told) when `result` is not final."""
    values = objective.values(result or {})
    if values is None:
        return False
    if objective.constraints:
        # A metric a split cannot measure (NaN: the class absent from it) is not a pass.
        found = objective.violations(result or {}) or {str(c): 1.0 for c in objective.constraints}
        # Optuna's public constructor of a live trial: the ask that made it may have been a
        # driver ago, and `Trial.set_constraint` is how ask/tell records constraints (5.0's
        # replacement of the samplers' constraints_func).
        asked = optuna.trial.Trial(study, trial_id)
        for name, violation in found.items():
            asked.set_constraint(name, violation)
    study.tell(number, values)
    return True


def _run_again_what_tune_lost(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    study_id: int,
    tune_trials: Mapping[str, TuneTrialEnd],
    done: dict[str, list[int]],
) -> None:
    """A trial Optuna has COMPLETE or FAIL that Tune's saved record lacks, or cannot restore:
    on S3, Tune uploads its experiment state now and then, so a driver killed between two
    uploads restores fewer trials than ran, or a trial at a checkpoint that Tune deleted once it
    had newer ones (`CheckpointConfig.num_to_keep`; Tune's restore of it fails). Tune has no
    model of it to export: it runs the same params again from the start, as a marked retry
    (``lushpo_retry_of``) that the next Tune trial adopts; the budget counts the trial once."""
    trials = study.get_trials(deepcopy=False)
    again = {t.user_attrs.get(RETRY_ATTR) for t in trials}
    for trial in trials:
        tune_id = trial.user_attrs.get(TUNE_ID_ATTR)
        end = tune_trials.get(tune_id) if tune_id is not None else None
        lost = tune_id is not None and (end is None or not end.restorable)
        if not lost or trial.state not in (TrialState.COMPLETE, TrialState.FAIL):
            continue
        if trial.number in again:
            continue
        retry = optuna.trial.create_trial(
            state=TrialState.RUNNING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={RETRY_ATTR: trial.number, TUNE_ID_ATTR: None, LOST_ATTR: tune_id},
        )
        storage.create_new_trial(study_id, template_trial=retry)
        why = "lacks it" if end is None else "names a checkpoint it had deleted"
        done.setdefault(f"run again (Ray Tune's saved record {why})", []).append(trial.number)


class _Live:
    """One study as a driver found it in the storage and has changed it since."""

    def __init__(self, storage: optuna.storages.BaseStorage, name: str, space: dict) -> None:
        self.name, self.space, self.storage = name, space, storage
        self.study = optuna.load_study(study_name=name, storage=storage)
        self.study_id = storage.get_study_id_from_name(name)
        attrs = self.study.user_attrs
        self.budget = int(attrs[BUDGET_ATTR])
        self.max_concurrent = int(attrs[CONCURRENCY_ATTR])
        search = attrs.get(SEARCH_ATTR) or {}
        self.n_startup_trials = int(search.get("n_startup_trials", STARTUP_BEFORE))
        self.independent_sampler = search.get("independent_sampler")
        self.objective = Objective.from_dict(search.get("objective"))
        self.released: list[int] = []  # asked for Tune trials the driver lost: to adopt
        self.asked = 0  # trials of the budget: with a Tune id (or released), not retries
        self.newest: dict[str, int] = {}  # Tune id -> its newest Optuna trial number
        trials = self.study.get_trials(deepcopy=False)
        self.numbered = len(trials)  # the next new trial's number
        for trial in trials:
            if trial.state == TrialState.WAITING:
                continue  # enqueued, not asked yet
            attrs = trial.user_attrs
            # None: asked for a Tune trial the driver lost, or the driver died between the ask
            # and the tag (no attr): either way a trial of the budget for the next Tune trial
            tune_id = attrs.get(TUNE_ID_ATTR)
            self.asked += RETRY_ATTR not in attrs and SAME_AS_ATTR not in attrs
            if tune_id is None:
                if trial.state == TrialState.RUNNING:
                    self.released.append(trial.number)
                continue
            self.newest[tune_id] = max(trial.number, self.newest.get(tune_id, -1))
        newest = set(self.newest.values())
        # Optuna trials of live Tune trials, and FAIL ones a resume may run again: not those run
        # again already as a new Tune trial (their own Tune trial's end is then not ours to tell)
        run_again = {t.user_attrs.get(RETRY_ATTR) for t in trials}
        self.running = {t.number for t in trials if t.state == TrialState.RUNNING} & newest
        self.failed = {t.number for t in trials if t.state == TrialState.FAIL} & newest - run_again

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def frozen(self, number: int) -> optuna.trial.FrozenTrial:
        return self.storage.get_trial(self.trial_id(number))

    def can_ask(self) -> bool:
        return self.asked < self.budget and len(self.running) < self.max_concurrent

    def holding(self, params: dict[str, Any], other_than: int) -> int | None:
        """The number of a live or complete trial (not a skipped repeat) with these params."""
        for trial in self.study.get_trials(
            deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE)
        ):
            if trial.number != other_than and trial.params == params:
                return trial.number
        return None

    def done_asking(self) -> bool:
        """Every trial of the budget asked, and none left for a Tune trial to adopt."""
        return self.asked >= self.budget and not self.released


class StudySearcher(Searcher):
    """Ray Tune's searcher over Optuna studies in the storage at `storage_url`.

    One experiment can search several studies (a grid's cells, nested CV's outer folds), each
    with its own budget and ``max_concurrent``: a free trial slot takes a trial from whichever
    unfinished study has the fewest running, and the trial's config names its study under
    `STUDY_KEY`. `max_concurrent` caps the experiment's live trials in all (None: whatever the
    cluster's resources fit).

    Args:
        storage_url: the studies' storage; only its masked form is kept (`hpo.search`).
        spaces: {study name: Optuna distributions by parameter}; each study made by
            `prepare_study`, which holds its budget and concurrency.
        sampler, seed: a `SAMPLERS` name and the seed every study's draws derive from.
        scheduler: whether a trial scheduler (ASHA) may stop trials: the reason a stop gets.
        experiment: which of the run's Ray Tune experiments this searcher serves ("" the run
            folder's own, else its continuation's name); recorded in each study when the
            search ends (`needs_new_experiment`).
    """

    def __init__(
        self,
        storage_url: str,
        spaces: Mapping[str, Mapping[str, BaseDistribution]],
        sampler: str,
        seed: int,
        *,
        scheduler: bool = False,
        max_concurrent: int | None = None,
        metric: str = Objective().metric,
        mode: str = "max",
        experiment: str = "",
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self._config: dict[str, Any] = {
            "storage_url": masked(storage_url),
            "spaces": {name: dict(space) for name, space in spaces.items()},
            "sampler": sampler,
            "seed": seed,
            "scheduler": scheduler,
            "max_concurrent": max_concurrent,
            "experiment": experiment,
        }
        self._studies: dict[str, _Live] | None = None  # opened on first use, in the driver

    # --- what Tune pickles: the configuration, never the storage or a password -----------------

    def __getstate__(self) -> dict[str, Any]:
        return {"_metric": self._metric, "_mode": self._mode, "_config": self._config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._studies = None

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        # The space is Optuna's own; a Tune param_space adds constants only.
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return True

    # --- the studies as the storage holds them -----------------------------------------------

    def _open(self) -> dict[str, _Live]:
        """Read each study's budget, concurrency and trials from the storage (once a driver)."""
        if self._studies is None:
            storage = open_storage(self._config["storage_url"])
            spaces = self._config["spaces"]
            self._studies = {name: _Live(storage, name, space) for name, space in spaces.items()}
            self._tune_ids = {  # Tune id -> its study
                tune_id: live for live in self._studies.values() for tune_id in live.newest
            }
        return self._studies

    def _config_of(self, live: _Live, params: dict[str, Any]) -> dict[str, Any]:
        many = len(self._config["spaces"]) > 1
        return {**params, STUDY_KEY: live.name} if many else dict(params)

    # --- Tune's calls ------------------------------------------------------------------------

    # Tune's documented end of a search is the string `Searcher.FINISHED`, which its own
    # annotation (dict | None) leaves out.
    def suggest(self, trial_id: str) -> dict | str | None:  # type: ignore[override]
        studies = list(self._open().values())
        for live in studies:  # asked before the driver died, never run: same params, new Tune id
            if live.released:
                number = live.released.pop(0)
                live.storage.set_trial_user_attr(live.trial_id(number), TUNE_ID_ATTR, trial_id)
                return self._track(trial_id, live, number, live.frozen(number).params)
        if all(live.asked >= live.budget for live in studies):
            experiment = self._config.get("experiment", "")  # absent in an older run's pickle
            for live in studies:
                if live.study.user_attrs.get(ENDED_ATTR) != experiment:
                    live.study.set_user_attr(ENDED_ATTR, experiment)
            return Searcher.FINISHED
        cap = self._config["max_concurrent"]
        if cap is not None and sum(len(live.running) for live in studies) >= cap:
            return None
        ready = [live for live in studies if live.can_ask()]
        if not ready:
            return None
        live = min(ready, key=lambda x: (len(x.running), x.asked))  # stable: config order
        trial = self._ask_new(live)
        trial.set_user_attr(TUNE_ID_ATTR, trial_id)
        live.asked += 1
        return self._track(trial_id, live, trial.number, trial.params)

    def _ask_new(self, live: _Live) -> optuna.trial.Trial:
        """A new trial of `live` whose active params no live or complete trial of the study
        holds. A draw that repeats one trains nothing new: it is told FAIL with the reason
        `REPEAT` and the trial it repeats (`SAME_AS_ATTR`), stays out of the budget and of
        TPE's model, and the sampler draws again; after `MAX_REPEATS` in a row (a small space,
        nearly spent) the draw is trained anyway."""
        cfg = self._config
        for repeats in range(MAX_REPEATS + 1):
            live.study.sampler = make_sampler(
                cfg["sampler"],
                sampler_seed(cfg["seed"], live.numbered),
                n_startup_trials=live.n_startup_trials,
                independent=live.independent_sampler,
            )
            trial = ask_active(live.study, live.space)
            live.numbered = max(live.numbered, trial.number + 1)
            same = None if repeats == MAX_REPEATS else live.holding(trial.params, trial.number)
            if same is None:
                return trial
            trial.set_user_attr(SAME_AS_ATTR, same)
            trial.set_user_attr(REASON_ATTR, REPEAT)
            live.study.tell(trial, state=TrialState.FAIL)
        raise AssertionError("unreachable: the last draw is returned")

    def _track(self, trial_id: str, live: _Live, number: int, params: dict) -> dict:
        live.newest[trial_id] = number
        live.running.add(number)
        self._tune_ids[trial_id] = live
        return self._config_of(live, params)

    def _current(self, trial_id: str) -> tuple[_Live, int] | None:
        """The Optuna trial that records Tune trial `trial_id` now: a FAIL one that Tune runs
        again (``Tuner.restore(resume_errored=True)``) gets a retry trial, same params, RUNNING,
        because a finished Optuna trial cannot change state. None for a trial that is not ours."""
        self._open()
        live = self._tune_ids.get(trial_id)
        if live is None:
            return None
        number = live.newest[trial_id]
        if number not in live.failed:
            return live, number
        old = live.frozen(number)
        retry = optuna.trial.create_trial(
            state=TrialState.RUNNING,
            params=old.params,
            distributions=old.distributions,
            user_attrs={TUNE_ID_ATTR: trial_id, RETRY_ATTR: old.number},
        )
        number = live.storage.get_trial(
            live.storage.create_new_trial(live.study_id, template_trial=retry)
        ).number
        live.numbered = max(live.numbered, number + 1)
        live.newest[trial_id] = number
        live.running.add(number)
        return live, number

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        history = result.get(HISTORY) or []  # the epochs since the last report; never test scores
        current = self._current(trial_id)
        if not history or current is None or current[1] not in current[0].running:
            return  # not ours, or told before a driver died: never reported twice
        live, number = current
        trial = live.trial_id(number)
        for epoch, val_accuracy in history:
            live.storage.set_trial_intermediate_value(trial, int(epoch), float(val_accuracy))

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        current = self._current(trial_id)
        if current is None or current[1] not in current[0].running:
            return
        live, number = current
        live.running.discard(number)
        if not error and _tell_final(
            live.study, live.objective, live.trial_id(number), number, result
        ):
            return
        if error:
            reason, state = FAILURE, TrialState.FAIL
            live.failed.add(number)
        else:  # Tune's scheduler stopped it (the experiment's own stops never come here)
            reason = SCHEDULER if self._config["scheduler"] else STOPPED
            state = TrialState.PRUNED
        live.storage.set_trial_user_attr(live.trial_id(number), REASON_ATTR, reason)
        live.study.tell(number, state=state)
