"""Which clips belong together: patient or source groups, for grouped splits and leak reports.

Clips of one patient (or one source: a hospital, an atlas, a paper) share anatomy, device and
operator, so a model tested on a clip whose patient it trained on scores too well. Groups come
from POCUS' ``pocus/dataset_metadata.csv`` (jannisborn/covid19_ultrasound): its ``Filename``
column is the clip name without extension, ``Patient ID / Name`` the patient, ``Source ID`` the
source. A group is named ``patient:<id>`` or ``source:<id>``.

Fallback, for clips the metadata does not list (a user's own clips) or lists without that column:
the file-name pattern `name_group` — the name without extension and without its class prefix
(``Cov``, ``Pneu``, ``Reg``, ``Vir``), less one trailing counter (``_vid3``, ``_clip2``, ``_v1``,
``_mov5``, ``Image_133824``, ``+(44)``, ``-2``). ``Reg_pat2Image_133824`` and
``Reg_pat2Image_134441`` thus share ``name:pat2``; ``Pneu_northumbria_0409_set1_vid2`` falls in
``name:northumbria_0409_set1``. Such groups are named ``name:<pattern>``.

`grouped_split` is scikit-learn's ``StratifiedGroupKFold`` over the clips, so no group sits in two
test folds; the split carries its groups (``Split.groups``), so training's inner validation
(`inner_validation`) and nested CV's inner folds keep groups whole too.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline.manifest import LABELS, Fold, Manifest, Split, check_split

__all__ = ["GROUP_BY", "grouped_split", "inner_validation", "name_group", "read_groups"]

GROUP_BY = {"patient": "Patient ID / Name", "source": "Source ID"}
"""What a group can be, and the metadata column it is read from."""

_PREFIX = re.compile(r"^(cov|pneu|reg|vir)[_\-\s]*", re.IGNORECASE)
_COUNTER = re.compile(
    r"[_\-\s+]*(vid|video|clip|mov|v|image|img)?[_\-\s]*\(?\d+\)?$", re.IGNORECASE
)


def name_group(clip_id: str) -> str:
    """The file-name pattern group of a clip (see the module docstring)."""
    stem = Path(clip_id).stem
    core = _COUNTER.sub("", _PREFIX.sub("", stem)) or stem
    return f"name:{core.lower()}"


def _id(value: str) -> str:
    """Metadata ids are written as floats by some tools ("36.0"); keep "36"."""
    value = value.strip()
    return value[:-2] if re.fullmatch(r"\d+\.0", value) else value


def read_groups(
    metadata_csv: Path | str | None, clip_ids: Iterable[str], by: str = "patient"
) -> dict[str, str]:
    """Clip id → group for every clip in `clip_ids`.

    Args:
        metadata_csv: POCUS' dataset_metadata.csv; None or a missing file: every clip falls back
            to `name_group`.
        clip_ids: clip file names (with extension).
        by: ``patient`` or ``source`` (`GROUP_BY`).

    Raises:
        ValueError: an unknown `by`, or a metadata file without the ``Filename`` column.
    """
    if by not in GROUP_BY:
        raise ValueError(f"group by must be one of {sorted(GROUP_BY)}, got {by!r}")
    column = GROUP_BY[by]
    listed: dict[str, str] = {}
    if metadata_csv is not None and Path(metadata_csv).is_file():
        with Path(metadata_csv).open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if "Filename" not in (reader.fieldnames or ()):
                raise ValueError(f"{metadata_csv}: no 'Filename' column")
            for row in reader:
                value = _id(row.get(column) or "")
                if row["Filename"] and value:
                    listed.setdefault(row["Filename"].strip(), f"{by}:{value}")
    return {c: listed.get(Path(c).stem) or name_group(c) for c in clip_ids}


def _group_folds(
    labels: np.ndarray, groups: np.ndarray, k: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's StratifiedGroupKFold (shuffled, seeded): (train, test) positions per fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "The least populated class has only N members": expected with few COVID patients.
        warnings.simplefilter("ignore", UserWarning)
        return list(splitter.split(np.zeros(len(labels)), labels, groups))


def grouped_split(
    manifest: Manifest, groups: Mapping[str, str], k: int = 5, seed: int = 0, name: str = "grouped"
) -> Split:
    """A stratified group k-fold of `manifest`'s clips: no group in two test folds.

    Raises:
        ValueError: a clip without a group, or fewer groups than folds.
    """
    ids = list(manifest.ids)
    missing = [c for c in ids if c not in groups]
    if missing:
        raise ValueError(f"grouped split: no group for {len(missing)} clip(s), e.g. {missing[:3]}")
    kinds = {groups[c] for c in ids}
    if not isinstance(k, int) or k < 2 or len(kinds) < k:
        raise ValueError(
            f"grouped split needs an int k >= 2 and >= k groups: k={k!r}, {len(kinds)} groups"
        )
    by_id = manifest.by_id()
    labels = np.asarray([by_id[c].label_index for c in ids])
    folds = []
    for train, test in _group_folds(labels, np.asarray([groups[c] for c in ids]), k, seed):
        folds.append(Fold(train=tuple(ids[i] for i in train), test=tuple(ids[i] for i in test)))
    warn = [
        f"fold {i}: test set has no {label} clip (groups of {label} clips: "
        f"{len({groups[c] for c in ids if by_id[c].label == label})})"
        for i, fold in enumerate(folds)
        for label in LABELS
        if any(by_id[c].label == label for c in ids)
        and label not in {by_id[c].label for c in fold.test}
    ]
    split = Split(name, tuple(folds), tuple(warn), groups={c: groups[c] for c in ids})
    check_split(split, ids)
    return split


def inner_validation(
    labels: np.ndarray, groups: Sequence[str], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) positions that keep every group whole: one fold of a stratified group
    k-fold with k = round(1 / fraction), the first in which every class keeps a training clip.

    Raises:
        ValueError: fewer than two groups, or no fold leaves every class a training clip.
    """
    by_clip = np.asarray(groups)
    n_groups = len(set(by_clip.tolist()))
    if n_groups < 2:
        raise ValueError(f"a group-respecting validation split needs >= 2 groups, got {n_groups}")
    k = min(max(2, round(1 / fraction)), n_groups)
    present = set(np.unique(labels).tolist())
    for train, val in _group_folds(labels, by_clip, k, seed):
        if set(np.unique(labels[train]).tolist()) == present:
            return np.sort(train), np.sort(val)
    raise ValueError(
        f"no group-respecting validation split of {len(labels)} clips in {n_groups} groups "
        "leaves every class a training clip"
    )
