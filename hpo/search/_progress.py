"""What a running study shows: a short line per trial event, the counts of running / done / failed
trials of the budget with an ETA and the best so far (a tqdm bar on a terminal), where results
are stored, and at the end a table of every trial with its per-fold and mean metrics. Every
trial's parameters and results go to ``<run>/progress.log``.

`StudyProgress` is a `ray.tune.Callback`, so it runs on the driver and sees every trial's
results as Ray Tune receives them; it replaces Ray's own reporter (the study runs `verbose=0`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback
from tqdm import tqdm

from hpo.search._selection import Objective

if TYPE_CHECKING:
    from hpo.search._trials import StudyResult

__all__ = ["StudyProgress", "results_table", "storage_banner"]

TEST = "accuracy"  # in a final result: the mean test-fold accuracy (= test_accuracy)
_HIDDEN = {"backbone", "frames"}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _params(config: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in sorted(config.items()))


def storage_banner(run_path: str, optuna_storage: str) -> str:
    """Where the study's results live, and how to look at them."""
    return (
        f"run dir:        {run_path}\n"
        f"optuna storage: {optuna_storage}\n"
        f"dashboard:      optuna-dashboard {optuna_storage}"
    )


class StudyProgress(Callback):
    """The live view of a study: counts of running, done and failed trials, the best so far, an
    ETA; one short line per trial event. On a terminal it is a tqdm bar (lines print above it).
    Each trial's parameters and results go to ``<run>/progress.log`` (local runs), not the
    screen."""

    def __init__(
        self,
        total: int,
        run_path: str,
        optuna_storage: str,
        write: Callable[[str], None] | None = None,
        time_budget_s: float | None = None,
        objective: Objective | None = None,
    ) -> None:
        self.total = total
        self.objective = objective or Objective()
        self.banner = storage_banner(run_path, optuna_storage)
        self.budget = time_budget_s
        self.running: set[str] = set()
        self.done: dict[str, float] = {}
        self.failed: set[str] = set()
        self.best: tuple[float, str, dict[str, Any]] | None = None
        self.started = time.monotonic()
        self.bar = None if write is not None else tqdm(
            total=total, unit="trial", desc="trials", disable=None, dynamic_ncols=True
        )  # fmt: skip
        on_tty = self.bar is not None and not self.bar.disable
        self.write = write or (tqdm.write if on_tty else print)
        self.on_tty = on_tty
        self.log_path = None if "://" in run_path else Path(run_path) / "progress.log"

    def _log(self, line: str) -> None:
        if self.log_path is None:
            return
        with contextlib.suppress(OSError):  # the log is a convenience, never a failure
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a", encoding="utf-8") as handle:
                handle.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        self.write(self.banner)
        if self.log_path is not None:
            self.write(f"trial log:      {self.log_path}")

    def _eta(self) -> str:
        elapsed = time.monotonic() - self.started
        finished = len(self.done) + len(self.failed)
        left = []
        if finished:
            left.append(elapsed / finished * max(self.total - finished, 0))
        if self.budget is not None:
            left.append(max(self.budget - elapsed, 0.0))
        return f", ETA {min(left) / 60:.0f} min" if left else ""

    def _status(self) -> str:
        elapsed = time.monotonic() - self.started
        best = ""
        if self.best is not None:
            value, trial_id, _config = self.best
            best = f" | best {self.objective.shown}={value:.4f} ({trial_id})"
        return (
            f"[{elapsed:6.0f}s] running {len(self.running)}, done {len(self.done)}, "
            f"failed {len(self.failed)} of {self.total}{self._eta()}{best}"
        )

    def _show(self, event: str) -> None:
        self._log(event)
        self.write(event)
        if self.bar is not None and self.on_tty:
            self.bar.n = len(self.done) + len(self.failed)
            self.bar.set_postfix_str(self._status().split("] ", 1)[1], refresh=True)
        else:
            self.write(self._status())

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._log(f"trial {trial.trial_id} params: {_params(trial.config)}")
        self._show(f"trial {trial.trial_id} started")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        result = trial.last_result or {}
        value = self.objective.value(result)
        if result.get("final") is False:  # ASHA or the time budget stopped it mid-training
            val = result.get("val_accuracy")
            val_text = f"validation accuracy {val:.4f}; " if isinstance(val, float) else ""
            event = (
                f"trial {trial.trial_id} stopped at epoch {result.get('epoch')} "
                f"({val_text}no test score)"
            )
        elif value is None:
            event = f"trial {trial.trial_id} ended without {self.objective.shown}"
        else:
            self.done[trial.trial_id] = float(value)
            p = self.objective.prefix
            std = result.get(f"{p}accuracy_std")
            extra = f" ± {std:.4f}" if isinstance(std, float) else ""
            event = f"trial {trial.trial_id} done: {p}accuracy={value:.4f}{extra}"
            if p:  # the test folds' figure, shown to the user, never told to the search
                event += f" (test folds {result.get(TEST, float('nan')):.4f}, unseen by the search)"
            feasible = self.objective.feasible(result)
            if not feasible:
                event += " [infeasible]"
            if feasible and (self.best is None or value > self.best[0]):
                self.best = (float(value), trial.trial_id, dict(trial.config))
            self._log(f"trial {trial.trial_id} result: {_params(_shown_metrics(result))}")
        self._show(event)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.failed.add(trial.trial_id)
        self._show(f"trial {trial.trial_id} FAILED (error log: {trial.path or 'n/a'})")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.bar is not None:
            self.bar.close()


def _shown_metrics(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if isinstance(v, int | float) and k != "node_id"}


def results_table(result: StudyResult) -> str:
    """Every trial: status, per-fold test accuracy, mean ± std, and its params; best marked."""
    best = result.best
    lines = [
        f"study {result.name}: {len(result.trials)} trials",
        storage_banner(result.run_path, result.optuna_storage),
    ]
    header = f"{'':1} {'trial':<16} {'status':<10} {'mean':>7} {'std':>7}  per-fold accuracy"
    lines += ["", header, "-" * len(header)]
    for t in result.trials:
        mark = "*" if best is not None and t.trial_id == best.trial_id else " "
        mean = t.metrics.get(TEST)
        std = t.metrics.get(f"{TEST}_std")
        folds = " ".join(f"{f.get('accuracy', float('nan')):.3f}" for f in t.folds)
        if t.error:
            mean_s, std_s, folds = "-", "-", t.error.strip().splitlines()[-1][:60]
        elif t.value is None:
            epoch = t.metrics.get("epoch")
            mean_s, std_s = "-", "-"
            folds = f"stopped at epoch {epoch}" if epoch else "stopped before its first epoch"
        else:
            mean_s = f"{mean:.4f}" if isinstance(mean, float) else "-"
            std_s = f"{std:.4f}" if isinstance(std, float) else "-"
        lines.append(f"{mark} {t.trial_id:<16} {t.status:<10} {mean_s:>7} {std_s:>7}  {folds}")
    if best is not None:
        lines += [
            "",
            f"best: {best.trial_id} {best.objective.shown}={best.value:.4f} "
            f"({best.objective.selected_on}; `lushpo tune --nested` gives the honest estimate)",
        ]
        lines.append("  " + _params({k: v for k, v in best.params.items()}))
        per_class = {k: v for k, v in best.metrics.items() if k.endswith("_mean")}
        if per_class:
            lines.append("  " + " ".join(f"{k}={_fmt(v)}" for k, v in sorted(per_class.items())))
    return "\n".join(lines)
