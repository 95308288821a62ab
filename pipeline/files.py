"""File helpers every stage uses, each written once: atomic writes (of bytes, text or JSON), values
made strict JSON, sha256 of a file, installed library versions, a JSON or YAML file read with
one-line errors, a local location made absolute, the pyarrow S3 filesystem for
an endpoint, and the per-node path template.

Atomic writes go to a temporary name in the target's folder, are flushed and fsync'd, then
renamed over the target: a reader (or a restart after a power cut) sees the old file or the new
one, never a part, and a failed write leaves no temporary file behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import tempfile
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import IO, Any, overload
from urllib.parse import urlsplit

import numpy as np

__all__ = [
    "NODE_ID",
    "absolute",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "few",
    "jsonable",
    "library_versions",
    "on_node",
    "read_document",
    "s3_filesystem",
    "sha256_file",
]

NODE_ID = "{node_id}"
"""Placeholder in a cache path that each Ray node replaces with its own id, so nodes sharing a
disk (or a test's loopback cluster) keep separate caches."""


def _umask() -> int:
    """The process's umask, read without setting it (os.umask can only set and return)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


_UMASK = _umask()


def atomic_write(path: Path | str, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(handle)`` on a temporary file beside `path`, fsync it, rename it to `path`."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.fchmod(handle, 0o666 & ~_UMASK)  # mkstemp's 0600 would make these files private
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


def atomic_write_json(
    path: Path | str, data: Any, *, sort_keys: bool = True, default: Callable | None = None
) -> None:
    """`data` as indented UTF-8 JSON with a final newline, written atomically (`default`: as in
    `json.dumps`, for values JSON has no type for)."""
    text = json.dumps(data, indent=1, sort_keys=sort_keys, ensure_ascii=False, default=default)
    atomic_write_text(path, text + "\n")


def jsonable(value: Any) -> Any:
    """`value` as strict JSON holds it: NaN and infinities become null (a class no fold
    supports), tuples lists, mapping keys strings, numpy scalars Python numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def library_versions(distributions: Iterable[str]) -> dict[str, str]:
    """Python's version and each distribution's installed version ("not installed" if absent),
    recorded beside what they produced."""
    versions = {"python": platform.python_version()}
    for name in distributions:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def few(names: Iterable[str], shown: int = 5) -> str:
    """Some of `names`, sorted, for a one-line message: ``a, b, c and 4 more``."""
    names = sorted(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


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
        if path.suffix == ".json":
            return json.loads(text, object_pairs_hook=_unique_json_keys)
        return yaml.load(text, Loader=_unique_keys_loader())  # a SafeLoader subclass
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file{fix}") from None
    except OSError as exc:
        problem = f"cannot read it ({exc.strerror})"
    except json.JSONDecodeError as exc:
        problem = f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
    except _DuplicateKeyError as exc:
        problem = str(exc)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = f"not valid YAML: {getattr(exc, 'problem', None) or exc}{where}"
    raise ValueError(f"{path}: {problem}{fix}".replace("\n", " ")) from None


class _DuplicateKeyError(ValueError):
    """A mapping names one key twice: YAML and JSON parsers keep the last one silently."""


def _unique_json_keys(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKeyError(f"key {key!r} given twice in one mapping")
        seen[key] = value
    return seen


def _unique_keys_loader() -> type:
    """PyYAML's SafeLoader, refusing a key given twice in one mapping (a second `budget:`
    section would otherwise replace the first without a word), with YAML 1.2's booleans: only
    true and false. YAML 1.1's on/off/yes/no would turn the key ``objective.on`` into True."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict:
            seen = set()
            for key_node, _value in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen and key_node.tag != "tag:yaml.org,2002:merge":
                    mark = key_node.start_mark
                    raise _DuplicateKeyError(
                        f"key {key!r} given twice in one mapping (again at line "
                        f"{mark.line + 1}, column {mark.column + 1})"
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    bool_tag = "tag:yaml.org,2002:bool"
    UniqueKeyLoader.yaml_implicit_resolvers = {  # new lists: SafeLoader's stay as they are
        first: [(tag, regexp) for tag, regexp in resolvers if tag != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    UniqueKeyLoader.add_implicit_resolver(
        bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    return UniqueKeyLoader


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


@overload
def on_node(template: str, node_id: str) -> str: ...
@overload
def on_node(template: None, node_id: str) -> None: ...
def on_node(template: str | None, node_id: str) -> str | None:
    """`template` with `NODE_ID` replaced by `node_id` (None stays None)."""
    return None if template is None else template.replace(NODE_ID, node_id)
