"""lushpo's own JSON records in a study's run dir, beside Ray Tune's: local or s3://; and the one
atomic text writer every local record and report uses.

``lushpo-settings.json`` (what shaped the trials, `hpo.study`), ``nested.json`` (`hpo.nested`)
and ``rescore.json`` (`hpo.rescore`) are written and read here only: a local write is a temp
name + rename, an s3:// write one PUT, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "RESCORE_FILE",
    "atomic_write_text",
    "read_run_file",
    "remove_run_file",
    "write_run_file",
]

RESCORE_FILE = "rescore.json"
"""`hpo.rescore`'s record; `hpo.export` exports its winner."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` under a temporary name, flushed to disk, then rename: readers see
    the old file or the new one, never a part, even after a power cut."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _s3(endpoint_url: str | None) -> Any:
    import pyarrow.fs as pafs

    kwargs: dict[str, Any] = {}
    if endpoint_url:
        endpoint = urlsplit(endpoint_url)
        kwargs = {"endpoint_override": endpoint.netloc, "scheme": endpoint.scheme}
    return pafs.S3FileSystem(**kwargs)


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
    with _s3(endpoint_url).open_output_stream(_key(run, name)) as out:
        out.write(text.encode("utf-8"))
    return f"s3://{_key(run, name)}"


def read_run_file(run: str, name: str, endpoint_url: str | None = None) -> Any | None:
    """``<run>/<name>`` parsed, or None when the run has no such file."""
    if not run.startswith("s3://"):
        path = Path(run) / name
        return json.loads(path.read_text()) if path.is_file() else None
    import pyarrow.fs as pafs

    fs = _s3(endpoint_url)
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

    fs = _s3(endpoint_url)
    if fs.get_file_info(_key(run, name)).type != pafs.FileType.NotFound:
        fs.delete_file(_key(run, name))
