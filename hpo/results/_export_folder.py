"""The files an export folder owns, and how a new export replaces an old one without touching
anything else.

An export is built in a staging folder beside its target (``.<name>.export-*``), so a failed
export changes nothing in the target. Only a complete one is moved in, file by file, and the
files it owns are listed in ``.lushpo-files.json`` (export's and then evaluate's). ``--overwrite``
removes only listed files: a user's own file in the folder is never deleted, and a non-empty
folder with no list is refused, naming what an export would have touched.

A crash while files are moved in leaves a list naming the old and the new files, so the next
``--overwrite`` still knows everything lushpo wrote there.

`publish` copies a finished export folder to an ``s3://`` prefix by the same rules: the prefix's
own ``.lushpo-files.json`` names the objects a replacement may delete, an unlisted prefix that
holds objects is refused, and the list is written last.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from hpo.search import locked
from pipeline.files import atomic_write_text, few

__all__ = [
    "MANIFEST",
    "OwnershipError",
    "add_files",
    "owned_files",
    "publish",
    "replacing",
    "swap_in",
    "target",
    "writable",
]

MANIFEST = ".lushpo-files.json"
_FORMAT = "lushpo-export-files/1"


class OwnershipError(ValueError):
    """The target folder holds files lushpo did not write, or cannot be written."""


def owned_files(folder: Path) -> set[str] | None:
    """The folder's files (relative POSIX paths) its list says lushpo wrote; None without one."""
    path = folder / MANIFEST
    return _parse_list(path.read_text(), str(path)) if path.is_file() else None


def _parse_list(text: str | bytes, where: str) -> set[str]:
    try:
        listed = json.loads(text)["files"]
    except (ValueError, KeyError, TypeError) as exc:
        message = f"{where}: not a list of lushpo's files ({exc}); move it away"
        raise OwnershipError(message) from exc
    return {str(name) for name in listed}


def _list_text(names: Iterable[str]) -> str:
    return json.dumps({"format": _FORMAT, "files": sorted(set(names))}, indent=1)


def _present(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if not p.is_dir() and p.name != MANIFEST
    )


def target(out: Path, overwrite: bool) -> set[str]:
    """Check `out` before any work and return the files an earlier export owns there.

    Raises:
        OwnershipError: `out` is a file, is not empty and `overwrite` is off, or holds files with
            no list of lushpo's own.
        OSError: `out` or its parent (where the staging folder goes) cannot be written."""
    if out.exists() and not out.is_dir():
        raise OwnershipError(f"{out} is a file; --out takes a folder")
    present = _present(out)
    owned = owned_files(out) or set()
    if present and not overwrite:
        raise OwnershipError(f"{out} is not empty; pass --overwrite to replace the export in it")
    if present and not (out / MANIFEST).is_file():
        raise OwnershipError(
            f"{out} holds files lushpo did not write ({few(present)}); --overwrite replaces "
            f"only an export's own files, listed in {MANIFEST}: choose an empty --out"
        )
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    writable(parent)  # the staging folder
    if out.exists():
        writable(out)
    return owned


def writable(folder: Path) -> None:
    """Raise OSError (PermissionError, …) naming `folder` when no file can be made in it."""
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(folder)) from None


@contextlib.contextmanager
def replacing(
    out: Path, overwrite: bool, *, last: str, log: Callable[[str], None] = print
) -> Iterator[Path]:
    """Hold `out`'s lock, check it (`target`), and yield a fresh staging folder beside it; when
    the body ends without error, move the export it built in ``<stage>/export`` into `out`
    (`swap_in`). The staging folder is removed whatever happened.

    Raises:
        RunLockedError: another export writes `out`.
        OwnershipError: see `target` and `swap_in`."""
    with locked(str(out), "export", log=log):
        old = target(out, overwrite)
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export-"))
        try:
            yield stage
            swap_in(stage / "export", out, old, last)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _write_list(folder: Path, names: Iterable[str]) -> None:
    atomic_write_text(folder / MANIFEST, _list_text(names))


def swap_in(built: Path, out: Path, old: set[str], last: str) -> None:
    """Move the complete export in `built` into `out`, `last` (the model card) after the rest;
    then remove the old export's files the new one does not have.

    Raises:
        OwnershipError: a new file would replace a file of the user's (none is moved then)."""
    new = _present(built)
    clash = [n for n in new if n not in old and (out / n).exists()]
    if clash:
        raise OwnershipError(
            f"{out} holds {few(clash)}, which lushpo did not write and an export would "
            "replace; move them or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / last).unlink(missing_ok=True)  # an export being moved in has no card
    _write_list(out, old | set(new))
    for name in sorted(new, key=lambda n: n == last):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(built / name, out / name)
    for name in old - set(new):
        (out / name).unlink(missing_ok=True)
        _prune_empty((out / name).parent, out)
    _write_list(out, new)


def _prune_empty(folder: Path, root: Path) -> None:
    while folder != root and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def add_files(folder: Path, names: Iterable[str]) -> None:
    """Add files lushpo wrote into an existing export folder (evaluate's report) to its list."""
    _write_list(folder, (owned_files(folder) or set()) | set(names))


def publish(folder: Path, uri: str, endpoint_url: str | None = None) -> list[str]:
    """Copy the export in `folder` (its listed files) to the ``s3://`` prefix `uri`, replacing
    the export published there before; returns the names copied.

    As `swap_in` does locally: a list naming the old and the new files goes up first, then the
    new files, then the old export's objects the new one lacks are deleted, and the new list goes
    up last; a publish that dies midway leaves a list naming every object lushpo put there.

    Raises:
        OwnershipError: `folder` holds no export, or the prefix holds objects no list names."""
    import boto3  # deferred: local exports never need it

    names = owned_files(folder)
    if not names:
        raise OwnershipError(f"{folder} holds no export (no {MANIFEST})")
    bucket, _, prefix = uri.removeprefix("s3://").rstrip("/").partition("/")
    if not bucket or not prefix:
        raise OwnershipError(f"{uri}: publish to a prefix, s3://bucket/prefix, not a whole bucket")
    client = boto3.client("s3", endpoint_url=endpoint_url)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
    present = sorted(o["Key"][len(prefix) + 1 :] for p in pages for o in p.get("Contents", []))
    old: set[str] = set()
    if MANIFEST in present:
        body = client.get_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST}")["Body"].read()
        old = _parse_list(body, f"{uri}/{MANIFEST}")
    unlisted = [n for n in present if n != MANIFEST and n not in old]
    if unlisted:
        raise OwnershipError(
            f"{uri} holds objects lushpo did not write ({few(unlisted)}); choose another prefix"
        )

    def put_list(listed: set[str]) -> None:
        client.put_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST}", Body=_list_text(listed))

    put_list(old | names)
    for name in sorted(names):
        client.upload_file(str(folder / name), bucket, f"{prefix}/{name}")
    for name in sorted(old - names):
        client.delete_object(Bucket=bucket, Key=f"{prefix}/{name}")
    put_list(names)
    return sorted(names)
