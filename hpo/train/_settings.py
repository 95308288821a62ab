"""What every trial of a study shares (`TrialSettings`), its checkpoint file names and report key.

Kept apart from `hpo.train` so the study's driver (`hpo.search`) builds and passes settings
without importing TensorFlow: only the trial processes need it, and the import costs seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.manifest import Split

__all__ = ["HISTORY", "STATE_FILE", "STUDY_KEY", "TRIAL_FILE", "TrialSettings"]

STATE_FILE = "lockstep.json"
TRIAL_FILE = "trial.json"
STUDY_KEY = "lushpo_study"
"""In a trial's config when one Tune experiment searches several Optuna studies (a grid's cells):
the study the trial belongs to (`hpo.search.StudySearcher`, `hpo.search.run_studies`)."""
HISTORY = "val_history"
"""In every report of a trial: ``[[epoch, val_accuracy], …]`` of the epochs no earlier report
carried (the study's searcher records each as an Optuna intermediate value)."""


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a study shares; small and picklable (passed by ``tune.with_parameters``).

    ``feature_sets`` is one store key, or a mapping ``"backbone/frames"`` → key when the backbone
    and N are search dimensions (``config["backbone"]``, ``config["frames"]`` pick the entry).
    """

    store_uri: str
    feature_sets: str | Mapping[str, str]
    split: Split
    cache_dir: str | None = None
    max_epochs: int = 100
    patience: int = 10
    validation_fraction: float = 0.2
    seed: int = 0
    gpu_memory_limit_mb: int | None = None  # logical GPU memory cap (fractional GPUs)
    intra_op_threads: int | None = None  # None: TensorFlow's default (all cores)
    inter_op_threads: int | None = None
    checkpoint_every: int = 5  # epochs between lockstep checkpoints; 0 = final checkpoint only
    checkpoint_interval_s: float = 60.0  # and at least this long after the trial's previous one
    # 0: report every epoch (ASHA stops trials between epochs). Otherwise an epoch is reported
    # only once this long has passed since the last report (and at checkpoints): each report
    # holds the trial until the driver has taken it, a round trip per report.
    report_every_s: float = 0.0
    deterministic: bool | None = None  # TensorFlow op determinism; None: on only without a GPU
    mixed_precision: bool = False  # Keras "mixed_bfloat16" (the softmax stays float32)

    def __post_init__(self) -> None:
        checks = {
            "max_epochs": self.max_epochs >= 1,
            "patience": self.patience >= 1,
            "validation_fraction": 0.0 < self.validation_fraction < 1.0,
            "checkpoint_every": self.checkpoint_every >= 0,
            "checkpoint_interval_s": self.checkpoint_interval_s >= 0,
            "report_every_s": self.report_every_s >= 0,
            "gpu_memory_limit_mb": self.gpu_memory_limit_mb is None or self.gpu_memory_limit_mb > 0,
            "intra_op_threads": self.intra_op_threads is None or self.intra_op_threads >= 1,
            "inter_op_threads": self.inter_op_threads is None or self.inter_op_threads >= 1,
            "split": len(self.split.folds) >= 2,
            "feature_sets": bool(self.feature_sets),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = {name: getattr(self, name) for name in bad}
            raise ValueError(f"TrialSettings fields out of range: {values}")
        if not isinstance(self.feature_sets, str):
            object.__setattr__(self, "feature_sets", dict(self.feature_sets))

    def feature_set_key(self, config: Mapping[str, Any]) -> str:
        """The store key this trial reads: the single key, or the ``backbone/frames`` entry."""
        if isinstance(self.feature_sets, str):
            return self.feature_sets
        pairs = [name.split("/", 1) for name in self.feature_sets]
        wanted = []
        for pos, dim in enumerate(("backbone", "frames")):
            if dim in config:
                wanted.append(str(config[dim]))
                continue
            values = {p[pos] for p in pairs if len(p) == 2}
            if len(values) != 1:
                raise ValueError(
                    f"trial config lacks {dim!r} but feature_sets has several: "
                    f"{sorted(self.feature_sets)}"
                )
            wanted.append(values.pop())
        name = "/".join(wanted)
        if name not in self.feature_sets:
            raise ValueError(
                f"no feature set for {name!r} in feature_sets {sorted(self.feature_sets)}"
            )
        return self.feature_sets[name]
