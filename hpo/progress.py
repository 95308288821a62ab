"""What a running study shows: a line per trial event (running / done / failed of the budget, the
best so far with its params), where results are stored, and at the end a table of every trial
with its per-fold and mean metrics.

`StudyProgress` is a `ray.tune.Callback`, so it runs on the driver and sees every trial's
results as Ray Tune receives them; it replaces Ray's own reporter (the study runs `verbose=0`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from hpo.selection import SELECTED_ON

if TYPE_CHECKING:
    from hpo.study import StudyResult

__all__ = ["StudyProgress", "results_table", "storage_banner"]

OBJECTIVE = "accuracy"  # in a final result: the mean test accuracy (= test_accuracy)
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
    """Prints trial events and the best trial so far; counts running, done and failed trials."""

    def __init__(
        self,
        total: int,
        run_path: str,
        optuna_storage: str,
        write: Callable[[str], None] = print,
    ) -> None:
        self.total = total
        self.write = write
        self.banner = storage_banner(run_path, optuna_storage)
        self.running: set[str] = set()
        self.done: dict[str, float] = {}
        self.failed: set[str] = set()
        self.best: tuple[float, str, dict[str, Any]] | None = None
        self.started = time.monotonic()

    def setup(self, **info: Any) -> None:
        self.write(self.banner)

    def _status(self) -> str:
        elapsed = time.monotonic() - self.started
        best = ""
        if self.best is not None:
            value, trial_id, config = self.best
            best = f" | best {OBJECTIVE}={value:.4f} ({trial_id}: {_params(config)})"
        return (
            f"[{elapsed:6.0f}s] running {len(self.running)}, done {len(self.done)}, "
            f"failed {len(self.failed)} of {self.total}{best}"
        )

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self.write(f"trial {trial.trial_id} started: {_params(trial.config)}")
        self.write(self._status())

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        result = trial.last_result or {}
        value = result.get(OBJECTIVE)
        if result.get("final") is False:  # ASHA or the time budget stopped it mid-training
            val = result.get("val_accuracy")
            val_text = f"validation accuracy {val:.4f}; " if isinstance(val, float) else ""
            self.write(
                f"trial {trial.trial_id} stopped at epoch {result.get('epoch')} "
                f"({val_text}no test score)"
            )
        elif value is None:
            self.write(f"trial {trial.trial_id} ended without {OBJECTIVE}")
        else:
            self.done[trial.trial_id] = float(value)
            std = result.get(f"{OBJECTIVE}_std")
            extra = f" ± {std:.4f}" if isinstance(std, float) else ""
            self.write(f"trial {trial.trial_id} done: {OBJECTIVE}={value:.4f}{extra}")
            if self.best is None or value > self.best[0]:
                self.best = (float(value), trial.trial_id, dict(trial.config))
        self.write(self._status())

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.failed.add(trial.trial_id)
        self.write(f"trial {trial.trial_id} FAILED (error log: {trial.path or 'n/a'})")
        self.write(self._status())


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
        mean = t.metrics.get(OBJECTIVE)
        std = t.metrics.get(f"{OBJECTIVE}_std")
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
            f"best: {best.trial_id} {OBJECTIVE}={best.value:.4f} ({SELECTED_ON}; "
            "`lushpo tune --nested` gives the honest estimate)",
        ]
        lines.append("  " + _params({k: v for k, v in best.params.items()}))
        per_class = {k: v for k, v in best.metrics.items() if k.endswith("_mean")}
        if per_class:
            lines.append("  " + " ".join(f"{k}={_fmt(v)}" for k, v in sorted(per_class.items())))
    return "\n".join(lines)
