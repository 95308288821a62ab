"""Leak checks on every split: the paper's file, stratified, nested inner; `data check` and `tune`
refuse a cross_val.json that puts a test clip of a fold into that fold's training set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.manifest import LABELS, Fold, Split, SplitLeakError, check_split
from pipeline.store import FeatureSet, FeatureSetSpec, open_store

LUSHPO = str(Path(sys.executable).with_name("lushpo"))


def _split(*folds: tuple[list[str], list[str]]) -> Split:
    return Split("test", tuple(Fold(tuple(train), tuple(test)) for train, test in folds))


def test_a_clean_split_passes():
    check_split(_split((["a", "b"], ["c"]), (["a", "c"], ["b"]), (["b", "c"], ["a"])), "abc")


@pytest.mark.parametrize(
    ("split", "available", "named"),
    [
        (_split((["a", "c"], ["c"]), (["c"], ["a"])), None, "fold 0 has clip c in both train"),
        (_split((["b"], ["a"]), (["b"], ["a"])), None, "clip a tested in more than one fold"),
        (_split((["a", "b"], ["c"]), (["c"], ["a"])), None, "clip b never tested"),
        (_split((["a"], ["b"]), (["b"], ["a"])), "a", "clip b not in the feature set"),
    ],
)
def test_each_leak_is_one_line_naming_fold_and_clips(split, available, named):
    with pytest.raises(SplitLeakError) as error:
        check_split(split, available, source="cv.json")
    message = str(error.value)
    assert message.startswith("cv.json: ") and named in message and "\n" not in message


def test_many_clips_are_counted_and_a_few_named():
    clips = [f"c{i}" for i in range(9)]
    with pytest.raises(SplitLeakError, match=r"9 clips: c0, c1, c2, c3, c4, … \(\+4 more\)"):
        check_split(_split((clips, clips)))


@pytest.fixture
def leaky_data_dir(shared_data_dir, tmp_path) -> tuple[Path, str]:
    """The shared paper files with one test clip of fold 0 also in fold 0's train list; the
    clips folder is linked, not copied."""
    root = tmp_path / "data"
    (root / "pocus").mkdir(parents=True)
    (root / "pocus" / "convex").symlink_to(shared_data_dir / "pocus" / "convex")
    shutil.copytree(shared_data_dir / "paper", root / "paper")
    path = root / "paper" / "cross_val.json"
    folds = json.loads(path.read_text())
    files, labels = folds["0"]["test"]
    present = {p.name for p in (shared_data_dir / "pocus" / "convex").iterdir()}
    clip = next(f for f in files if f in present)
    folds["0"]["train"][0].append(clip)
    folds["0"]["train"][1].append(labels[files.index(clip)])
    path.write_text(json.dumps(folds))
    return root, clip


def test_data_check_refuses_a_leaking_cross_val(leaky_data_dir):
    root, clip = leaky_data_dir
    done = subprocess.run([LUSHPO, "data", "check", "--data-dir", str(root)],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "cross_val.json" in lines[0] and f"fold 0 has clip {clip} in both" in lines[0]


def test_tune_refuses_a_leaking_cross_val(leaky_data_dir, tmp_path):
    """The study's own split (the paper's file restricted to the feature set) is checked before
    any trial starts: `lushpo tune` exits 1 with one line naming the file, fold and clip."""
    root, clip = leaky_data_dir
    folds = json.loads((root / "paper" / "cross_val.json").read_text())
    label_of = {f: lab for fold in folds.values() for f, lab in zip(*fold["test"], strict=True)}
    ids = sorted({*sorted(label_of)[:40], clip})
    store = open_store((tmp_path / "store").as_uri())
    spec = FeatureSetSpec("synthetic", "none", 5, "even", "synthetic-1", "leak-test")
    labels = np.array([LABELS.index(label_of[i]) for i in ids], dtype=np.int64)
    features = np.zeros((len(ids), 5, 4), np.float32)
    key = store.put(FeatureSet(spec, features, tuple(ids), labels, {"skipped": []}))
    config = tmp_path / "leak.yaml"
    config.write_text(yaml.safe_dump({
        "name": "leak", "store": store.uri, "num_cpus": 1,
        "feature_set": {"backbone": "synthetic", "frames": 5, "key": key},
        "split": {"kind": "paper", "data_dir": str(root)},
        "storage": {"storage_path": str(tmp_path / "runs")},
    }))  # fmt: skip
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([LUSHPO, "tune", "--config", str(config)], env=env,
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("lushpo tune:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "cross_val.json" in errors[0] and f"fold 0 has clip {clip} in both" in errors[0]
    assert not list((tmp_path / "runs").glob("leak/*/result.json")), "a trial ran"
