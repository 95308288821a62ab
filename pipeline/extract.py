"""Batched backbone inference over a manifest's clips, overlapped with decoding → `FeatureSet`.

Why this shape: inference is the expensive part, so the model must never wait for OpenCV.
Decoding, resizing and ``preprocess_input`` run in a small thread pool (OpenCV and NumPy release
the GIL) a bounded number of clips ahead of the model, and frames are packed into fixed-size
batches across clip boundaries, so the model sees the same batches ``model.predict`` would.
Clips come back in manifest order and fill the output in that order, so the result does not
depend on thread timing.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from pipeline.backbones import Backbone, ResolvedWeights, get_backbone, resolve_weights
from pipeline.files import library_versions
from pipeline.frames import SAMPLINGS, BadClipError, read_frames
from pipeline.manifest import Clip, Manifest
from pipeline.store import FeatureSet, FeatureSetSpec

if TYPE_CHECKING:
    import os

    import keras

__all__ = [
    "ON_BAD_CLIP",
    "PREPROCESSING_VERSION",
    "BatchedInference",
    "dataset_meta",
    "extract",
    "extraction_versions",
    "make_spec",
]

PREPROCESSING_VERSION = "1"
"""Bump when decoding, sampling, resizing or preprocessing changes the bytes of any feature:
currently OpenCV decode, `sample_indices` rounding half up, BGR→RGB, INTER_AREA resize to the
backbone's input size, the backbone's own ``preprocess_input``."""

ON_BAD_CLIP = ("fail", "skip")


def make_spec(
    manifest: Manifest, backbone: str, weights_sha256: str, frames: int, sampling: str
) -> FeatureSetSpec:
    """The spec (hence store key) of a feature set, without extracting anything."""
    return FeatureSetSpec(
        backbone=backbone,
        weights_sha256=weights_sha256,
        frames=frames,
        sampling=sampling,
        preprocessing_version=PREPROCESSING_VERSION,
        dataset_digest=manifest.digest(),
    )


def extract(
    manifest: Manifest,
    backbone: str,
    weights: str | os.PathLike[str] | ResolvedWeights,
    frames: int,
    sampling: str = "even",
    batch_size: int = 32,
    on_bad_clip: str = "fail",
    progress: bool = True,
    *,
    cache_dir: Path | str | None = None,
    model: keras.Model | None = None,
    decode_workers: int = 2,
    prefetch: int = 4,
) -> FeatureSet:
    """Features ``float32 [clips, frames, dim]`` of every clip in `manifest`, in manifest order.

    Args:
        manifest: the clips; each `Clip.frames` is trusted as the decoded frame count.
        backbone: registry name (`pipeline.backbones.BACKBONES`).
        weights: ``"imagenet"``, ``"none"``, a path, an ``s3://`` URI, or already resolved.
        frames: frames per clip (N).
        sampling: ``"even"`` or ``"first"``.
        batch_size: frames per inference call.
        on_bad_clip: ``"fail"`` raises the clip's `BadClipError`; ``"skip"`` leaves the clip out
            and records it with its reason in ``meta["skipped"]``.
        progress: show a tqdm bar (clips, frames/s, ETA) on stderr.
        cache_dir: weights cache root (see `pipeline.backbones.resolve_weights`).
        model: an already built backbone for these weights (skips building one).
        decode_workers: decoding threads.
        prefetch: clips decoded ahead of the model (bounds memory).
    """
    entry = get_backbone(backbone)
    _check_args(frames, sampling, batch_size, on_bad_clip, decode_workers, prefetch)
    resolved = (
        weights
        if isinstance(weights, ResolvedWeights)
        else resolve_weights(backbone, weights, cache_dir=cache_dir)
    )
    spec = make_spec(manifest, backbone, resolved.sha256, frames, sampling)
    if not manifest.clips:
        raise ValueError("the manifest holds no clips; nothing to extract")

    skipped: list[dict[str, str]] = []
    candidates: list[Clip] = []
    for clip in manifest.clips:  # cheap check first: fail before any inference work
        if clip.frames < frames:
            error = BadClipError(
                clip.path, f"has {clip.frames} frames, fewer than the {frames} asked for"
            )
            if on_bad_clip == "fail":
                raise error
            skipped.append({"clip": clip.id, "reason": error.reason})
        else:
            candidates.append(clip)

    if model is None:
        model = entry.build(resolved.path)
    started = time.perf_counter()
    run = BatchedInference(entry, model, frames, batch_size, len(candidates))
    kept: list[Clip] = []
    with tqdm(
        total=len(manifest.clips),
        initial=len(skipped),
        desc=f"{backbone} N={frames} {sampling}",
        unit="clip",
        disable=not progress,
    ) as bar:
        for clip, decoded in _decode_ahead(
            candidates, entry, frames, sampling, decode_workers, prefetch
        ):
            if isinstance(decoded, BadClipError):
                if on_bad_clip == "fail":
                    raise decoded
                skipped.append({"clip": clip.id, "reason": decoded.reason})
                _advance(bar, run, started, len(skipped))
                continue
            kept.append(clip)
            run.add(decoded)
            _advance(bar, run, started, len(skipped))
        run.flush()
        _advance(bar, run, started, len(skipped))
    elapsed = time.perf_counter() - started

    if not kept:
        raise BadClipError(
            manifest.clips[0].path.parent, f"none of the {len(manifest.clips)} clips could be read"
        )
    features = run.features()
    meta = dataset_meta(manifest, resolved, backbone, skipped, batch_size, elapsed)
    meta["frames_per_s"] = round(features.shape[0] * frames / elapsed, 3) if elapsed > 0 else None
    return FeatureSet(
        spec=spec,
        features=features,
        clip_ids=tuple(c.id for c in kept),
        labels=np.array([c.label_index for c in kept], dtype=np.int64),
        meta=meta,
    )


def dataset_meta(
    manifest: Manifest,
    weights: ResolvedWeights,
    backbone: str,
    skipped: list[dict[str, str]],
    batch_size: int,
    elapsed: float,
    versions: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A feature set's meta: provenance, the clips left out and why, timing. `versions`: those
    of the process that ran the backbone (default: this one's)."""
    entry = get_backbone(backbone)
    unreadable = [{"clip": s.id, "reason": s.reason} for s in getattr(manifest, "skipped", ())]
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions or extraction_versions(),
        "skipped": unreadable + skipped,  # left out when the manifest was built, then here
        "excluded": [{"clip": s.id, "reason": s.reason} for s in getattr(manifest, "excluded", ())],
        "weights_source": weights.source,
        "input_size": entry.input_size,
        "interpolation": "cv2.INTER_AREA",
        "batch_size": batch_size,
        "elapsed_s": round(elapsed, 3),
    }


# The distributions whose versions can change a feature's bytes (the feature set's meta).
_EXTRACTION_LIBRARIES = ("tensorflow", "keras", "opencv-python-headless", "numpy", "lushpo")


def extraction_versions() -> dict[str, str]:
    """Versions of everything that can change a feature's bytes, for the feature set's meta."""
    return library_versions(_EXTRACTION_LIBRARIES)


def _check_args(
    frames: int, sampling: str, batch_size: int, on_bad_clip: str, workers: int, prefetch: int
) -> None:
    if frames < 1:
        raise ValueError(f"frames must be >= 1, but got {frames} (flag --frames)")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, but got {sampling!r} (--sampling)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, but got {batch_size} (flag --batch-size)")
    if on_bad_clip not in ON_BAD_CLIP:
        raise ValueError(
            f"on_bad_clip must be one of {ON_BAD_CLIP}, but got {on_bad_clip!r} (--on-bad-clip)"
        )
    if workers < 1 or prefetch < 1:
        raise ValueError(f"decode_workers and prefetch must be >= 1, got {workers}, {prefetch}")


def _decode_clip(clip: Clip, entry: Backbone, frames: int, sampling: str) -> np.ndarray:
    rgb = read_frames(clip.path, frames, sampling, entry.size, count=clip.frames)
    return entry.preprocess(rgb)


def _decode_ahead(
    clips: list[Clip], entry: Backbone, frames: int, sampling: str, workers: int, prefetch: int
) -> Iterator[tuple[Clip, np.ndarray | BadClipError]]:
    """Decoded clips in order, at most `prefetch` in flight; a bad clip yields its error."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lushpo-decode")
    window: deque[tuple[Clip, Future[np.ndarray]]] = deque()
    pending = iter(clips)
    try:
        for clip in pending:
            window.append((clip, pool.submit(_decode_clip, clip, entry, frames, sampling)))
            if len(window) >= prefetch:
                break
        while window:
            clip, future = window.popleft()
            next_clip = next(pending, None)
            if next_clip is not None:
                window.append(
                    (next_clip, pool.submit(_decode_clip, next_clip, entry, frames, sampling))
                )
            try:
                yield clip, future.result()
            except BadClipError as error:
                yield clip, error
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class BatchedInference:
    """Packs preprocessed clips into fixed-size batches and writes features in arrival order
    (the in-process `extract` and the cluster's backbone actors share it)."""

    entry: Backbone
    model: Any
    frames: int
    batch_size: int
    capacity: int  # clips that may arrive

    def __post_init__(self) -> None:
        side = self.entry.input_size
        self.clips = 0
        self._batch = np.empty((self.batch_size, side, side, 3), np.float32)
        self._filled = 0
        self._out = np.empty((self.capacity * self.frames, self.entry.dim), np.float32)
        self._written = 0  # rows of _out holding features

    @property
    def frames_done(self) -> int:
        return self._written

    def add(self, decoded: np.ndarray) -> None:
        self.clips += 1
        start = 0
        while start < len(decoded):
            take = min(self.batch_size - self._filled, len(decoded) - start)
            self._batch[self._filled : self._filled + take] = decoded[start : start + take]
            self._filled += take
            start += take
            if self._filled == self.batch_size:
                self._infer(self._batch)

    def flush(self) -> None:
        if self._filled:
            self._infer(self._batch[: self._filled])

    def _infer(self, batch: np.ndarray) -> None:
        result = np.asarray(self.model.predict_on_batch(batch), dtype=np.float32)
        self._out[self._written : self._written + len(batch)] = result.reshape(len(batch), -1)
        self._written += len(batch)
        self._filled = 0

    def features(self) -> np.ndarray:
        rows = self.clips * self.frames
        assert self._written == rows, (self._written, rows)
        out = self._out if rows == len(self._out) else self._out[:rows].copy()
        return out.reshape(self.clips, self.frames, self.entry.dim)


def _advance(bar: tqdm, run: BatchedInference, started: float, skipped: int) -> None:
    """Clips whose every frame has been through the model, plus skipped ones; and frames/s."""
    done = run.frames_done // run.frames + skipped
    if done > bar.n:
        bar.update(done - bar.n)
    elapsed = time.perf_counter() - started
    if elapsed > 0 and run.frames_done:
        bar.set_postfix_str(f"{run.frames_done / elapsed:.1f} frames/s", refresh=False)
