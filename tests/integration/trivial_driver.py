"""A study driver for kill tests: `run_study` over a trivial trial (tests.support.trivial_trial),
killing its own process group — itself and the Ray instance it started, as a lost head pod
does — at one named point when ``--kill POINT`` is given.

    python -m tests.integration.trivial_driver STUDY.yaml [--resume] [--kill POINT] [--after N]

`N` (default 2) is how many trials finish before the kill point arms. Each point is reached
through a public hook where there is one (Tune callbacks, our searcher's methods), and by
wrapping Tune's own save where there is none (between its experiment-state and search saves).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from ray import tune
from ray.tune.search import Searcher

from hpo.search import StudyProgress, load_config
from hpo.search import _searcher as hsearcher
from hpo.search import _study as hstudy
from tests.support.trivial_trial import KILL_FILE_ENV, train_trivial

POINTS = (
    "before_first_trial",  # Tune's setup: nothing ran yet
    "after_ask",  # Optuna asked, Tune never saved the trial
    "mid_trial",  # a trial's first result arrived
    "after_tell",  # Optuna told COMPLETE, Tune not yet saved TERMINATED
    "between_trials",  # a trial's completion fully processed by Tune
    "search_ended",  # the searcher returned FINISHED: its last trial asked, Tune not yet saved it
    "ended_search_saved",  # Tune saved the ended search and every trial, one still running
    "between_saves",  # Tune wrote its experiment state, not yet its search state
    "after_checkpoint",  # a trial's checkpoint registered by Tune
    "during_upload",  # a trial's checkpoint upload under way (the trial kills the driver)
    "final_settle",  # the experiment ended, Optuna not reconciled yet
)


def die() -> None:
    print("KILLED here", flush=True)
    os.killpg(os.getpgrp(), signal.SIGKILL)


class _Kill(tune.Callback):
    def __init__(self, point: str, after: int, run_path: str, experiment_path: str) -> None:
        self.point, self.after, self.done, self.run_path = point, after, 0, run_path
        self.experiment_path = experiment_path  # where Tune saves the experiment's state
        self.completed_this_step = False
        self.search_ended = False  # the searcher has returned FINISHED

    def armed(self) -> bool:
        return self.done >= self.after

    def setup(self, **info) -> None:
        if self.point == "before_first_trial":
            die()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if self.point == "mid_trial" and self.armed():
            die()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        if self.point == "after_checkpoint" and self.armed():
            die()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.done += 1
        self.completed_this_step = self.point == "between_trials" and self.armed()
        if self.point == "during_upload" and self.armed():
            # the next checkpoint upload kills this driver's process group (Ray's workers sit
            # in groups of their own)
            Path(os.environ[KILL_FILE_ENV]).write_text(str(os.getpgrp()))

    def on_step_end(self, iteration, trials, **info) -> None:
        # A step handles one event and then attempts Tune's experiment-state save; the next
        # step starts by asking the searcher for trials.
        if self.completed_this_step:
            die()  # the completion handled: the searcher told, no trial asked since
        if self.point == "ended_search_saved" and self.search_ended and self._saved(trials):
            die()

    def _saved(self, trials) -> bool:
        """Whether the state Tune saved to storage holds every trial, one still unfinished."""
        try:
            saved = {
                t.trial_id: t.status for t in tune.ExperimentAnalysis(self.experiment_path).trials
            }
        except ValueError:  # nothing saved yet
            return False
        return {t.trial_id for t in trials} <= set(saved) and any(
            status != "TERMINATED" for status in saved.values()
        )


def _arm(point: str, kill: _Kill) -> None:
    """The kill points inside the searcher, Tune's save and the study's end."""
    if point == "after_ask":
        suggest = hsearcher.StudySearcher.suggest

        def suggest_then_die(self, trial_id):
            params = suggest(self, trial_id)
            if kill.armed() and isinstance(params, dict):
                die()
            return params

        hsearcher.StudySearcher.suggest = suggest_then_die
    elif point in ("search_ended", "ended_search_saved"):
        # Tune asks for trials at a step's start and saves its state at the step's end: the
        # FINISHED that follows the budget's last ask comes in the same step, so at
        # "search_ended" Tune's saved record lacks that last trial and its search is saved as
        # not ended; "ended_search_saved" waits for a save of the ended search (`_Kill._saved`).
        suggest = hsearcher.StudySearcher.suggest

        def suggest_then_mark_the_end(self, trial_id):
            params = suggest(self, trial_id)
            if params == Searcher.FINISHED:
                if point == "search_ended":
                    die()
                kill.search_ended = True
            return params

        hsearcher.StudySearcher.suggest = suggest_then_mark_the_end
    elif point == "after_tell":
        complete = hsearcher.StudySearcher.on_trial_complete

        def complete_then_die(self, trial_id, result=None, error=False):
            complete(self, trial_id, result, error)
            if kill.done + 1 >= kill.after:
                die()

        hsearcher.StudySearcher.on_trial_complete = complete_then_die
    elif point == "between_saves":
        from ray.tune.search import SearchGenerator

        save = SearchGenerator.save_to_dir

        def save_after_death(self, *args, **kwargs):
            if kill.armed():
                die()  # Tune has just written its experiment state
            return save(self, *args, **kwargs)

        SearchGenerator.save_to_dir = save_after_death
    elif point == "final_settle":
        reconcile = hstudy._reconcile

        def die_at_the_end(cfg, storage, tune_trials, *, experiment_ended, log):
            if experiment_ended:
                die()
            return reconcile(cfg, storage, tune_trials, experiment_ended=experiment_ended, log=log)

        hstudy._reconcile = die_at_the_end
    elif point == "during_upload":  # Ray's workers inherit the driver's environment
        os.environ[KILL_FILE_ENV] = str(Path(kill.run_path, ".kill-during-upload"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill", choices=POINTS)
    parser.add_argument("--after", type=int, default=2)
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    callbacks: list[tune.Callback] = [
        StudyProgress(cfg.budget.trials, cfg.run_path, "-", write=print)
    ]
    if args.kill:
        kill = _Kill(args.kill, args.after, str(args.config.parent), cfg.run_path)
        _arm(args.kill, kill)
        callbacks.append(kill)
    hstudy.run_study(cfg, resume=args.resume, callbacks=callbacks, train=train_trivial)
    print("STUDY ENDED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
