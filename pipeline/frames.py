"""OpenCV decoding of LUS clips: frame counting, `even`/`first` sampling, BGR→RGB, resize.

Why OpenCV and sequential reads: container metadata (frame count, seeking) is unreliable for the
GIF and MPEG-1 clips of the dataset, so every count here is the number of frames OpenCV actually
decodes, and frames are reached by grabbing forward, never by seeking. The backbone's own
`preprocess_input` is applied later by `pipeline.backbones.Backbone.preprocess`, so frames leave
this module as plain RGB `uint8`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "INTERPOLATION",
    "SAMPLINGS",
    "VIDEO_SUFFIXES",
    "BadClipError",
    "count_frames",
    "read_frames",
    "resize_frames",
    "sample_indices",
]

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".gif", ".mov", ".mpeg", ".mpg"})
"""File suffixes read as clips (compared case-insensitively, so .MP4 counts)."""

SAMPLINGS: tuple[str, ...] = ("even", "first")
"""Samplers: `even` spreads N frames over the whole clip (default); `first` takes the first N."""

INTERPOLATION = cv2.INTER_AREA
"""Resize filter: area averaging, the alias-free choice for the downscaling that dominates here
(clips are 300-1080 px, backbones take 224-331 px). Part of the preprocessing version."""


class BadClipError(ValueError):
    """A clip that cannot be opened, has no frames, or has fewer frames than asked for."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def count_frames(path: Path | str) -> int:
    """Frames OpenCV actually decodes (container metadata is unreliable for GIF and MPEG)."""
    capture = _open(path)
    try:
        count = 0
        while capture.grab():
            count += 1
    finally:
        capture.release()
    if count == 0:
        raise BadClipError(path, "no frames could be decoded")
    return count


def sample_indices(count: int, n: int, sampling: str = "even") -> np.ndarray:
    """Indices (int64, strictly increasing) of the `n` frames to take from a clip of `count` frames.

    `even`: ``floor(linspace(0, count - 1, n) + 0.5)`` — n points evenly spaced from the first to
    the last frame inclusive, rounded half up (``n == 1`` takes frame 0). Because the spacing is at
    least one frame whenever ``count >= n``, the indices never repeat.
    `first`: ``0, 1, ..., n - 1``.

    Raises:
        ValueError: unknown sampling, ``n < 1``, or ``count < n``.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, but got {sampling!r}")
    if n < 1:
        raise ValueError(f"the number of frames must be >= 1, but got n={n}")
    if count < n:
        raise ValueError(f"cannot take {n} frames from a clip of {count} frames")
    if sampling == "first":
        return np.arange(n, dtype=np.int64)
    return np.floor(np.linspace(0, count - 1, n) + 0.5).astype(np.int64)


def read_frames(
    path: Path | str,
    n: int,
    sampling: str = "even",
    size: tuple[int, int] | None = None,
    *,
    count: int | None = None,
) -> np.ndarray:
    """Decode `n` frames of one clip as RGB `uint8` ``[n, h, w, 3]``.

    Args:
        path: a clip file in any format OpenCV's FFmpeg backend reads (mp4, avi, gif, mov, mpeg).
        n: how many frames to return.
        sampling: ``"even"`` or ``"first"`` (see `sample_indices`).
        size: ``(height, width)`` to resize every frame to with `INTERPOLATION`; ``None`` keeps
            the decoded size.
        count: the clip's frame count when already known (e.g. from the manifest), which saves
            the counting pass that ``even`` sampling otherwise needs. A wrong count is caught:
            running out of frames early raises `BadClipError`.

    Raises:
        BadClipError: the file cannot be opened, decodes to 0 frames, or has fewer than `n`.
        ValueError: bad `sampling`, `n` or `size` (a caller error, not the clip's fault).
    """
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"size must be (height, width) with both >= 1, but got {size!r}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, but got {sampling!r}")
    if n < 1:
        raise ValueError(f"the number of frames must be >= 1, but got n={n}")
    if sampling == "even" and count is None:
        count = count_frames(path)
    if count is not None:
        if count == 0:
            raise BadClipError(path, "no frames could be decoded")
        if count < n:
            raise BadClipError(path, f"has {count} frames, fewer than the {n} asked for")
    wanted = sample_indices(count if count is not None else n, n, sampling)
    return _decode(path, wanted, size, count)


def _open(path: Path | str) -> cv2.VideoCapture:
    if not Path(path).is_file():
        raise BadClipError(path, "no such file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise BadClipError(path, "OpenCV cannot open this file")
    return capture


def _decode(
    path: Path | str, wanted: np.ndarray, size: tuple[int, int] | None, count: int | None
) -> np.ndarray:
    """Grab forward through the clip and decode only the frames at `wanted` (sorted)."""
    capture = _open(path)
    frames: list[np.ndarray] = []
    try:
        position = 0  # index of the next frame `grab` returns
        for index in wanted.tolist():
            while position <= index:
                if not capture.grab():
                    raise BadClipError(path, _ran_out(position, len(wanted), count))
                position += 1
            ok, bgr = capture.retrieve()
            if not ok or bgr is None:
                raise BadClipError(path, f"frame {index} could not be decoded")
            frames.append(_to_rgb(bgr, size))
    finally:
        capture.release()
    return np.stack(frames)


def _ran_out(decoded: int, n: int, expected: int | None) -> str:
    if decoded == 0:
        return "no frames could be decoded"
    if decoded < n:
        return f"has {decoded} frames, fewer than the {n} asked for"
    return f"decoded only {decoded} frames, but its frame count was given as {expected}"


def _to_rgb(bgr: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if bgr.ndim == 2:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    return resize_frames(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size)


def resize_frames(rgb: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Frames ``[..., h, w, 3]`` (or one frame) resized to ``(height, width)`` with
    `INTERPOLATION`, exactly as `read_frames` does; decoding once at the native size and resizing
    per backbone afterwards gives the same bytes as decoding at each size."""
    if rgb.ndim == 4:
        return np.stack([resize_frames(frame, size) for frame in rgb]) if len(rgb) else rgb
    if size is not None and rgb.shape[:2] != tuple(size):
        height, width = size
        rgb = cv2.resize(rgb, (width, height), interpolation=INTERPOLATION)
    return np.ascontiguousarray(rgb, dtype=np.uint8)
