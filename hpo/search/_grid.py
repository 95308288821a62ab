"""The paper's grid: one study per (backbone, N) cell, each with its own trial budget.

Barros et al. ran 68 studies, one per row of evaluation.csv, so every row has a best trial of its
own. A config with ``feature_set.grid: true`` does the same: each cell is an Optuna study named
``<backbone>-<N>`` with the config's whole budget and ``max_concurrent``, all in one Optuna
storage (default ``<storage_path>/<name>/optuna.db``, one dashboard for every cell). The cells
run as one Ray Tune experiment (`hpo.search.run_studies`): a free trial slot anywhere in the
cluster takes a trial from any unfinished cell, so a 16-GPU cluster runs up to 16 trials even at
``max_concurrent: 4`` per cell. An interrupted grid resumes as a whole.

    RUN/grid.json           {"name", "cells": ["xception-20", …], "optuna_storage" (masked),
                             "experiment": "one"}
    RUN/                    the Ray Tune experiment: every cell's trials, each config naming
                            its cell (`hpo.train.STUDY_KEY`)
    RUN/<backbone>-<N>/     the cell's run files (lushpo-settings.json, rescore.json)

Grids run before this layout (no "experiment" in grid.json) have a Tune run per cell folder;
export reads both.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow.fs as pafs
from ray.tune import Callback

from hpo.search._config import StudyConfig
from hpo.search._optuna_storage import masked
from hpo.search._prepare import resolve_feature_sets, storage_filesystem
from hpo.search._run_files import GRID_FILE
from hpo.search._study import run_studies, train_on_node

__all__ = ["GRID_FILE", "ONE_EXPERIMENT", "cell_configs", "cell_label", "read_grid", "run_grid"]

ONE_EXPERIMENT = "one"  # grid.json's "experiment": every cell's trials in the run's experiment


def cell_label(backbone: str, frames: int) -> str:
    """The cell's name, as the paper's `model_label`: ``xception-20``."""
    return f"{backbone}-{frames}"


def cell_configs(cfg: StudyConfig) -> list[StudyConfig]:
    """One single-feature-set StudyConfig per (backbone, N) of a grid config, in paper order
    (backbones as listed, N ascending)."""
    parent = f"{cfg.storage.storage_path.rstrip('/')}/{cfg.name}"
    cells = []
    for backbone in cfg.feature_set.backbone:
        for frames in sorted(cfg.feature_set.frames):
            cells.append(
                cfg.replace(
                    name=cell_label(backbone, frames),
                    feature_set={"backbone": (backbone,), "frames": (frames,), "grid": False},
                    storage={"storage_path": parent},
                )
            )
    return cells


def _write_grid_file(cfg: StudyConfig, cells: Sequence[StudyConfig]) -> None:

    fs, path = storage_filesystem(cfg)
    fs = fs or pafs.LocalFileSystem()
    run = f"{path.rstrip('/')}/{cfg.name}"
    fs.create_dir(run, recursive=True)
    record = {
        "name": cfg.name,
        "cells": [c.name for c in cells],
        "optuna_storage": masked(cfg.storage.optuna_storage),
        "experiment": ONE_EXPERIMENT,
    }
    with fs.open_output_stream(f"{run}/{GRID_FILE}") as out:
        out.write(json.dumps(record, indent=1).encode())


def read_grid(run: str, filesystem: Any = None) -> dict | None:
    """The grid.json of a run directory (path or s3:// with `filesystem`), or None."""
    fs = filesystem or pafs.LocalFileSystem()
    try:
        with fs.open_input_stream(f"{run.rstrip('/')}/{GRID_FILE}") as f:
            return json.loads(f.read())
    except (FileNotFoundError, OSError):
        return None


class _GridRecord(Callback):
    """Writes grid.json when the grid's experiment starts: after every check passed, so a
    refused start never writes into a folder that is not the grid's."""

    def __init__(self, cfg: StudyConfig, cells: Sequence[StudyConfig]) -> None:
        self.cfg, self.cells = cfg, cells

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        _write_grid_file(self.cfg, self.cells)


def run_grid(
    cfg: StudyConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Callable[[StudyConfig], list] = lambda _cfg: [],
    log: Callable[[str], None] = print,
    train: Any = None,
    max_concurrent: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) every cell of a grid config as one Ray Tune experiment;
    {cell label: StudyResult}.

    Every feature set is looked up before the experiment starts, so a missing one fails at once.
    `callbacks` gets the grid's config with ``budget.trials`` the grid's total (for a progress
    view). `max_concurrent` caps the live trials of all cells (None: the cluster's resources).
    `train` replaces the CNN-LSTM trial (benchmarks).
    """

    cells = cell_configs(cfg)
    for cell in cells:
        resolve_feature_sets(cell)
    total = sum(cell.budget.trials for cell in cells)
    log(
        f"grid {cfg.name!r}: {len(cells)} cells x {cfg.budget.trials} trials in one experiment "
        f"(at most {cfg.budget.max_concurrent} running per cell)"
    )
    return run_studies(
        cfg,
        cells,
        resume=resume,
        overwrite=overwrite,
        callbacks=[*callbacks(cfg.replace(budget={"trials": total})), _GridRecord(cfg, cells)],
        log=log,
        train=train or train_on_node,
        max_concurrent=max_concurrent,
    )
