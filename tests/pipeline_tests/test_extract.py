"""pipeline.extract on the synthetic clips with a random-init MobileNetV2 (weights="none").

Random-init features are tiny (1e-17 to 1e-10) and their smallest components are mostly rounding,
so features computed in different batches are compared per frame by relative vector error.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pipeline.backbones import get_backbone
from pipeline.extract import PREPROCESSING_VERSION, extract, make_spec
from pipeline.frames import BadClipError, read_frames
from pipeline.manifest import LABELS, build_manifest
from tests.support.clips import write_clip, write_garbage

BACKBONE = "mobilenetv2"
N = 3


@pytest.fixture(scope="module")
def model():
    return get_backbone(BACKBONE).build(None)


@pytest.fixture(scope="module")
def manifest(synthetic_clips):
    return build_manifest(synthetic_clips.data_dir)


def close(a: np.ndarray, b: np.ndarray, tol: float = 1e-4) -> bool:
    """Every frame's feature vector in `a` is within relative error `tol` of `b`'s."""
    error = np.linalg.norm(a - b, axis=-1) / np.maximum(np.linalg.norm(b, axis=-1), 1e-30)
    return bool(np.all(error < tol))


def run(manifest, model, **kwargs):
    options = {"frames": N, "sampling": "even", "batch_size": 4, "progress": False}
    return extract(manifest, BACKBONE, "none", model=model, **(options | kwargs))


def test_output_shape_order_labels_and_spec(manifest, model):
    fs = run(manifest, model)
    assert fs.features.shape == (6, N, 1280) and fs.features.dtype == np.float32
    assert fs.clip_ids == manifest.ids
    assert [LABELS[i] for i in fs.labels] == [c.label for c in manifest.clips]
    assert fs.spec == make_spec(manifest, BACKBONE, "none", N, "even")
    assert fs.spec.preprocessing_version == PREPROCESSING_VERSION
    assert fs.spec.dataset_digest == manifest.digest()
    assert set(fs.meta["versions"]) >= {"tensorflow", "keras", "opencv-python-headless", "numpy"}
    assert fs.meta["skipped"] == [] and fs.meta["weights_source"] == "none"
    assert np.isfinite(fs.features).all() and fs.features.std() > 0


def test_same_output_twice(manifest, model):
    first, second = run(manifest, model), run(manifest, model)
    np.testing.assert_array_equal(first.features, second.features)


def test_each_row_is_its_own_clips_frames(manifest, model):
    """Batches straddle clips (4 frames per batch, 3 per clip): row k must still be clip k."""
    fs = run(manifest, model, batch_size=4)
    for a in range(len(manifest)):  # the clips differ, so a mix-up would show
        for b in range(a):
            assert not close(fs.features[a], fs.features[b], tol=0.05)
    entry = get_backbone(BACKBONE)
    for row, clip in enumerate(manifest.clips):
        frames = entry.preprocess(read_frames(clip.path, N, "even", entry.size))
        alone = model.predict_on_batch(frames)
        assert close(fs.features[row], alone)


def test_first_sampling_differs_from_even(manifest, model):
    even, first = run(manifest, model), run(manifest, model, sampling="first")
    assert close(even.features[:, 0], first.features[:, 0])  # frame 0 both times
    assert not close(even.features[:, -1], first.features[:, -1], tol=0.05)  # 23 vs 2


def test_progress_bar_reports_clips_and_frame_rate(manifest, model, capsys):
    run(manifest, model, progress=True)
    err = capsys.readouterr().err
    assert "6/6" in err and "clip" in err and "frames/s" in err


@pytest.fixture
def flawed(synthetic_clips, tmp_path):
    """A copy of the synthetic data dir plus a 2-frame clip; returns (data_dir, manifest)."""
    data_dir = tmp_path / "data"
    shutil.copytree(synthetic_clips.data_dir, data_dir)
    write_clip(data_dir / "pocus" / "convex" / "Reg-synthetic-short.avi", 2)
    return data_dir, build_manifest(data_dir)


def test_short_clip_fails_naming_the_file(flawed, model):
    _, manifest = flawed
    with pytest.raises(BadClipError, match=r"Reg-synthetic-short\.avi: has 2 frames, fewer than"):
        run(manifest, model)


def test_short_clip_is_skipped_and_recorded(flawed, model):
    _, manifest = flawed
    fs = run(manifest, model, on_bad_clip="skip")
    assert len(manifest) == 7 and fs.features.shape == (6, N, 1280)
    assert "Reg-synthetic-short.avi" not in fs.clip_ids
    assert fs.meta["skipped"] == [
        {"clip": "Reg-synthetic-short.avi", "reason": "has 2 frames, fewer than the 3 asked for"}
    ]


def test_clip_broken_after_the_manifest_fails_or_is_skipped(flawed, model):
    data_dir, manifest = flawed
    broken = data_dir / "pocus" / "convex" / "Cov-synthetic-d.mov"
    write_garbage(broken)  # decoding happens in the background threads
    with pytest.raises(BadClipError, match=r"Cov-synthetic-d\.mov: OpenCV cannot open"):
        run(manifest, model, frames=2)
    fs = run(manifest, model, frames=2, on_bad_clip="skip")
    assert [s["clip"] for s in fs.meta["skipped"]] == ["Cov-synthetic-d.mov"]
    assert fs.clip_ids == tuple(i for i in manifest.ids if i != "Cov-synthetic-d.mov")
    reference = run(manifest, model, frames=2, on_bad_clip="skip", batch_size=1)
    assert close(fs.features, reference.features)


def test_no_readable_clip_is_an_error(flawed, model):
    _, manifest = flawed
    with pytest.raises(BadClipError, match="none of the 7 clips could be read"):
        run(manifest, model, frames=50, on_bad_clip="skip")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sampling": "middle"}, "--sampling"),
        ({"on_bad_clip": "ignore"}, "--on-bad-clip"),
        ({"batch_size": 0}, "--batch-size"),
        ({"frames": 0}, "--frames"),
    ],
)
def test_bad_arguments_name_the_flag(manifest, model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run(manifest, model, **kwargs)
