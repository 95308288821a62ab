"""pipeline.paper_layout: the files read back the way the paper's `DataSource` reads them.

`DataSource` (b-mandelbrot/pulmonary-covid19, utils/data_source.py) loads
``{features_dir}/{model}/features-{D}.npy``, ``filenames.npy`` and ``labels.npy``, and builds a
fold's ``X[clip, k]`` by looking up ``np.where(filenames == f"{label}/{clip}-{k+1}.png")[0][0]``
for each (clip, label) of ``cross_val.json``, its label from the first frame's row of labels.npy.
`datasource_fold` below does exactly those look-ups.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.manifest import LABELS
from pipeline.paper_layout import write_paper_layout
from pipeline.store import FeatureSet, FeatureSetSpec


def feature_set(ids: list[str], labels: list[str], frames: int = 5, dim: int = 8) -> FeatureSet:
    rng = np.random.default_rng(7)
    spec = FeatureSetSpec("xception", "none", frames, "even", "1", "test-digest")
    return FeatureSet(
        spec=spec,
        features=rng.normal(size=(len(ids), frames, dim)).astype(np.float32),
        clip_ids=tuple(ids),
        labels=np.array([LABELS.index(label) for label in labels], dtype=np.int64),
        meta={},
    )


def datasource_fold(directory, seq_length, features_length, files, labels):
    """The paper's look-ups: (X [clips, seq, D], one-hot Y) for one fold's (files, labels)."""
    features = np.load(directory / f"features-{features_length}.npy")
    filenames = np.load(directory / "filenames.npy")
    row_labels = np.load(directory / "labels.npy")
    x, y = [], []
    for filename, label in zip(files, labels, strict=True):
        rows = [
            np.where(filenames == f"{label}/{filename}-{i + 1}.png")[0][0]
            for i in range(seq_length)
        ]
        x.append([list(features[r]) for r in rows])
        y.append(np.eye(3, dtype=int)[row_labels[rows[0]]])
    return np.array(x), np.array(y)


def test_paper_reader_reconstructs_every_fold_of_cross_val(shared_data_dir, tmp_path):
    cross_val = json.loads((shared_data_dir / "paper" / "cross_val.json").read_text())
    tests = [zip(*fold["test"], strict=True) for fold in cross_val.values()]
    pairs = sorted({pair for test in tests for pair in test})
    fs = feature_set([f for f, _ in pairs], [lab for _, lab in pairs])
    directory = write_paper_layout(fs, tmp_path)
    assert directory == tmp_path / "features_5" / "xception"  # the paper's features_dir/model
    row = {clip: i for i, clip in enumerate(fs.clip_ids)}
    for fold in cross_val.values():
        for part in ("train", "test"):
            files, labels = fold[part]
            x, y = datasource_fold(directory, 5, 8, files, labels)
            np.testing.assert_array_equal(x, fs.features[[row[f] for f in files]])
            assert [LABELS[i] for i in y.argmax(axis=1)] == labels


def test_layout_files_shapes_and_names(tmp_path):
    fs = feature_set(["Cov-a.gif", "Reg-b.mp4", "Pneu-c.avi"], ["cov", "reg", "pne"], frames=3)
    directory = write_paper_layout(fs, tmp_path / "out")
    assert sorted(p.name for p in directory.iterdir()) == [
        "features-8.npy",
        "filenames.npy",
        "labels.npy",
    ]  # and no temporary files left behind
    features = np.load(directory / "features-8.npy")
    assert features.shape == (9, 8) and features.dtype == np.float32
    names = np.load(directory / "filenames.npy")  # no pickle: a plain unicode array
    assert names[:4].tolist() == ["cov/Cov-a.gif-1.png", "cov/Cov-a.gif-2.png",
                                  "cov/Cov-a.gif-3.png", "reg/Reg-b.mp4-1.png"]  # fmt: skip
    assert np.load(directory / "labels.npy").tolist() == [0, 0, 0, 2, 2, 2, 1, 1, 1]
    np.testing.assert_array_equal(features[3:6], fs.features[1])


def test_a_subset_of_clips_reads_back_by_name(tmp_path):
    fs = feature_set(["Cov-a.gif", "Reg-b.mp4", "Pneu-c.avi", "Reg-d.mov"],
                     ["cov", "reg", "pne", "reg"])  # fmt: skip
    directory = write_paper_layout(fs, tmp_path)
    x, y = datasource_fold(directory, 5, 8, ["Reg-d.mov", "Cov-a.gif"], ["reg", "cov"])
    np.testing.assert_array_equal(x, fs.features[[3, 0]])
    assert y.tolist() == [[0, 0, 1], [1, 0, 0]]


def test_inconsistent_feature_set_is_refused(tmp_path):
    fs = feature_set(["Cov-a.gif", "Reg-b.mp4"], ["cov", "reg"])
    broken = FeatureSet(fs.spec, fs.features, fs.clip_ids[:1], fs.labels, {})
    with pytest.raises(ValueError, match="do not describe"):
        write_paper_layout(broken, tmp_path)
