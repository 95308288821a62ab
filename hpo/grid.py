"""The paper's grid: one study per (backbone, N) cell, each with its own trial budget.

Barros et al. ran 68 studies, one per row of evaluation.csv, so every row has a best trial of its
own. A config with ``feature_set.grid: true`` does the same: each cell is a study named
``<backbone>-<N>`` with the config's whole budget, the cells' Tune runs live side by side under
``<storage_path>/<name>/`` and share one Optuna storage (default
``<storage_path>/<name>/optuna.db``, one dashboard for every cell). Cells run one after the other
on one Ray connection; an interrupted grid resumes cell by cell (finished cells are skipped,
the interrupted one is resumed, the rest start).

    RUN/grid.json           {"name", "cells": ["xception-20", …], "optuna_storage"}
    RUN/<backbone>-<N>/     a plain Ray Tune run (lushpo export reads it as any other)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow.fs as pafs

from hpo.config import StudyConfig
from hpo.optuna_storage import masked
from pipeline.files import atomic_write_text

__all__ = ["GRID_FILE", "cell_configs", "cell_label", "read_grid", "run_grid"]

GRID_FILE = "grid.json"


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
    from hpo.study import storage_filesystem

    fs, path = storage_filesystem(cfg)
    fs = fs or pafs.LocalFileSystem()
    run = f"{path.rstrip('/')}/{cfg.name}"
    fs.create_dir(run, recursive=True)
    record = {
        "name": cfg.name,
        "cells": [c.name for c in cells],
        "optuna_storage": masked(cfg.storage.optuna_storage),
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


def run_grid(
    cfg: StudyConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Callable[[StudyConfig], list] = lambda _cell: [],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) every cell of a grid config; {cell label: StudyResult}.

    Every feature set is looked up before any cell starts, so a missing one fails at once.
    """
    import ray

    from hpo.study import resolve_feature_sets, run_study, start_ray

    cells = cell_configs(cfg)
    for cell in cells:
        resolve_feature_sets(cell)
    _write_grid_file(cfg, cells)
    started = start_ray(cfg)
    results: dict[str, Any] = {}
    try:
        for i, cell in enumerate(cells, start=1):
            log(f"cell {i}/{len(cells)}: {cell.name} ({cell.budget.trials} trials)")
            results[cell.name] = run_study(
                cell, resume=resume, overwrite=overwrite, callbacks=callbacks(cell), log=log
            )
    finally:
        if started:
            ray.shutdown()
    return results


def export_grid(
    run: str,
    out: Any,
    grid: dict,
    *,
    export: Callable[..., Any],
    log: Callable[[str], None] = print,
    **kwargs: Any,
) -> dict[str, Any]:
    """Export each cell's best trial of the grid run at `run` into ``out/<cell>`` (cells with no
    finished trial are listed, not exported), then write ``out/grid.json``. `export` is
    `hpo.export.export_best`; `kwargs` go to it. Returns {cell: ExportResult or error text}."""
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for cell in grid["cells"]:
        study = {"optuna_storage": grid["optuna_storage"], "study_name": cell}
        try:
            results[cell] = export(f"{run.rstrip('/')}/{cell}", out / cell, study=study, **kwargs)
            log(f"{cell}: exported to {out / cell}")
        except Exception as error:
            results[cell] = str(error)
            log(f"{cell}: not exported: {error}")
    exported = [c for c, r in results.items() if not isinstance(r, str)]
    record = {"name": grid["name"], "run": run, "cells": exported, "not_exported": {
        c: r for c, r in results.items() if isinstance(r, str)}}  # fmt: skip
    atomic_write_text(out / GRID_FILE, json.dumps(record, indent=1))
    return results
