"""pipeline.frames: every container format, both samplers, resize, channel order, bad clips."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.frames import BadClipError, count_frames, read_frames, sample_indices
from tests.support.clips import (
    FORMATS,
    frame_index,
    write_clip,
    write_empty_clip,
    write_garbage,
    write_solid_clip,
)

# --- sample_indices (pure) ---------------------------------------------------------------------


def test_even_spreads_from_first_to_last_frame_rounding_half_up():
    # linspace(0, 29, 7) = 0, 4.83, 9.67, 14.5, 19.33, 24.17, 29: 14.5 rounds up to 15.
    assert sample_indices(30, 7, "even").tolist() == [0, 5, 10, 15, 19, 24, 29]
    assert sample_indices(41, 20, "even").tolist()[:3] == [0, 2, 4]
    assert sample_indices(41, 20, "even")[-1] == 40


@pytest.mark.parametrize("count", [1, 5, 20, 21, 37, 300])
@pytest.mark.parametrize("n", [1, 5, 10, 15, 20])
def test_even_indices_are_distinct_increasing_and_in_range(count, n):
    if count < n:
        with pytest.raises(ValueError, match=f"cannot take {n} frames from a clip of {count}"):
            sample_indices(count, n, "even")
        return
    idx = sample_indices(count, n, "even")
    assert len(idx) == n and idx[0] == 0
    assert idx[-1] == (count - 1 if n > 1 else 0)
    assert np.all(np.diff(idx) >= 1)


def test_even_with_count_equal_to_n_takes_every_frame():
    assert sample_indices(20, 20, "even").tolist() == list(range(20))


def test_first_takes_the_first_n():
    assert sample_indices(300, 5, "first").tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("args", "message"),
    [((10, 3, "middle"), "sampling must be one of even, first"), ((10, 0, "even"), "n=0")],
)
def test_bad_sampler_arguments_name_the_value(args, message):
    with pytest.raises(ValueError, match=message):
        sample_indices(*args)


# --- read_frames on every format ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_every_format_decodes_all_frames(synthetic_clips, suffix):
    path = synthetic_clips.paths[suffix]
    assert count_frames(path) == synthetic_clips.frames


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_even_sampling_picks_the_expected_frames(synthetic_clips, suffix):
    path, start = synthetic_clips.paths[suffix], synthetic_clips.first_index[suffix]
    frames = read_frames(path, 5, "even", (32, 40))
    assert frames.shape == (5, 32, 40, 3) and frames.dtype == np.uint8
    picked = [frame_index(f) - start for f in frames]
    expected = sample_indices(synthetic_clips.frames, 5, "even").tolist()
    assert picked == expected == [0, 6, 12, 17, 23]


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_first_sampling_picks_the_first_frames(synthetic_clips, suffix):
    frames = read_frames(synthetic_clips.paths[suffix], 4, "first", (24, 24))
    start = synthetic_clips.first_index[suffix]
    assert [frame_index(f) - start for f in frames] == [0, 1, 2, 3]


def test_known_count_skips_the_counting_pass_and_gives_the_same_frames(synthetic_clips):
    path = synthetic_clips.paths[".avi"]
    counted = read_frames(path, 6, "even", (48, 64))
    given = read_frames(path, 6, "even", (48, 64), count=synthetic_clips.frames)
    np.testing.assert_array_equal(counted, given)


def test_size_none_keeps_the_decoded_size(synthetic_clips):
    assert read_frames(synthetic_clips.paths[".gif"], 2, "first").shape == (2, 48, 64, 3)


def test_resize_to_backbone_input(synthetic_clips):
    frames = read_frames(synthetic_clips.paths[".mp4"], 3, "even", (299, 299))
    assert frames.shape == (3, 299, 299, 3)
    assert [frame_index(f) for f in frames] == [0, 12, 23]


def test_frames_come_back_rgb(tmp_path):
    path = write_solid_clip(tmp_path / "red.avi", 3, (230, 20, 20))
    frame = read_frames(path, 1, "first")[0].astype(int)
    red, green, blue = (frame[..., c].mean() for c in range(3))
    assert red > 200 and green < 60 and blue < 60, (red, green, blue)


# --- bad clips ---------------------------------------------------------------------------------


def test_missing_file_names_the_file(tmp_path):
    missing = tmp_path / "Cov-gone.mp4"
    with pytest.raises(BadClipError, match=r"Cov-gone\.mp4: no such file") as info:
        read_frames(missing, 5)
    assert info.value.path == missing


def test_unopenable_file_names_the_file(tmp_path):
    path = write_garbage(tmp_path / "Reg-garbage.mp4")
    with pytest.raises(BadClipError, match=r"Reg-garbage\.mp4: OpenCV cannot open") as info:
        read_frames(path, 5)
    assert info.value.path == path and "cannot open" in info.value.reason


@pytest.mark.parametrize("sampling", ["even", "first"])
def test_zero_frame_clip_names_the_file(tmp_path, sampling):
    path = write_empty_clip(tmp_path / "Pneu-empty.gif")
    with pytest.raises(BadClipError, match=r"Pneu-empty\.gif: no frames could be decoded"):
        read_frames(path, 5, sampling)


@pytest.mark.parametrize("sampling", ["even", "first"])
def test_too_short_clip_names_the_file_and_both_counts(tmp_path, sampling):
    path = write_clip(tmp_path / "Cov-short.avi", 3)
    with pytest.raises(BadClipError, match=r"Cov-short\.avi: has 3 frames, fewer than the 5"):
        read_frames(path, 5, sampling)


def test_stale_frame_count_is_caught_while_decoding(tmp_path):
    path = write_clip(tmp_path / "Cov-short.mov", 6)
    with pytest.raises(BadClipError, match="decoded only 6 frames, but its frame count was given"):
        read_frames(path, 5, "even", count=40)  # asks for frame 39


def test_bad_size_is_a_caller_error(synthetic_clips):
    with pytest.raises(ValueError, match="size must be"):
        read_frames(synthetic_clips.paths[".mp4"], 2, size=(0, 10))
