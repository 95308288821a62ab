"""Tiny synthetic clips in every format of the dataset, whose pixels say which frame they are.

Frame ``i`` is two flat grey halves: the top encodes ``i // 8`` and the bottom ``i % 8`` in steps
of 32 grey levels, so lossy codecs (mp4v, MJPG, MPEG-1, GIF palettes) and resizing still decode
to the right index (`frame_index`) for up to 64 frames. Videos go through cv2.VideoWriter, GIFs
through Pillow (installed with matplotlib).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "FORMATS",
    "MAX_FRAMES",
    "frame_index",
    "index_frame",
    "write_clip",
    "write_empty_clip",
    "write_garbage",
    "write_solid_clip",
]

MAX_FRAMES = 64
_LEVEL = 32
_OFFSET = 16

# suffix → (fourcc, fps); MPEG-1 only accepts standard frame rates such as 25.
FORMATS: dict[str, tuple[str, int]] = {
    ".mp4": ("mp4v", 10),
    ".MP4": ("mp4v", 10),
    ".mov": ("mp4v", 10),
    ".avi": ("MJPG", 10),
    ".mpeg": ("PIM1", 25),
    ".gif": ("", 10),
}


def index_frame(i: int, height: int = 48, width: int = 64) -> np.ndarray:
    """RGB ``uint8 [height, width, 3]`` frame encoding index `i` (0 <= i < MAX_FRAMES)."""
    if not 0 <= i < MAX_FRAMES:
        raise ValueError(f"frame index must be in [0, {MAX_FRAMES}), got {i}")
    frame = np.empty((height, width, 3), np.uint8)
    frame[: height // 2] = _OFFSET + _LEVEL * (i // 8)
    frame[height // 2 :] = _OFFSET + _LEVEL * (i % 8)
    return frame


def frame_index(frame: np.ndarray) -> int:
    """Inverse of `index_frame` for a decoded (possibly resized, lossy) frame ``[h, w, 3]``."""
    h = frame.shape[0]
    top = frame[h // 8 : 3 * h // 8].mean()
    bottom = frame[5 * h // 8 : 7 * h // 8].mean()
    high, low = (round((v - _OFFSET) / _LEVEL) for v in (top, bottom))
    return int(high) * 8 + int(low)


def write_clip(
    path: Path, frames: int, height: int = 48, width: int = 64, *, first_index: int = 0
) -> Path:
    """Write `frames` index-encoded frames to `path`; the suffix picks the container/codec.

    Frame ``i`` encodes ``first_index + i``, so clips can differ in content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [index_frame(first_index + i, height, width) for i in range(frames)]
    if path.suffix.lower() == ".gif":
        pil = [Image.fromarray(image) for image in images]
        pil[0].save(path, save_all=True, append_images=pil[1:], duration=100, loop=0)
        return path
    fourcc, fps = FORMATS.get(path.suffix, FORMATS.get(path.suffix.lower(), ("mp4v", 10)))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write {path} with fourcc {fourcc}")
    try:
        for image in images:
            writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path


def write_solid_clip(path: Path, frames: int, rgb: tuple[int, int, int]) -> Path:
    """An MJPG .avi of `frames` frames of one RGB colour (to check channel order)."""
    path = Path(path)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    try:
        for _ in range(frames):
            writer.write(np.full((48, 64, 3), rgb[::-1], np.uint8))  # OpenCV writes BGR
    finally:
        writer.release()
    return path


def write_garbage(path: Path) -> Path:
    """A file with a video suffix that no decoder can open."""
    path = Path(path)
    path.write_bytes(b"this is not a video\n" * 64)
    return path


def write_empty_clip(path: Path) -> Path:
    """A GIF header with no image data: OpenCV may open it, but no frame decodes."""
    path = Path(path)
    path.write_bytes(b"GIF89a" + b"\x40\x00\x30\x00\x00\x00\x00" + b";")
    return path
