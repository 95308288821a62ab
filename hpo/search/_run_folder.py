"""A study's run folder on the driver: reachable, taken, a lushpo study's or the user's, deleted,
and set aside while a replacing study starts (`--overwrite`)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pyarrow.fs as pafs
from ray import tune

from hpo.search._config import StudyConfig
from hpo.search._optuna_storage import connectable, has_study

__all__: list[str] = []  # used by `_study` only


def _reachable(fs: pafs.FileSystem | None, run_path: str, cfg: StudyConfig) -> None:
    """pyarrow's S3 errors name neither the path nor a fix ("AWS Error NETWORK_CONNECTION
    during HeadObject"): one call up front turns them into one line that does."""
    if fs is None:
        return
    try:
        fs.get_file_info(run_path)
    except OSError as exc:
        where = cfg.storage.endpoint_url or "AWS_ENDPOINT_URL, else AWS"
        raise OSError(
            f"the storage path {cfg.run_path} cannot be reached at {where} "
            f"({' '.join(str(exc).split())[:200]}); check the endpoint (storage.endpoint_url or "
            "AWS_ENDPOINT_URL), the bucket and the AWS credentials"
        ) from None


def _run_exists(fs: pafs.FileSystem | None, run_path: str) -> bool:
    if fs is None:
        return Path(run_path).exists() and any(Path(run_path).iterdir())
    info = fs.get_file_info(pafs.FileSelector(run_path, allow_not_found=True))
    return len(info) > 0


# What a lushpo run folder holds at its top (Tune's experiment files, lushpo's run files, the
# default Optuna file): `--overwrite` deletes a folder with one of these and nothing else.
_RUN_MARKERS = ("tuner.pkl", "experiment_state", "lushpo-settings.json", "optuna.db", "grid.json")


def _foreign_run(fs: pafs.FileSystem | None, run_path: str) -> list[str]:
    """The top-level names in `run_path` when none marks a lushpo study ([] when one does)."""
    if fs is None:
        folder = Path(run_path)
        names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    else:
        info = fs.get_file_info(pafs.FileSelector(run_path, allow_not_found=True))
        names = sorted(i.base_name for i in info)
    if any(name.startswith(_RUN_MARKERS) for name in names):
        return []
    return names


def _delete_run(
    fs: pafs.FileSystem | None, run_path: str, storage_url: str, names: Sequence[str]
) -> None:
    if fs is None:
        shutil.rmtree(run_path, ignore_errors=True)
    else:
        fs.delete_dir_contents(run_path, missing_dir_ok=True)
    # The default sqlite file lives in the run dir and went with it; opening its URL now would
    # fail (no directory), so only a storage that still holds the study is asked to delete it.
    for name in names:
        if has_study(storage_url, name):
            optuna.delete_study(study_name=name, storage=connectable(storage_url))


def _copy_objects(fs: pafs.FileSystem, source: str, target: str) -> None:
    """Every object under `source` to the same relative key under `target` (one filesystem)."""
    selector = pafs.FileSelector(source, recursive=True, allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.File:
            fs.copy_file(info.path, f"{target}/{info.path[len(source) + 1 :]}")


class _SetAside:
    """A study `--overwrite` replaces, moved out of the way and kept until the new study's first
    trial starts: a new start that fails before that puts it back as it was.

    A local run folder is renamed to ``.<name>.replaced-<id>`` beside it (its default
    ``optuna.db`` goes with it). S3 has no rename: each object of an S3 run folder is copied
    there by the server (`FileSystem.copy_file`, a CopyObject), then the folder is emptied. A
    study in another Optuna storage is copied to ``<name>.replaced-<id>`` there and deleted under
    its name, which the new study takes."""

    def __init__(self, fs: pafs.FileSystem | None, run_path: str, url: str, names: Sequence[str]):
        self.run_path, self.url, self.tag = run_path, url, f"replaced-{uuid.uuid4().hex[:8]}"
        self.done, self.fs = False, fs
        self.folder: Path | None = None
        self.objects: str | None = None  # the S3 folder the old run's objects were copied to
        if fs is None and Path(run_path).exists():
            self.folder = Path(run_path).with_name(f".{Path(run_path).name}.{self.tag}")
            os.rename(run_path, self.folder)
        elif fs is not None:
            parent, _, name = run_path.rpartition("/")
            self.objects = f"{parent}/.{name}.{self.tag}"
            _copy_objects(fs, run_path, self.objects)
            fs.delete_dir_contents(run_path, missing_dir_ok=True)
        self.studies = [name for name in names if has_study(url, name)]
        for name in self.studies:
            self._move(name, f"{name}.{self.tag}")

    def _move(self, name: str, to: str) -> None:
        storage = connectable(self.url)
        optuna.copy_study(from_study_name=name, from_storage=storage, to_storage=storage,
                          to_study_name=to)  # fmt: skip
        optuna.delete_study(study_name=name, storage=storage)

    def drop(self) -> None:
        """The new study has started: the old one goes."""
        if self.done:
            return
        self.done = True
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        if self.fs is not None and self.objects is not None:
            self.fs.delete_dir(self.objects)
        for name in self.studies:
            optuna.delete_study(study_name=f"{name}.{self.tag}", storage=connectable(self.url))

    def restore(self, fs: pafs.FileSystem | None, names: Sequence[str]) -> None:
        """The new study never started: delete what it made, put the old one back."""
        if self.done:
            return
        self.done = True
        _delete_run(fs, self.run_path, self.url, names)
        if self.folder is not None:
            os.rename(self.folder, self.run_path)
        if self.fs is not None and self.objects is not None:
            _copy_objects(self.fs, self.objects, self.run_path)
            self.fs.delete_dir(self.objects)
        for name in self.studies:
            self._move(f"{name}.{self.tag}", name)


class _DropOnStart(tune.Callback):
    def __init__(self, aside: _SetAside) -> None:
        self.aside = aside

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.aside.drop()
