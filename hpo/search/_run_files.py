"""lushpo's own JSON records in a study's run dir, beside Ray Tune's: local or s3://.

``lushpo-settings.json`` (what shaped the trials, `hpo.search`), ``nested.json`` (`hpo.search`)
and ``rescore.json`` (`hpo.search`) are written and read here only: a local write is a temp
name + rename, an s3:// write one PUT, so a reader never sees half a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.files import atomic_write_text, s3_filesystem

__all__ = [
    "CONTINUED",
    "GRID_FILE",
    "RESCORE_FILE",
    "SETTINGS_FILE",
    "experiment_paths",
    "read_run_file",
    "remove_run_file",
    "write_run_file",
]

SETTINGS_FILE = "lushpo-settings.json"
"""What shaped a study's trials, and its objective (`_study.study_settings`), written when it
starts; ``--resume`` refuses to continue with different values (a changed validation fraction
would change the inner split mid-trial), and export ranks trials by its objective."""
GRID_FILE = "grid.json"  # a grid run's cells (hpo.search), in its run folder and its export
RESCORE_FILE = "rescore.json"
"""`hpo.search`'s record; `hpo.results` exports its winner."""
CONTINUED = "continued-"
"""A run's later Ray Tune experiments, ``<run>/continued-<k>``: Tune adds no trial to an
experiment whose search ended (ray#20886), so a study resumed with a raised budget after its
experiment ended runs the new trials in a continuation (`hpo.search`)."""


def experiment_paths(fs: Any, run_path: str) -> list[str]:
    """The run's Ray Tune experiments, oldest first: `run_path` itself, then each continuation.

    Args:
        fs: the pyarrow filesystem of `run_path`, or None for a local path.
        run_path: the run folder as that filesystem names it."""
    if fs is None:
        folder = Path(run_path)
        names = [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    else:
        import pyarrow.fs as pafs

        infos = fs.get_file_info(pafs.FileSelector(run_path, allow_not_found=True))
        names = [i.base_name for i in infos if i.type == pafs.FileType.Directory]
    numbers = sorted(
        int(n[len(CONTINUED) :]) for n in names
        if n.startswith(CONTINUED) and n[len(CONTINUED) :].isdigit()
    )  # fmt: skip
    return [run_path, *(f"{run_path}/{CONTINUED}{k}" for k in numbers)]


def _key(run: str, name: str) -> str:
    return f"{run[len('s3://') :].rstrip('/')}/{name}"


def write_run_file(run: str, name: str, data: Any, endpoint_url: str | None = None) -> str:
    """Write `data` as JSON to ``<run>/<name>``; returns where it went."""
    text = json.dumps(data, indent=1, sort_keys=True)
    if not run.startswith("s3://"):
        path = Path(run) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        return str(path)
    with s3_filesystem(endpoint_url).open_output_stream(_key(run, name)) as out:
        out.write(text.encode("utf-8"))
    return f"s3://{_key(run, name)}"


def read_run_file(run: str, name: str, endpoint_url: str | None = None) -> Any | None:
    """``<run>/<name>`` parsed, or None when the run has no such file."""
    if not run.startswith("s3://"):
        path = Path(run) / name
        return json.loads(path.read_text()) if path.is_file() else None
    import pyarrow.fs as pafs

    fs = s3_filesystem(endpoint_url)
    if fs.get_file_info(_key(run, name)).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(_key(run, name)) as f:
        return json.loads(f.read())


def remove_run_file(run: str, name: str, endpoint_url: str | None = None) -> None:
    """Drop ``<run>/<name>`` if it is there (``--overwrite``: no stale record survives)."""
    if not run.startswith("s3://"):
        (Path(run) / name).unlink(missing_ok=True)
        return
    import pyarrow.fs as pafs

    fs = s3_filesystem(endpoint_url)
    if fs.get_file_info(_key(run, name)).type != pafs.FileType.NotFound:
        fs.delete_file(_key(run, name))
