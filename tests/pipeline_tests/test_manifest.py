"""pipeline.manifest: manifest building on synthetic clips, digests, JSON, paper and stratified
splits (pure, on hand-built manifests), and the facts measured on ../shared/data."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import replace as _replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.frames import BadClipError
from pipeline.manifest import (
    LABELS,
    Clip,
    Fold,
    Manifest,
    Split,
    build_manifest,
    label_from_name,
    paper_split,
    read_cross_val,
    read_videos_csv,
    stratified_split,
)

# --- synthetic data dir ----------------------------------------------------------------------


def _write_video(path: Path, frames: int, fourcc: str) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (32, 32))
    assert writer.isOpened(), path
    for i in range(frames):
        writer.write(np.full((32, 32, 3), 20 * i, np.uint8))
    writer.release()


def _write_gif(path: Path, frames: int) -> None:
    images = [Image.new("RGB", (32, 32), (40 * i, 0, 0)) for i in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)


def _write_paper_files(root: Path, rows: list[tuple[str, str, int]], folds: dict) -> None:
    paper = root / "paper"
    paper.mkdir(parents=True, exist_ok=True)
    with (paper / "videos.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "filename", "frames"])
        writer.writerows(rows)
    (paper / "cross_val.json").write_text(json.dumps(folds))


def _cv_part(names: list[str], labels: dict[str, str]) -> list[list[str]]:
    return [names, [labels[n] for n in names]]


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    clips = root / "pocus" / "convex"
    clips.mkdir(parents=True)
    _write_video(clips / "Cov-a.mp4", 8, "mp4v")
    _write_video(clips / "Pneu_b.avi", 7, "MJPG")
    _write_gif(clips / "pneu-c.gif", 5)
    _write_video(clips / "Reg_d.MP4", 6, "mp4v")
    _write_video(clips / "Oddname.avi", 9, "MJPG")  # label only from videos.csv
    _write_video(clips / "Vir_e.mp4", 6, "mp4v")  # viral: excluded
    _write_video(clips / "Xyz.mp4", 6, "mp4v")  # unknown prefix: excluded
    (clips / "Reg_bad.mp4").write_bytes(b"not a video" * 20)
    (clips / "notes.txt").write_text("not a clip")
    (clips / "Cov-a.mp4.part").write_bytes(b"partial download")
    labels = {"Cov-a.mp4": "cov", "Pneu_b.avi": "pne", "Oddname.avi": "reg", "Cov-gone.mp4": "cov"}
    _write_paper_files(
        root,
        [(labels[n], n, f) for n, f in [("Cov-a.mp4", 8), ("Pneu_b.avi", 7), ("Oddname.avi", 9)]]
        + [("cov", "Cov-gone.mp4", 30)],
        {
            "0": {
                "test": _cv_part(["Cov-a.mp4", "Pneu_b.avi"], labels),
                "train": _cv_part(["Oddname.avi", "Cov-gone.mp4"], labels),
            },
            "1": {
                "test": _cv_part(["Oddname.avi", "Cov-gone.mp4"], labels),
                "train": _cv_part(["Cov-a.mp4", "Pneu_b.avi"], labels),
            },
        },
    )
    return root


@pytest.fixture(scope="module")
def synthetic_manifest(synthetic_dir) -> Manifest:
    return build_manifest(synthetic_dir, on_bad_clip="skip")


def test_build_manifest_reads_every_format(synthetic_manifest, synthetic_dir):
    by_id = synthetic_manifest.by_id()
    assert synthetic_manifest.ids == tuple(sorted(by_id))
    assert {cid: (c.label, c.frames) for cid, c in by_id.items()} == {
        "Cov-a.mp4": ("cov", 8),
        "Oddname.avi": ("reg", 9),  # from videos.csv, not the name
        "Pneu_b.avi": ("pne", 7),
        "Reg_d.MP4": ("reg", 6),  # upper-case suffix counts
        "pneu-c.gif": ("pne", 5),  # lower-case pneu prefix
    }
    clip = by_id["Cov-a.mp4"]
    assert clip.path == synthetic_dir / "pocus" / "convex" / "Cov-a.mp4"
    assert clip.size == clip.path.stat().st_size
    assert len(clip.sha256) == 64
    assert clip.label_index == 0
    assert (by_id["Cov-a.mp4"].fold, by_id["Oddname.avi"].fold, by_id["Reg_d.MP4"].fold) == (
        0,
        1,
        None,
    )
    assert [s.id for s in synthetic_manifest.skipped] == ["Reg_bad.mp4"]
    assert "OpenCV" in synthetic_manifest.skipped[0].reason
    excluded = {s.id: s.reason for s in synthetic_manifest.excluded}
    assert set(excluded) == {"Vir_e.mp4", "Xyz.mp4"}
    assert "Vir" in excluded["Vir_e.mp4"]


def test_build_manifest_fails_on_bad_clip_naming_the_file(synthetic_dir):
    with pytest.raises(BadClipError, match=r"Reg_bad\.mp4"):
        build_manifest(synthetic_dir)


def test_build_manifest_rejects_bad_arguments(tmp_path, synthetic_dir):
    with pytest.raises(ValueError, match=r"on_bad_clip.*'ignore'"):
        build_manifest(synthetic_dir, on_bad_clip="ignore")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match=r"pocus/convex"):
        build_manifest(tmp_path)


def test_label_from_name():
    assert [label_from_name(n) for n in ["Cov_x.mp4", "Pneu-y.gif", "pneu-z.mp4", "Reg.avi"]] == [
        "cov",
        "pne",
        "pne",
        "reg",
    ]
    assert label_from_name("Vir_h1n1.mp4") is None
    assert label_from_name("cov_lower.mp4") is None


def test_digest_is_stable_and_covers_content_not_paths(synthetic_dir, synthetic_manifest):
    again = build_manifest(synthetic_dir, on_bad_clip="skip")
    assert again.digest() == synthetic_manifest.digest()
    clips = synthetic_manifest.clips
    moved = Manifest(tuple(_replace(c, path=Path("/elsewhere") / c.id) for c in clips))
    assert moved.digest() == synthetic_manifest.digest()
    for change in ({"sha256": "0" * 64}, {"size": 1}, {"frames": 99}, {"label": "pne"}):
        changed = Manifest((_replace(clips[0], **change), *clips[1:]))
        assert changed.digest() != synthetic_manifest.digest(), change
    assert Manifest(clips[1:]).digest() != synthetic_manifest.digest()


def test_json_round_trip_and_tamper_detection(synthetic_manifest):
    text = synthetic_manifest.to_json()
    assert Manifest.from_json(text) == synthetic_manifest
    data = json.loads(text)
    data["clips"][0]["frames"] += 1
    with pytest.raises(ValueError, match="digest"):
        Manifest.from_json(json.dumps(data))


# --- paper-file readers ----------------------------------------------------------------------


def test_read_videos_csv_names_bad_line(tmp_path):
    path = tmp_path / "videos.csv"
    path.write_text("label,filename,frames\ncov,a.mp4,10\nvir,b.mp4,12\n")
    with pytest.raises(ValueError, match=r"videos\.csv:3: label 'vir'"):
        read_videos_csv(path)
    path.write_text("label,file,frames\n")
    with pytest.raises(ValueError, match="missing column"):
        read_videos_csv(path)


def test_read_cross_val_validates_structure(tmp_path):
    path = tmp_path / "cross_val.json"
    path.write_text(json.dumps({"0": {"test": [["a"], []], "train": [[], []]}}))
    with pytest.raises(ValueError, match="fold 0 test: 1 files but 0 labels"):
        read_cross_val(path)
    path.write_text(json.dumps({"0": {"test": [[], []], "train": [[], []]}, "2": {}}))
    with pytest.raises(ValueError, match=r"fold keys must be 0\.\.1"):
        read_cross_val(path)
    path.write_text(json.dumps({"0": {"test": [["a"], ["cov"]]}}))
    with pytest.raises(ValueError, match="fold 0 lacks 'train'"):
        read_cross_val(path)


# --- splits on hand-built manifests ------------------------------------------------------------


def _manifest(counts: dict[str, int]) -> Manifest:
    prefix = {"cov": "Cov", "pne": "Pneu", "reg": "Reg"}
    clips = [
        Clip(f"{prefix[label]}_{i:02d}.mp4", label, Path(f"{prefix[label]}_{i:02d}.mp4"), 30)
        for label, n in counts.items()
        for i in range(n)
    ]
    return Manifest(tuple(sorted(clips, key=lambda c: c.id)))


def _assert_partition(split: Split, manifest: Manifest) -> None:
    tests = [c for fold in split.folds for c in fold.test]
    assert sorted(tests) == sorted(manifest.ids)  # every clip in exactly one test fold
    for fold in split.folds:
        assert not set(fold.train) & set(fold.test)
        assert sorted((*fold.train, *fold.test)) == sorted(manifest.ids)


def test_stratified_split_follows_the_pocus_rule():
    manifest = _manifest({"cov": 13, "pne": 7, "reg": 10})
    split = stratified_split(manifest, k=5, seed=0)
    assert split.name == "stratified" and len(split.folds) == 5
    _assert_partition(split, manifest)
    for label, n in (("cov", 13), ("pne", 7), ("reg", 10)):
        names = sorted(c.id for c in manifest.clips if c.label == label)
        block = n // 5
        for i, fold in enumerate(split.folds):
            # contiguous block i of the sorted names is in fold i
            assert set(names[i * block : (i + 1) * block]) <= set(fold.test)
        leftovers = names[5 * block :]
        placed = [i for name in leftovers for i, f in enumerate(split.folds) if name in f.test]
        assert len(placed) == len(leftovers)
    assert split.warnings == ()


def test_stratified_split_is_seeded():
    manifest = _manifest({"cov": 13, "pne": 7, "reg": 11})
    first, second = stratified_split(manifest, seed=3), stratified_split(manifest, seed=3)
    assert first == second and first.digest() == second.digest()
    digests = {stratified_split(manifest, seed=s).digest() for s in range(10)}
    assert len(digests) > 1  # leftovers move with the seed


def test_stratified_split_warns_when_a_class_is_too_small():
    manifest = _manifest({"cov": 2, "pne": 6, "reg": 6})
    split = stratified_split(manifest, k=3, seed=0)
    _assert_partition(split, manifest)
    assert any("no cov clip" in w for w in split.warnings)
    with pytest.raises(ValueError, match="k must be an integer >= 2, got 1"):
        stratified_split(manifest, k=1)


def test_paper_split_restricts_and_warns(tmp_path):
    manifest = _manifest({"cov": 2, "pne": 2, "reg": 2})
    ids = manifest.ids  # Cov_00, Cov_01, Pneu_00, Pneu_01, Reg_00, Reg_01
    labels = {c.id: c.label for c in manifest.clips} | {"Cov_99.mp4": "cov", "Reg_99.mp4": "reg"}
    folds = {
        "0": {
            "test": _cv_part(["Cov_99.mp4", "Pneu_00.mp4", "Reg_00.mp4"], labels),
            "train": _cv_part(["Cov_00.mp4", "Pneu_01.mp4", "Reg_99.mp4"], labels),
        },
        "1": {
            "test": _cv_part(["Cov_00.mp4", "Pneu_01.mp4", "Reg_99.mp4"], labels),
            "train": _cv_part(["Cov_99.mp4", "Pneu_00.mp4", "Reg_00.mp4"], labels),
        },
    }
    path = tmp_path / "cross_val.json"
    path.write_text(json.dumps(folds))
    split = paper_split(manifest, path)
    assert split.name == "paper"
    assert split.folds == (
        Fold(train=("Cov_00.mp4", "Pneu_01.mp4"), test=("Pneu_00.mp4", "Reg_00.mp4")),
        Fold(train=("Pneu_00.mp4", "Reg_00.mp4"), test=("Cov_00.mp4", "Pneu_01.mp4")),
    )
    assert [w for w in split.warnings if w.startswith("fold")] == [
        "fold 0: test set has no cov clip (all of the paper's cov clips in it are missing)",
        "fold 0: train set has no reg clip (all of the paper's reg clips in it are missing)",
        "fold 1: test set has no reg clip (all of the paper's reg clips in it are missing)",
        "fold 1: train set has no cov clip (all of the paper's cov clips in it are missing)",
    ]
    outside = [w for w in split.warnings if not w.startswith("fold")]
    assert len(outside) == 1 and "Cov_01.mp4" in outside[0] and "Reg_01.mp4" in outside[0]
    assert set(ids) - {c for f in split.folds for c in f.test} == {"Cov_01.mp4", "Reg_01.mp4"}


def test_split_digest_and_dict_round_trip():
    split = stratified_split(_manifest({"cov": 6, "pne": 6, "reg": 6}), k=3)
    assert Split.from_dict(json.loads(json.dumps(split.to_dict()))) == split
    assert Split.from_dict(split.to_dict()).digest() == split.digest()
    swapped = Split(split.name, (split.folds[1], split.folds[0], split.folds[2]))
    assert swapped.digest() != split.digest()
    assert Split("paper", split.folds).digest() != split.digest()


# --- ../shared/data ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_manifest(shared_data_dir) -> Manifest:
    """Decoding all 121 shared clips takes ~12 s: build once per session."""
    return build_manifest(shared_data_dir)


@pytest.mark.integration
def test_shared_manifest_matches_the_paper(shared_manifest, shared_data_dir):
    assert len(shared_manifest) == 119
    assert Counter(c.label for c in shared_manifest.clips) == {"cov": 27, "pne": 36, "reg": 56}
    assert [s.id for s in shared_manifest.excluded] == [
        "Vir_liftl_H1N1_case2_clip1.mp4",
        "Vir_whitelung_h1n1.mp4",
    ]
    assert shared_manifest.skipped == ()
    paper = read_videos_csv(shared_data_dir / "paper" / "videos.csv")
    # OpenCV decodes exactly the frame counts the paper lists
    assert {c.id: c.frames for c in shared_manifest.clips} == {
        c.id: paper[c.id].frames for c in shared_manifest.clips
    }
    assert all(c.label == paper[c.id].label for c in shared_manifest.clips)
    assert Manifest.from_json(shared_manifest.to_json()).digest() == shared_manifest.digest()


@pytest.mark.integration
def test_shared_paper_split(shared_manifest, shared_data_dir):
    split = paper_split(shared_manifest, shared_data_dir / "paper" / "cross_val.json")
    assert [len(f.test) for f in split.folds] == [17, 20, 21, 36, 25]
    _assert_partition(split, shared_manifest)
    # folds are cross_val.json's keys, 0-based: fold 1 has no COVID clip, fold 2 exactly one
    labels = {c.id: c.label for c in shared_manifest.clips}
    per_fold = [Counter(labels[c] for c in f.test) for f in split.folds]
    assert per_fold[1]["cov"] == 0 and per_fold[2]["cov"] == 1
    assert split.warnings == (
        "fold 1: test set has no cov clip (all of the paper's cov clips in it are missing)",
    )
    assert [c.fold for c in shared_manifest.clips] == [
        next(i for i, f in enumerate(split.folds) if c.id in f.test) for c in shared_manifest.clips
    ]


@pytest.mark.integration
def test_shared_stratified_split(shared_manifest):
    split = stratified_split(shared_manifest, k=5, seed=0)
    _assert_partition(split, shared_manifest)
    sizes = [len(f.test) for f in split.folds]
    # floor(27/5) + floor(36/5) + floor(56/5) = 5 + 7 + 11 per fold, plus 4 leftovers in all
    assert all(sz >= 23 for sz in sizes) and sum(sizes) == 119
    assert split.warnings == ()
    assert set(LABELS) == {c.label for c in shared_manifest.clips}
