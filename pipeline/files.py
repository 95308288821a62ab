"""File helpers every stage uses, each written once: atomic writes, sha256 of a file, a JSON or
YAML file read with one-line errors, a local location made absolute, the pyarrow S3 filesystem for
an endpoint, and the per-node path template.

Atomic writes go to a temporary name in the target's folder, are flushed and fsync'd, then
renamed over the target: a reader (or a restart after a power cut) sees the old file or the new
one, never a part, and a failed write leaves no temporary file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

__all__ = [
    "NODE_ID",
    "absolute",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "on_node",
    "read_document",
    "s3_filesystem",
    "sha256_file",
]

NODE_ID = "{node_id}"
"""Placeholder in a cache path that each Ray node replaces with its own id, so nodes sharing a
disk (or a test's loopback cluster) keep separate caches."""


def atomic_write(path: Path | str, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(handle)`` on a temporary file beside `path`, fsync it, rename it to `path`."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    atomic_write(path, lambda out: out.write(data))


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write(path, lambda out: out.write(text.encode("utf-8")))


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_document(path: Path | str, fix: str = "") -> Any:
    """A JSON file (by its .json suffix) or else a YAML file, parsed. A file that cannot be read
    or parsed raises ValueError in one line: the path, the problem and where, then `fix`; never
    the parser's own multi-line text; a missing file raises FileNotFoundError, in one line too."""
    import yaml

    path, fix = Path(path), f"; {fix}" if fix else ""
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file{fix}") from None
    except OSError as exc:
        problem = f"cannot read it ({exc.strerror})"
    except json.JSONDecodeError as exc:
        problem = f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = f"not valid YAML: {getattr(exc, 'problem', None) or exc}{where}"
    raise ValueError(f"{path}: {problem}{fix}".replace("\n", " ")) from None


def absolute(location: str) -> str:
    """A local path or file:// URI as an absolute path (so Ray workers and later verbs, run from
    elsewhere, find it); other URIs such as s3://bucket/prefix pass through."""
    if "://" in location and not location.startswith("file://"):
        return location
    return str(Path(location.removeprefix("file://")).expanduser().resolve())


def s3_filesystem(endpoint_url: str | None = None) -> Any:
    """pyarrow's S3 filesystem, pointed at `endpoint_url` (MinIO, moto) when given; credentials
    and region come from the standard AWS variables and files."""
    import pyarrow.fs as pafs

    if not endpoint_url:
        return pafs.S3FileSystem()
    endpoint = urlsplit(endpoint_url)
    return pafs.S3FileSystem(endpoint_override=endpoint.netloc, scheme=endpoint.scheme)


def on_node(template: str | None, node_id: str) -> str | None:
    """`template` with `NODE_ID` replaced by `node_id` (None stays None)."""
    return None if template is None else template.replace(NODE_ID, node_id)
