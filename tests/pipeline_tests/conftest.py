"""Fixtures for pipeline tests: a data dir of tiny synthetic clips, one per format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.clips import write_clip


@dataclass(frozen=True)
class SyntheticClips:
    """A data dir laid out like ../shared/data (``pocus/convex/<clips>``), no paper files."""

    data_dir: Path
    frames: int  # frames in every clip
    paths: dict[str, Path]  # suffix (".mp4", ".MP4", ...) → clip
    first_index: dict[str, int]  # suffix → index encoded by the clip's frame 0 (clips differ)

    @property
    def clips_dir(self) -> Path:
        return self.data_dir / "pocus" / "convex"


# One clip per format; name prefixes give the labels (Cov / Pneu / Reg), as in the dataset.
_NAMES = {
    ".mp4": "Cov-synthetic-a.mp4",
    ".MP4": "Pneu-synthetic-b.MP4",
    ".avi": "Reg-synthetic-c.avi",
    ".mov": "Cov-synthetic-d.mov",
    ".mpeg": "Pneu-synthetic-e.mpeg",
    ".gif": "Reg-synthetic-f.gif",
}


@pytest.fixture(scope="session")
def synthetic_clips(tmp_path_factory) -> SyntheticClips:
    """Six 24-frame 48×64 clips (mp4, MP4, avi, mov, mpeg, gif); frame i of the k-th clip
    encodes 4k + i (see `tests.support.clips.frame_index`)."""
    data_dir = tmp_path_factory.mktemp("synthetic-data")
    clips_dir = data_dir / "pocus" / "convex"
    frames = 24
    first = {suffix: 4 * k for k, suffix in enumerate(_NAMES)}
    paths = {
        suffix: write_clip(clips_dir / name, frames, first_index=first[suffix])
        for suffix, name in _NAMES.items()
    }
    return SyntheticClips(data_dir, frames, paths, first)
