"""A folder nobody can write to for the length of a `with` block, even when the tests run as root
(as CI's do, where permission bits are not checked): the immutable attribute (`chattr +i`) as
root, `chmod a-w` otherwise."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["read_only"]


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(mode)
        return
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"chattr +i {folder} failed in CI: {done.stderr.strip()}")
        pytest.skip(f"cannot make {folder} read-only as root here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
