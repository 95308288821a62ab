"""hpo.search.StudySearcher driven as Ray Tune drives it (suggest, results, completion), over a
real Optuna storage: the storage is the only record, so a fresh searcher — what a resumed
driver gets — continues exactly where the last one left off."""

from __future__ import annotations

import pickle

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from hpo.search import (
    PASSWORD_ENV,
    URL_ENV,
    Constraint,
    Objective,
    StoragePasswordError,
    connectable,
    masked,
    remember,
)
from hpo.search import _searcher as hs

SPACE = {"x": FloatDistribution(0, 1), "units": CategoricalDistribution([4, 8, 16])}
OBJECTIVE = Objective().metric  # test_accuracy: the paper's protocol, the default
FINAL = {"final": True, OBJECTIVE: 0.5}


def _url(tmp_path, name: str = "optuna") -> str:
    return f"sqlite:///{tmp_path}/{name}.db"


def _prepared(
    url: str, *, budget=4, max_concurrent=1, seed=3, log=None, scheduler=False, objective=None
):
    hs.prepare_study(
        url, "s", budget=budget, max_concurrent=max_concurrent, sampler="tpe", seed=seed,
        objective=objective, log=log or (lambda _line: None),
    )  # fmt: skip
    return hs.StudySearcher(url, {"s": SPACE}, "tpe", seed, scheduler=scheduler)


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="s", storage=url).trials


def test_budget_and_concurrency_come_from_the_storage_and_a_fresh_searcher_continues(tmp_path):
    url = _url(tmp_path)
    first = _prepared(url, budget=4, max_concurrent=2)
    assert first.suggest("a") is not None and first.suggest("b") is not None
    assert first.suggest("c") is None  # two live of max_concurrent 2
    first.on_trial_complete("a", FINAL)
    assert first.suggest("c") is not None
    # A driver killed now: Tune's saved search state may be any age; the searcher holds none.
    again = pickle.loads(pickle.dumps(first))
    assert again.suggest("d") is None  # b and c are live (the storage says RUNNING)
    again.on_trial_complete("b", FINAL)
    assert again.suggest("d") is not None
    assert again.suggest("e") == Searcher.FINISHED  # 4 of 4 asked: never overruns
    for tune_id in "cd":
        again.on_trial_complete(tune_id, FINAL)
    states = [t.state for t in _trials(url)]
    assert states == [TrialState.COMPLETE] * 4
    assert [t.user_attrs[hs.TUNE_ID_ATTR] for t in _trials(url)] == ["a", "b", "c", "d"]


def test_resume_applies_a_larger_budget_and_concurrency_and_says_so(tmp_path):
    url = _url(tmp_path)
    first = _prepared(url, budget=1)
    first.suggest("a")
    first.on_trial_complete("a", FINAL)
    assert first.suggest("b") == Searcher.FINISHED
    said = []
    resumed = _prepared(url, budget=3, max_concurrent=2, log=said.append)
    assert said == ["study 's': budget.trials 1 -> 3 (applied)",
                    "study 's': budget.max_concurrent 1 -> 2 (applied)"]  # fmt: skip
    assert resumed.suggest("b") is not None and resumed.suggest("c") is not None
    assert resumed.suggest("d") == Searcher.FINISHED


def test_resume_refuses_another_sampler_or_seed_naming_each(tmp_path):
    url = _url(tmp_path)
    _prepared(url)
    with pytest.raises(hs.SearchSettingsChangedError) as err:
        hs.prepare_study(url, "s", budget=4, max_concurrent=1, sampler="random", seed=4)
    assert "searcher.sampler was 'tpe', now 'random'" in str(err.value)
    assert "searcher.seed was 3, now 4" in str(err.value) and "--overwrite" in str(err.value)


def test_a_trial_asked_for_a_tune_trial_tune_never_saved_goes_to_the_next_one(tmp_path):
    """The driver died between Optuna's ask and Tune's save: the resumed study gives those
    params to its next Tune trial instead of drawing others (or counting the trial twice)."""
    url = _url(tmp_path)
    first = _prepared(url, budget=2)
    lost = first.suggest("ghost")
    changed = hs.reconcile(url, "s", {}, experiment_ended=False, time_budget=False)
    assert changed == {"released": [0]}
    resumed = pickle.loads(pickle.dumps(first))
    assert resumed.suggest("next") == lost
    resumed.on_trial_complete("next", FINAL)
    assert resumed.suggest("other") is not None
    resumed.on_trial_complete("other", FINAL)
    assert resumed.suggest("more") == Searcher.FINISHED
    adopted, _other = _trials(url)
    assert adopted.user_attrs[hs.TUNE_ID_ATTR] == "next" and adopted.value == 0.5
    assert adopted.user_attrs[hs.LOST_ATTR] == "ghost"


def test_a_finished_trial_tunes_saved_record_lacks_runs_again_once(tmp_path):
    """On S3, Tune's experiment state is uploaded now and then: a resume may restore fewer
    trials than Optuna finished. Tune has no model of such a trial, so it runs again, same
    params, as a marked retry the budget counts once; a second resume does not add another."""
    url = _url(tmp_path)
    first = _prepared(url, budget=2)
    params = first.suggest("kept")
    first.on_trial_complete("kept", FINAL)
    first.suggest("lost")
    first.on_trial_complete("lost", FINAL)
    saved = {
        "kept": hs.TuneTrialEnd("TERMINATED", {"final": True, OBJECTIVE: 0.5})
    }  # Tune's last upload: before "lost"
    changed = hs.reconcile(url, "s", saved, experiment_ended=False, time_budget=False)
    assert list(changed.values()) == [[1]]
    assert hs.reconcile(url, "s", saved, experiment_ended=False, time_budget=False) == {}
    resumed = pickle.loads(pickle.dumps(first))
    again = resumed.suggest("again")
    assert again == _trials(url)[1].params and again != params
    resumed.on_trial_complete("again", FINAL)
    assert resumed.suggest("more") == Searcher.FINISHED
    retry = _trials(url)[2]
    assert (
        retry.user_attrs == {hs.RETRY_ATTR: 1, hs.TUNE_ID_ATTR: "again", hs.LOST_ATTR: "lost"}
        and retry.state == TrialState.COMPLETE
    )


def test_a_trial_whose_saved_checkpoint_is_gone_runs_again_from_the_start(tmp_path):
    """On S3, Tune's saved record can name a checkpoint it deleted since (num_to_keep): its
    restore of that trial fails. A finished trial (Optuna told its end) and a live one (FAIL,
    checkpoint lost) both run again as marked retries of new Tune trials; the failing restore of
    the old Tune trial is not told to Optuna, and a second reconcile adds nothing."""
    url = _url(tmp_path)
    first = _prepared(url, budget=2, max_concurrent=2)
    done = first.suggest("done")
    live = first.suggest("live")
    first.on_trial_complete("done", FINAL)
    saved = {"done": hs.TuneTrialEnd("PENDING", restorable=False),
             "live": hs.TuneTrialEnd("PENDING", restorable=False)}  # fmt: skip
    changed = hs.reconcile(url, "s", saved, experiment_ended=False, time_budget=False)
    assert changed == {
        "FAIL": [1],
        "run again (Ray Tune's saved record names a checkpoint it had deleted)": [0, 1],
    }
    assert hs.reconcile(url, "s", saved, experiment_ended=False, time_budget=False) == {}
    resumed = pickle.loads(pickle.dumps(first))
    for old in ("done", "live"):  # Tune's restore of each fails
        resumed.on_trial_complete(old, error=True)
    assert [resumed.suggest("again-0"), resumed.suggest("again-1")] == [done, live]
    resumed.on_trial_complete("again-0", FINAL)
    resumed.on_trial_complete("again-1", FINAL)
    assert resumed.suggest("more") == Searcher.FINISHED
    trials = _trials(url)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL,
                                         TrialState.COMPLETE, TrialState.COMPLETE]  # fmt: skip
    assert trials[1].user_attrs[hs.REASON_ATTR] == hs.CHECKPOINT_LOST
    assert [t.user_attrs.get(hs.RETRY_ATTR) for t in trials] == [None, None, 0, 1]
    assert [t.user_attrs[hs.TUNE_ID_ATTR] for t in trials] == ["done", "live", "again-0",
                                                               "again-1"]  # fmt: skip


def test_tpe_start_up_trials_scale_with_the_budget_and_are_the_studys_own(tmp_path):
    """TPE's random start-up trials default to a quarter of the budget (1 to 10), are recorded
    with the study's search settings, stay when a resume raises the budget, and an explicit
    change on resume is refused; a study made before the setting keeps Optuna's 10."""
    url = _url(tmp_path)
    quiet = {"sampler": "tpe", "seed": 3, "log": lambda _line: None}
    hs.prepare_study(url, "s", budget=20, max_concurrent=1, **quiet)
    search = optuna.load_study(study_name="s", storage=url).user_attrs[hs.SEARCH_ATTR]
    assert search["n_startup_trials"] == 5 == hs.startup_trials(20)
    assert [hs.startup_trials(b) for b in (1, 8, 40, 400)] == [1, 2, 10, 10]
    hs.prepare_study(url, "s", budget=80, max_concurrent=1, **quiet)  # a raised budget
    search = optuna.load_study(study_name="s", storage=url).user_attrs[hs.SEARCH_ATTR]
    assert search["n_startup_trials"] == 5
    with pytest.raises(hs.SearchSettingsChangedError, match="n_startup_trials was 5, now 7"):
        hs.prepare_study(url, "s", budget=80, max_concurrent=1, n_startup_trials=7, **quiet)
    old = optuna.load_study(study_name="s", storage=url)
    old.set_user_attr(hs.SEARCH_ATTR, {"sampler": "tpe", "seed": 3})  # before the setting
    hs.prepare_study(url, "s", budget=80, max_concurrent=1, **quiet)
    live = hs.StudySearcher(url, {"s": SPACE}, "tpe", 3)
    live.suggest("t0")
    assert live._open()["s"].n_startup_trials == hs.STARTUP_BEFORE == 10


def test_error_is_fail_with_its_reason_and_a_rerun_is_a_marked_retry(tmp_path):
    url = _url(tmp_path)
    search = _prepared(url, budget=1)
    params = search.suggest("a")
    search.on_trial_result("a", {hs.HISTORY: [[1, 0.4]]})
    search.on_trial_complete("a", error=True)
    (failed,) = _trials(url)
    assert failed.state == TrialState.FAIL and failed.user_attrs[hs.REASON_ATTR] == hs.FAILURE
    # Tuner.restore(resume_errored=True) runs Tune trial "a" again in a new driver
    resumed = pickle.loads(pickle.dumps(search))
    assert resumed.suggest("b") == Searcher.FINISHED  # the budget counts Tune trials
    resumed.on_trial_result("a", {hs.HISTORY: [[1, 0.6]]})
    resumed.on_trial_complete("a", {"final": True, OBJECTIVE: 0.7})
    failed, retry = _trials(url)
    assert failed.state == TrialState.FAIL and failed.intermediate_values == {1: 0.4}
    assert retry.state == TrialState.COMPLETE and retry.value == 0.7 and retry.params == params
    assert retry.user_attrs == {hs.TUNE_ID_ATTR: "a", hs.RETRY_ATTR: failed.number}
    assert retry.intermediate_values == {1: 0.6}


def test_scheduler_stops_are_pruned_and_the_experiments_end_is_read_from_tunes_record(tmp_path):
    url = _url(tmp_path)
    search = _prepared(url, budget=4, max_concurrent=4, scheduler=True)
    for tune_id in "abcd":
        search.suggest(tune_id)
    search.on_trial_result("a", {hs.HISTORY: [[1, 0.3]]})
    search.on_trial_complete("a", {"final": False, OBJECTIVE: None})  # ASHA's stop
    # The time budget ended the experiment: Tune stopped b and c without telling the searcher;
    # c's final result had arrived. d errored.
    ends = {
        "a": hs.TuneTrialEnd("TERMINATED"),
        "b": hs.TuneTrialEnd("TERMINATED"),
        "c": hs.TuneTrialEnd("TERMINATED", {"final": True, OBJECTIVE: 0.9}),
        "d": hs.TuneTrialEnd("ERROR"),
    }
    changed = hs.reconcile(url, "s", ends, experiment_ended=True, time_budget=True)
    assert changed == {"PRUNED": [1], "COMPLETE": [2], "FAIL": [3]}
    a, b, c, d = _trials(url)
    assert a.state == b.state == TrialState.PRUNED
    assert a.user_attrs[hs.REASON_ATTR] == hs.SCHEDULER
    assert b.user_attrs[hs.REASON_ATTR] == hs.TIME_BUDGET
    assert c.state == TrialState.COMPLETE and c.value == 0.9 and hs.REASON_ATTR not in c.user_attrs
    assert d.state == TrialState.FAIL and d.user_attrs[hs.REASON_ATTR] == hs.FAILURE


def test_a_resumed_study_draws_what_the_uninterrupted_one_draws(tmp_path):
    def run(url: str, stop_after: int | None) -> list[dict]:
        search = _prepared(url, budget=14)
        drawn = []
        for i in range(14):
            if i == stop_after:
                search = pickle.loads(pickle.dumps(search))  # a new driver, same pickle
            params = search.suggest(f"t{i}")
            drawn.append(params)
            search.on_trial_complete(f"t{i}", {"final": True, OBJECTIVE: params["x"]})
        return drawn

    whole = run(_url(tmp_path, "whole"), None)
    assert run(_url(tmp_path, "cut"), 11) == whole  # past TPE's 10 random start-up trials
    assert run(_url(tmp_path, "seed"), None) == whole  # same seed, same draws
    assert _prepared(_url(tmp_path, "other"), seed=4).suggest("t0") != whole[0]


def _tpe_next(fail_params: dict, state: TrialState) -> dict:
    """TPE's next draw (fixed seed) in a study of 12 results plus one trial that ended `state`
    at `fail_params`."""
    study = optuna.create_study(direction="maximize")
    for i in range(12):
        params = {"x": i / 12, "units": (4, 8, 16)[i % 3]}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=SPACE, value=params["x"])
        )
    study.add_trial(
        optuna.trial.create_trial(
            params=fail_params, distributions=SPACE, state=state,
            intermediate_values={1: 1.0} if state == TrialState.PRUNED else None,
        )
    )  # fmt: skip
    study.sampler = hs.make_sampler("tpe", hs.sampler_seed(3, 13))
    return study.ask(fixed_distributions=SPACE).params


def test_tpe_does_not_learn_from_a_failed_trial():
    """Where a FAIL trial sat makes no difference to TPE's next draw; a PRUNED one (how the
    old searcher recorded failures) does — so this test could see the difference."""
    low, high = {"x": 0.01, "units": 4}, {"x": 0.99, "units": 16}
    assert _tpe_next(low, TrialState.FAIL) == _tpe_next(high, TrialState.FAIL)
    assert _tpe_next(low, TrialState.PRUNED) != _tpe_next(high, TrialState.PRUNED)


def test_nothing_tune_pickles_holds_the_password(tmp_path, monkeypatch):
    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    url = "postgresql+psycopg2://lushpo:s3cret-pw@127.0.0.1:5432/optuna"
    search = hs.StudySearcher(url, {"s": SPACE}, "tpe", 3)
    data = pickle.dumps(search)
    assert b"s3cret-pw" not in data and b"lushpo:***@127.0.0.1" in data
    assert masked(url) == "postgresql+psycopg2://lushpo:***@127.0.0.1:5432/optuna"
    with pytest.raises(StoragePasswordError, match=PASSWORD_ENV):
        connectable(masked(url))
    monkeypatch.setenv(PASSWORD_ENV, "rotated")
    assert connectable(masked(url)) == url.replace("s3cret-pw", "rotated")
    assert connectable("postgresql://lushpo@127.0.0.1/optuna").endswith(
        "lushpo:rotated@127.0.0.1/optuna"
    )
    monkeypatch.setenv(URL_ENV, url)
    assert connectable(masked(url)) == url  # the RayJob's Secret names the whole URL
    monkeypatch.delenv(URL_ENV)
    monkeypatch.delenv(PASSWORD_ENV)
    assert remember(url) == masked(url) and connectable(masked(url)) == url  # this driver's


def test_one_searcher_fills_free_slots_from_several_studies_each_within_its_limits(tmp_path):
    """A grid's cells (or nested CV's outer folds) as one experiment: each study keeps its
    budget and max_concurrent, a free slot takes a trial from any unfinished study, a global
    limit caps the total, and each study draws as it would alone."""
    url = _url(tmp_path)
    for name in ("a", "b", "c"):
        hs.prepare_study(url, name, budget=2, max_concurrent=1, sampler="tpe", seed=3)
    spaces = {name: SPACE for name in ("a", "b", "c")}
    search = hs.StudySearcher(url, spaces, "tpe", 3, max_concurrent=2)
    first, second = search.suggest("t1"), search.suggest("t2")
    assert (first[hs.STUDY_KEY], second[hs.STUDY_KEY]) == ("a", "b")
    assert search.suggest("t3") is None  # the global limit
    search.on_trial_complete("t1", FINAL)
    assert search.suggest("t3")[hs.STUDY_KEY] == "c"  # the least busy study
    search.on_trial_complete("t2", FINAL)
    assert search.suggest("t4")[hs.STUDY_KEY] == "a"
    search.on_trial_complete("t3", FINAL)
    resumed = pickle.loads(pickle.dumps(search))  # one experiment, resumable as a whole
    assert resumed.suggest("t5")[hs.STUDY_KEY] == "b"
    assert resumed.suggest("t6") is None  # a and b at their max_concurrent 1 ... and the cap
    for tune_id in ("t4", "t5"):
        resumed.on_trial_complete(tune_id, FINAL)
    assert resumed.suggest("t6")[hs.STUDY_KEY] == "c"
    resumed.on_trial_complete("t6", FINAL)
    assert resumed.suggest("t7") == Searcher.FINISHED
    alone = _prepared(_url(tmp_path, "alone"), budget=2)
    for name in ("a", "b", "c"):
        trials = optuna.load_study(study_name=name, storage=url).trials
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert {k: v for k, v in first.items() if k != hs.STUDY_KEY} == alone.suggest("x")


def test_a_trial_asked_but_never_tagged_counts_and_goes_to_the_next_tune_trial(tmp_path):
    """The driver died between Optuna's ask and the Tune id tag: the trial is still one of the
    budget, and the next Tune trial takes its params (not a fresh draw past the budget)."""
    url = _url(tmp_path)
    search = _prepared(url, budget=1)
    untagged = optuna.load_study(study_name="s", storage=url).ask(fixed_distributions=SPACE)
    resumed = pickle.loads(pickle.dumps(search))
    assert resumed.suggest("next") == untagged.params
    resumed.on_trial_complete("next", FINAL)
    assert resumed.suggest("more") == Searcher.FINISHED
    (trial,) = _trials(url)
    assert trial.state == TrialState.COMPLETE and trial.user_attrs[hs.TUNE_ID_ATTR] == "next"


def test_only_active_dimensions_are_drawn_and_the_papers_point_still_comes_first(tmp_path):
    """Issue 25: the third dense block's keys only when dense_layers is 3, the recurrent
    layer's only for a recurrent head; the paper's full point, enqueued, is drawn as its
    active part."""
    from hpo.train import RECURRENT_KEYS, paper_best, search_space

    url = _url(tmp_path)
    space = search_space({"head": ["lstm", "pooled"]})
    hs.prepare_study(url, "s", budget=40, max_concurrent=40, sampler="tpe", seed=1,
                     points=[paper_best(space)], log=lambda _line: None)  # fmt: skip
    search = hs.StudySearcher(url, {"s": space}, "tpe", 1)
    drawn = []
    for i in range(40):
        drawn.append(search.suggest(f"t{i}"))
        search.on_trial_complete(f"t{i}", {"final": True, OBJECTIVE: (i % 7) / 10})
    first = drawn[0]
    assert "dense_units_3" not in first and first["dense_units_2"] == 1024
    assert first["lstm_units"] == 512 and first["head"] == "lstm"
    for params in drawn:
        layers = params["dense_layers"]
        blocks = {int(k[-1]) for k in params if k.startswith(("dense_units_", "dense_dropout_"))}
        assert blocks == set(range(1, layers + 1)), params
        recurrent = params["head"] != "pooled"
        assert all((k in params) == recurrent for k in RECURRENT_KEYS), params
    assert {p["head"] for p in drawn} == {"lstm", "pooled"}
    assert {p["dense_layers"] for p in drawn} == {1, 2, 3}


def test_a_draw_that_repeats_a_trial_is_skipped_and_recorded(tmp_path):
    """Issue 25: two trials with the same active params are not trained twice: the repeat is
    FAIL with its reason and the trial it repeats, outside the budget, and the next draw goes
    to Tune."""
    url = _url(tmp_path)
    two = {"units": CategoricalDistribution([4, 8])}
    hs.prepare_study(url, "s", budget=2, max_concurrent=2, sampler="random", seed=0,
                     log=lambda _line: None)  # fmt: skip
    search = hs.StudySearcher(url, {"s": two}, "random", 0)
    first = search.suggest("a")
    optuna.load_study(study_name="s", storage=url).enqueue_trial(first)  # the next draw repeats
    trained = [first, search.suggest("b")]
    assert sorted(p["units"] for p in trained) == [4, 8]
    assert search.suggest("c") == Searcher.FINISHED
    trials = _trials(url)
    repeats = [t for t in trials if hs.SAME_AS_ATTR in t.user_attrs]
    assert repeats and repeats[0].number == 1
    for repeat in repeats:
        assert repeat.state == TrialState.FAIL and repeat.user_attrs[hs.REASON_ATTR] == hs.REPEAT
        assert trials[repeat.user_attrs[hs.SAME_AS_ATTR]].params == repeat.params
    assert sorted(t.user_attrs[hs.TUNE_ID_ATTR] for t in trials if t not in repeats) == ["a", "b"]


def _final(test: float, validation: float, test_recall: float, validation_recall: float) -> dict:
    """A trial's final result as `hpo.train` reports it: both sets of figures."""
    return {
        "final": True,
        "test_accuracy": test,
        "accuracy": test,
        "cov_recall_mean": test_recall,
        "validation_accuracy": validation,
        "validation_cov_recall_mean": validation_recall,
    }


def test_under_validation_no_test_fold_number_reaches_optunas_storage(tmp_path):
    """objective.on: validation tells Optuna the inner-validation score; the test folds' figures
    (distinct numbers here) are nowhere in the storage: values, intermediate values, attrs."""
    url = _url(tmp_path)
    search = _prepared(url, budget=3, objective=Objective("validation"))
    tests = [0.111, 0.222, 0.333]
    for i, test in enumerate(tests):
        search.suggest(f"t{i}")
        search.on_trial_result(f"t{i}", {hs.HISTORY: [[1, 0.5 + i / 100]]})
        search.on_trial_complete(f"t{i}", _final(test, 0.6 + i / 10, 0.444, 0.7))
    trials = _trials(url)
    assert [t.value for t in trials] == pytest.approx([0.6, 0.7, 0.8])
    stored = repr(
        [(t.values, t.intermediate_values, t.user_attrs, t.system_attrs) for t in trials]
    ) + repr(optuna.load_study(study_name="s", storage=url).user_attrs)
    for number in [*tests, 0.444]:
        assert str(number) not in stored
    # the paper's protocol, for contrast: the test folds' mean is the value
    url = _url(tmp_path, "test-folds")
    search = _prepared(url, budget=1)
    search.suggest("t")
    search.on_trial_complete("t", _final(0.111, 0.6, 0.444, 0.7))
    assert _trials(url)[0].value == 0.111


def test_a_constraint_makes_the_infeasible_best_by_accuracy_lose_to_a_feasible_trial(tmp_path):
    covid = Objective(constraints=(Constraint.parse("covid_recall >= 0.9"),))
    url = _url(tmp_path)
    search = _prepared(url, budget=2, max_concurrent=2, objective=covid)
    search.suggest("a")
    search.suggest("b")
    search.on_trial_complete("a", _final(0.9, 0.5, 0.6, 0.5))  # best accuracy, misses COVID
    search.on_trial_complete("b", _final(0.8, 0.5, 0.95, 0.5))
    a, b = _trials(url)
    assert a.constraints == {"covid_recall >= 0.9": pytest.approx(0.3)}  # Optuna's public view
    assert b.constraints == {"covid_recall >= 0.9": pytest.approx(-0.05)}
    assert optuna.load_study(study_name="s", storage=url).best_trial.number == b.number
    ranked = [covid.candidate(t, i, r) for i, (t, r) in enumerate(
        [("a", _final(0.9, 0.5, 0.6, 0.5)), ("b", _final(0.8, 0.5, 0.95, 0.5))]
    )]  # fmt: skip
    from hpo.search import select_best

    assert select_best(ranked).trial_id == "b"
    assert select_best([Objective().candidate(c.trial_id, c.order, r) for c, r in zip(
        ranked, [_final(0.9, 0.5, 0.6, 0.5), _final(0.8, 0.5, 0.95, 0.5)], strict=True
    )]).trial_id == "a"  # fmt: skip


def test_a_resume_that_changes_the_objective_is_refused(tmp_path):
    url = _url(tmp_path)
    _prepared(url)
    with pytest.raises(hs.SearchSettingsChangedError) as err:
        _prepared(url, objective=Objective("validation"))
    assert "objective was {'on': 'test_folds'" in str(err.value)
