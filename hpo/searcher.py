"""Ray Tune's search over one Optuna study whose storage is the study's only record.

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

Trial states say what happened. COMPLETE only with the trial's final test score. FAIL for a
trial that raised or that Tune lost, with the reason (`REASON_ATTR`); TPE leaves FAIL trials out
of its model. PRUNED only for a stop by the scheduler (ASHA) or the time budget, with the reason
taken from how Tune ended the trial: a scheduler stop reaches `on_trial_complete`, while the
experiment's own stop (the time budget) ends trials without telling the searcher, and
`reconcile` marks those from Tune's record once the experiment has ended.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from hpo.optuna_storage import masked, open_storage
from hpo.trial_settings import HISTORY

__all__ = [
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
    "make_sampler",
    "prepare_study",
    "reconcile",
    "sampler_seed",
]

OBJECTIVE = "test_accuracy"  # in a trial's final result only: the mean k-fold CV test accuracy

SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed),
}
"""Optuna samplers by name; `make_sampler` lists these names when given another."""

# Optuna trial user attributes
TUNE_ID_ATTR = "tune_trial_id"  # the Ray Tune trial id (run dir, progress, export)
RETRY_ATTR = "lushpo_retry_of"  # number of the FAIL trial whose params this one runs again
REASON_ATTR = "lushpo_reason"  # why a trial is FAIL or PRUNED
LOST_ATTR = "lushpo_asked_for"  # the Tune id that asked a trial Tune never saved (then adopted)

# Optuna study user attributes, written by the driver (`prepare_study`)
BUDGET_ATTR = "lushpo_budget"
CONCURRENCY_ATTR = "lushpo_max_concurrent"
SEARCH_ATTR = "lushpo_search"  # sampler, seed: what a resume may not change

# Why a trial ended without its final test score (REASON_ATTR)
TIME_BUDGET = "time budget: stopped when budget.time_budget_s ran out"
SCHEDULER = "scheduler: stopped early by ASHA on its validation accuracy"
STOPPED = "stopped before its final test result"
FAILURE = "failure: the trial raised (its error.txt is in the run dir); --resume retries it"
DRIVER_LOST = "driver lost: asked by a driver that died before Ray Tune saved the trial"


class SearchSettingsChangedError(ValueError):
    """--resume with search settings (sampler, seed) other than the study's own."""


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The seeded Optuna sampler registered under `name`."""
    try:
        return SAMPLERS[name](seed)
    except KeyError:
        raise ValueError(
            f"unknown sampler {name!r} (searcher.sampler); valid names: {sorted(SAMPLERS)}"
        ) from None


def sampler_seed(seed: int, number: int) -> int:
    """The sampler's seed for the study's trial `number`: the same on every run of the study."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def prepare_study(
    storage_url: str,
    name: str,
    *,
    budget: int,
    max_concurrent: int,
    sampler: str,
    seed: int,
    points: list[dict[str, Any]] | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Create the study `name` (maximising), or check a resumed one's search settings and apply
    its new budget and concurrency, saying so. `points` are enqueued in a new study only."""
    make_sampler(sampler, seed)  # an unknown name fails here, before any record is written
    storage = open_storage(storage_url)
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True
    )
    search = {"sampler": sampler, "seed": seed}
    was = study.user_attrs.get(SEARCH_ATTR)
    if was is None:
        study.set_user_attr(SEARCH_ATTR, search)
        for point in points or ():
            study.enqueue_trial(point)
    else:
        changed = [
            f"searcher.{k} was {was.get(k)!r}, now {v!r}"
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


@dataclass(frozen=True)
class TuneTrialEnd:
    """What Ray Tune's record says of one trial: its status and, after its final result, the
    test score."""

    status: str  # Tune's: PENDING | RUNNING | PAUSED | TERMINATED | ERROR
    value: float | None = None


def reconcile(
    storage_url: str,
    name: str,
    tune_trials: Mapping[str, TuneTrialEnd],
    *,
    experiment_ended: bool,
    time_budget: bool,
) -> dict[str, list[int]]:
    """Make the study's RUNNING Optuna trials agree with Ray Tune's record `tune_trials`.

    Before a resume (`experiment_ended` False) and after a study that ran to its end (True):
    a trial Tune finished is told its end (COMPLETE with the final score, FAIL when it errored,
    else PRUNED: the experiment stopped it, which is the time budget when there is one). A trial
    Tune never saved is released (its Tune id cleared, the asking id kept in ``lushpo_asked_for``)
    so that the resumed searcher gives its params to the next Tune trial; after the experiment's
    end it is FAIL (driver lost). Trials Tune will continue are left alone. Returns the numbers
    of the trials so ended or released, by what happened to them."""
    storage = open_storage(storage_url)
    study = optuna.load_study(study_name=name, storage=storage)
    study_id = storage.get_study_id_from_name(name)
    stopped = TIME_BUDGET if time_budget else STOPPED
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
        elif end.status == "ERROR":
            storage.set_trial_user_attr(trial_id, REASON_ATTR, FAILURE)
            study.tell(trial.number, state=TrialState.FAIL)
            what = "FAIL"
        elif end.status == "TERMINATED" and end.value is not None:
            study.tell(trial.number, end.value)
            what = "COMPLETE"
        elif end.status == "TERMINATED" or experiment_ended:
            storage.set_trial_user_attr(trial_id, REASON_ATTR, stopped)
            study.tell(trial.number, state=TrialState.PRUNED)
            what = "PRUNED"
        else:
            continue  # Tune runs it on
        done.setdefault(what, []).append(trial.number)
    return done


class StudySearcher(Searcher):
    """Ray Tune's searcher over the Optuna study `study_name` in the storage at `storage_url`.

    Args:
        storage_url: the study's storage; only its masked form is kept (`hpo.optuna_storage`).
        study_name: an Optuna study made by `prepare_study`, which holds budget and concurrency.
        space: Optuna distributions by parameter name.
        sampler, seed: a `SAMPLERS` name and the study's seed.
        scheduler: whether a trial scheduler (ASHA) may stop trials: the reason a stop gets.
    """

    def __init__(
        self,
        storage_url: str,
        study_name: str,
        space: Mapping[str, BaseDistribution],
        sampler: str,
        seed: int,
        *,
        scheduler: bool = False,
        metric: str = OBJECTIVE,
        mode: str = "max",
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self._config = {
            "storage_url": masked(storage_url),
            "study_name": study_name,
            "space": dict(space),
            "sampler": sampler,
            "seed": seed,
            "scheduler": scheduler,
        }
        self._study: optuna.Study | None = None  # opened on first use, in the driver

    # --- what Tune pickles: the configuration, never the storage or a password -----------------

    def __getstate__(self) -> dict[str, Any]:
        return {"_metric": self._metric, "_mode": self._mode, "_config": self._config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._study = None

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

    # --- the study as the storage holds it ------------------------------------------------------

    def _open(self) -> optuna.Study:
        """Read the study's budget, concurrency and trials from the storage (once per driver)."""
        if self._study is not None:
            return self._study
        cfg = self._config
        self._storage = open_storage(cfg["storage_url"])
        study = optuna.load_study(study_name=cfg["study_name"], storage=self._storage)
        self._study_id = self._storage.get_study_id_from_name(cfg["study_name"])
        self._budget = int(study.user_attrs[BUDGET_ATTR])
        self._max_concurrent = int(study.user_attrs[CONCURRENCY_ATTR])
        self._newest: dict[str, int] = {}  # Tune id -> its newest Optuna trial number
        self._running: set[int] = set()  # Optuna trials of live Tune trials
        self._released: list[int] = []  # asked for Tune trials the driver lost: to adopt
        self._asked = 0  # trials of the budget: with a Tune id (or released), not retries
        trials = study.get_trials(deepcopy=False)
        self._numbered = len(trials)  # the next new trial's number
        for trial in trials:
            attrs = trial.user_attrs
            if TUNE_ID_ATTR not in attrs:
                continue  # enqueued, not asked yet
            tune_id = attrs[TUNE_ID_ATTR]
            if RETRY_ATTR not in attrs:
                self._asked += 1
            if tune_id is None:
                if trial.state == TrialState.RUNNING:
                    self._released.append(trial.number)
                continue
            self._newest[tune_id] = max(trial.number, self._newest.get(tune_id, -1))
        newest = set(self._newest.values())
        self._running = {t.number for t in trials if t.state == TrialState.RUNNING} & newest
        self._failed = {t.number for t in trials if t.state == TrialState.FAIL} & newest
        self._study = study
        return study

    def _trial_id(self, number: int) -> int:
        return self._storage.get_trial_id_from_study_id_trial_number(self._study_id, number)

    def _frozen(self, number: int) -> optuna.trial.FrozenTrial:
        return self._storage.get_trial(self._trial_id(number))

    # --- Tune's calls ------------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict | str | None:
        study = self._open()
        if self._released:  # asked before the driver died, never run: same params, new Tune id
            number = self._released.pop(0)
            self._storage.set_trial_user_attr(self._trial_id(number), TUNE_ID_ATTR, trial_id)
            params = self._frozen(number).params
        elif self._asked >= self._budget:
            return Searcher.FINISHED
        elif len(self._running) >= self._max_concurrent:
            return None
        else:
            cfg = self._config
            # The number the new trial will get, unless it takes an enqueued one (whose params
            # are fixed and need no sampler): every trial of the study is numbered in turn.
            seed = sampler_seed(cfg["seed"], self._numbered)
            study.sampler = make_sampler(cfg["sampler"], seed)
            trial = study.ask(fixed_distributions=cfg["space"])
            trial.set_user_attr(TUNE_ID_ATTR, trial_id)
            number, params = trial.number, trial.params
            self._numbered = max(self._numbered, number + 1)
            self._asked += 1
        self._newest[trial_id] = number
        self._running.add(number)
        return dict(params)

    def _current(self, trial_id: str) -> int | None:
        """The Optuna trial that records Tune trial `trial_id` now: a FAIL one that Tune runs
        again (``Tuner.restore(resume_errored=True)``) gets a retry trial, same params, RUNNING,
        because a finished Optuna trial cannot change state. None for a trial that is not ours."""
        self._open()
        number = self._newest.get(trial_id)
        if number is None or number not in self._failed:
            return number
        old = self._frozen(number)
        retry = optuna.trial.create_trial(
            state=TrialState.RUNNING,
            params=old.params,
            distributions=old.distributions,
            user_attrs={TUNE_ID_ATTR: trial_id, RETRY_ATTR: old.number},
        )
        created = self._storage.create_new_trial(self._study_id, template_trial=retry)
        number = self._storage.get_trial(created).number
        self._numbered = max(self._numbered, number + 1)
        self._newest[trial_id] = number
        self._running.add(number)
        return number

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        history = result.get(HISTORY) or []  # the epochs since the last report; never test scores
        number = self._current(trial_id)
        if not history or number is None or number not in self._running:
            return  # not ours, or told before a driver died: never reported twice
        trial = self._trial_id(number)
        for epoch, val_accuracy in history:
            self._storage.set_trial_intermediate_value(trial, int(epoch), float(val_accuracy))

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        number = self._current(trial_id)
        if number is None or number not in self._running:
            return
        self._running.discard(number)
        final = bool(result) and result.get("final") is True and result.get(OBJECTIVE) is not None
        if final and not error:
            self._study.tell(number, float(result[OBJECTIVE]))
            return
        if error:
            reason, state = FAILURE, TrialState.FAIL
            self._failed.add(number)
        else:  # Tune's scheduler stopped it (the experiment's own stops never come here)
            reason = SCHEDULER if self._config["scheduler"] else STOPPED
            state = TrialState.PRUNED
        self._storage.set_trial_user_attr(self._trial_id(number), REASON_ATTR, reason)
        self._study.tell(number, state=state)
