"""Patient/source groups (pipeline.groups): read from the POCUS metadata, grouped splits keep
every group in one test fold, inner validation keeps groups whole, and `data check` names the
groups the paper's split spreads over several test folds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpo.train import fold_data
from pipeline.groups import grouped_split, inner_validation, name_group, read_groups
from pipeline.manifest import (
    CLIPS_DIR,
    CROSS_VAL_JSON,
    LABELS,
    METADATA_CSV,
    Clip,
    Fold,
    Manifest,
    Split,
    SplitLeakError,
    check_split,
    label_from_name,
    read_cross_val,
    spanning_groups,
)

LUSHPO = str(Path(sys.executable).with_name("lushpo"))


def _shared_manifest(data_dir: Path) -> Manifest:
    """The 119 shared clips that are in the paper's split (the two Vir clips have no class)."""
    in_split = {c for f in read_cross_val(data_dir / CROSS_VAL_JSON) for c in f.test}
    names = sorted(p.name for p in (data_dir / CLIPS_DIR).iterdir() if p.name in in_split)
    return Manifest(tuple(Clip(n, label_from_name(n), Path(n), 0) for n in names))


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("Reg_pat2Image_133824.mpeg", "name:pat2"),
        ("Reg_pat2Image_134441.mpeg", "name:pat2"),
        ("Pneu_northumbria_0409_set1_vid2.mp4", "name:northumbria_0409_set1"),
        ("Cov-Atlas+(44).gif", "name:atlas"),
        ("Cov_denault_proposedUS_vid13.mov", "name:denault_proposedus"),
        ("Cov_combatting_image4.mp4", "name:combatting"),
    ],
)
def test_file_name_fallback(name, group):
    assert name_group(name) == group


def test_groups_come_from_the_metadata_and_fall_back_on_names(shared_data_dir):
    metadata = shared_data_dir / METADATA_CSV
    ids = ["Reg_pat2Image_133824.mpeg", "Cov-Atlas+(44).gif", "Cov_my_own_clip_vid2.mp4"]
    assert read_groups(metadata, ids) == {
        "Reg_pat2Image_133824.mpeg": "patient:3",
        "Cov-Atlas+(44).gif": "patient:36",
        "Cov_my_own_clip_vid2.mp4": "name:my_own_clip",
    }
    assert read_groups(metadata, ids[:1], "source") == {"Reg_pat2Image_133824.mpeg": "source:14"}
    assert read_groups(None, ids[:1]) == {"Reg_pat2Image_133824.mpeg": "name:pat2"}
    with pytest.raises(ValueError, match="group by must be one of"):
        read_groups(metadata, ids, "hospital")


@pytest.mark.parametrize("by", ["patient", "source"])
def test_a_grouped_split_of_the_119_shared_clips_has_no_group_in_two_test_folds(
    shared_data_dir, by
):
    manifest = _shared_manifest(shared_data_dir)
    assert len(manifest) == 119
    groups = read_groups(shared_data_dir / METADATA_CSV, manifest.ids, by)
    assert not any(g.startswith("name:") for g in groups.values())  # all 119 are in the metadata
    split = grouped_split(manifest, groups, k=5, seed=0)
    assert spanning_groups(split, groups) == {}
    assert sorted(c for f in split.folds for c in f.test) == sorted(manifest.ids)
    for fold in split.folds:
        assert not {groups[c] for c in fold.train} & {groups[c] for c in fold.test}
    # The paper's split, on the same clips, spreads patients over several test folds.
    paper = Split("paper", read_cross_val(shared_data_dir / CROSS_VAL_JSON))
    assert spanning_groups(paper, groups)
    if by == "patient":
        assert [len(f.test) for f in split.folds] == [24, 24, 24, 24, 23]
        assert split.warnings == ()
        assert Split.from_dict(json.loads(json.dumps(split.to_dict()))) == split


def test_the_leak_check_refuses_a_group_in_two_test_folds():
    groups = {"a": "patient:1", "b": "patient:1", "c": "patient:2", "d": "patient:3"}
    folds = (
        Fold(("c", "d"), ("a", "b")),
        Fold(("a", "b", "d"), ("c",)),
        Fold(("a", "b", "c"), ("d",)),
    )
    check_split(Split("grouped", folds, groups=groups))
    bad = (
        Fold(("b", "c", "d"), ("a",)),
        Fold(("a", "c", "d"), ("b",)),
        Fold(("a", "b"), ("c", "d")),
    )
    with pytest.raises(
        SplitLeakError,
        match=r"group\(s\) in more than one test fold: .*patient:1 "
        r"\(folds 0, 1\)",
    ):
        check_split(Split("grouped", bad, groups=groups))


def test_inner_validation_keeps_groups_whole_and_every_class_in_training():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    groups = [f"p{i // 3}" for i in range(60)]  # 3 clips per patient, one class each
    rng.shuffle(groups := np.asarray(groups))
    for seed in range(5):
        train, val = inner_validation(labels, groups, 0.2, seed)
        assert not set(groups[train]) & set(groups[val])
        assert set(labels[train]) == {0, 1, 2}
        assert len(train) + len(val) == 60 and 6 <= len(val) <= 18


def test_fold_data_validates_on_patients_it_does_not_train_on(shared_data_dir):
    manifest = _shared_manifest(shared_data_dir)
    groups = read_groups(shared_data_dir / METADATA_CSV, manifest.ids)
    split = grouped_split(manifest, groups, k=5, seed=0)
    ids = list(manifest.ids)
    labels = np.asarray([LABELS.index(manifest.by_id()[c].label) for c in ids])
    x = np.arange(len(ids), dtype=np.float32).reshape(-1, 1, 1)  # feature = clip position
    for k, data in enumerate(fold_data(x, labels, ids, split, validation_fraction=0.2)):
        val = {groups[ids[int(i)]] for i in data.x_val.ravel()}
        train = {groups[ids[int(i)]] for i in data.x_train.ravel()}
        test = {groups[c] for c in split.folds[k].test}
        assert val and not val & train and not val & test and not train & test


def test_data_check_lists_the_groups_the_paper_split_spreads(shared_data_dir):
    done = subprocess.run(
        [LUSHPO, "data", "check", "--data-dir", str(shared_data_dir), "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    spanning = json.loads(done.stdout)["spanning"]
    assert spanning["patient"]["patient:4"] == [1, 2, 3]
    assert spanning["patient"]["patient:3"] == [3, 4]
    assert spanning["source"]["source:18"] == [0, 1, 2, 3, 4]
    text = subprocess.run(
        [LUSHPO, "data", "check", "--data-dir", str(shared_data_dir)],
        capture_output=True, text=True, timeout=300,
    ).stdout  # fmt: skip
    assert "patient groups in more than one test fold of the paper's split: 5" in text
    assert "  patient:4: folds 1, 2, 3" in text
