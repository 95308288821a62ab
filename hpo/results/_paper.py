"""The paper's own files, read for comparison: `evaluation.csv` and the npy feature layout.

Barros et al. publish one `evaluation.csv` row per (backbone, frames) with the mean and population
std over their five folds. Its header names the ninth column `pneumonia_recall_std` although it
holds the average (the tenth, also named `pneumonia_recall_std`, is the std), so columns are read
by position against a fixed expected header rather than by name. The paper's feature layout
(`features_{N}/{backbone}/features-{D}.npy`, `filenames.npy`, `labels.npy`, one row per frame named
`{label}/{clip}-{i}.png`) is read back here so an exported model directory is self-contained.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.manifest import LABELS

__all__ = [
    "PAPER_HEADLINE",
    "PaperFormatError",
    "PaperRow",
    "paper_row",
    "read_evaluation",
    "read_paper_layout",
]

_CLASS_PREFIX = {"pne": "pneumonia", "cov": "covid", "reg": "healthy"}
_METRIC_SUFFIX = {
    "precision": "precision",
    "recall": "recall",
    "f1": "f1",
    "specificity": "specifity",  # the paper's spelling
}
_CLASS_ORDER = ("pne", "cov", "reg")  # the order of the csv's column groups
_METRIC_ORDER = ("precision", "recall", "f1", "specificity")


def _expected_header() -> list[str]:
    header = ["study_name", "model_label", "seq_length", "features_length"]
    header += ["accuracy_avg", "accuracy_std"]
    for cls in _CLASS_ORDER:
        for metric in _METRIC_ORDER:
            stem = f"{_CLASS_PREFIX[cls]}_{_METRIC_SUFFIX[metric]}"
            header += [f"{stem}_avg", f"{stem}_std"]
    # The published file repeats the std name where the recall average belongs.
    header[header.index("pneumonia_recall_avg")] = "pneumonia_recall_std"
    return header


EXPECTED_HEADER: tuple[str, ...] = tuple(_expected_header())
"""evaluation.csv's header exactly as published (30 columns, `pneumonia_recall_std` twice)."""


class PaperFormatError(ValueError):
    """A paper file whose shape differs from the published one (names the file and the field)."""


@dataclass(frozen=True)
class PaperRow:
    """One evaluation.csv row: mean and population std over the paper's five folds."""

    model_label: str  # e.g. "xception-20"
    backbone: str  # "xception"
    frames: int
    features_length: int
    accuracy: tuple[float, float]  # (mean, std)
    per_class: dict[str, dict[str, tuple[float, float]]]  # {cov|pne|reg: {metric: (mean, std)}}

    def as_dict(self) -> dict:
        """JSON-ready view: {"accuracy": {"mean","std"}, "per_class": {cls: {metric: {...}}}}."""
        return {
            "model_label": self.model_label,
            "backbone": self.backbone,
            "frames": self.frames,
            "features_length": self.features_length,
            "accuracy": {"mean": self.accuracy[0], "std": self.accuracy[1]},
            "per_class": {
                cls: {m: {"mean": v[0], "std": v[1]} for m, v in metrics.items()}
                for cls, metrics in self.per_class.items()
            },
        }


PAPER_HEADLINE: dict = {
    "model_label": "xception-20",
    "accuracy": {"mean": 0.93, "std": 0.13},
    "cov_recall": {"mean": 0.97, "std": 0.06},
}
"""The paper's abstract: Xception, 20 frames, accuracy 0.93±0.13, COVID recall 0.97±0.06."""


def _float(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PaperFormatError(
            f"{path}:{line}: column {column!r} is not a number: {text!r}"
        ) from None
    if not math.isfinite(value):
        raise PaperFormatError(f"{path}:{line}: column {column!r} is not finite: {text!r}")
    return value


def read_evaluation(path: Path | str) -> list[PaperRow]:
    """Parse the paper's evaluation.csv, columns by position (see module docstring).

    Raises:
        PaperFormatError: the header differs from `EXPECTED_HEADER`, a row has the wrong number of
            fields, a number does not parse, or `model_label` is not `<backbone>-<frames>` matching
            `seq_length`.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise PaperFormatError(f"{path}: empty file, expected header {list(EXPECTED_HEADER)}")
        if tuple(h.strip() for h in header) != EXPECTED_HEADER:
            raise PaperFormatError(
                f"{path}: header {header} differs from the published one {list(EXPECTED_HEADER)}"
            )
        rows = []
        for line, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) != len(EXPECTED_HEADER):
                raise PaperFormatError(
                    f"{path}:{line}: {len(fields)} fields, expected {len(EXPECTED_HEADER)}"
                )
            label = fields[1].strip()
            match = re.fullmatch(r"(.+)-(\d+)", label)
            if not match or int(match.group(2)) != int(fields[2]):
                raise PaperFormatError(
                    f"{path}:{line}: model_label {label!r} is not <backbone>-<seq_length "
                    f"{fields[2]}>"
                )
            values = [
                _float(path, line, f"{i}:{EXPECTED_HEADER[i]}", fields[i])
                for i in range(4, len(fields))
            ]
            per_class: dict[str, dict[str, tuple[float, float]]] = {c: {} for c in LABELS}
            position = 2  # values[0:2] are accuracy avg, std
            for cls in _CLASS_ORDER:
                for metric in _METRIC_ORDER:
                    per_class[cls][metric] = (values[position], values[position + 1])
                    position += 2
            rows.append(
                PaperRow(
                    model_label=label,
                    backbone=match.group(1),
                    frames=int(fields[2]),
                    features_length=int(fields[3]),
                    accuracy=(values[0], values[1]),
                    per_class=per_class,
                )
            )
    return rows


def paper_row(rows: list[PaperRow], backbone: str, frames: int) -> PaperRow | None:
    """The row for `backbone`-`frames` (e.g. xception, 20), or None if the paper has none."""
    label = f"{backbone.lower()}-{frames}"
    for row in rows:
        if row.model_label.lower() == label:
            return row
    return None


def read_paper_layout(
    directory: Path | str, clip_ids: list[str] | tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of `clip_ids` from one paper-layout folder (`features_{N}/{backbone}`).

    The folder holds `features-{D}.npy` ([rows, D]), `filenames.npy` (`{label}/{clip}-{i}.png`,
    i = 1..N) and `labels.npy`; frames of a clip are gathered in order i = 1..N, as the paper's
    `DataSource` does.

    Returns:
        (float32 [len(clip_ids), N, D], int64 [len(clip_ids)]).

    Raises:
        PaperFormatError: a file is missing, or a clip or one of its frames is absent.
    """
    directory = Path(directory)
    found = sorted(directory.glob("features-*.npy"))
    if len(found) != 1:
        raise PaperFormatError(f"{directory}: expected one features-<D>.npy, found {found}")
    features = np.load(found[0])
    filenames = np.load(directory / "filenames.npy")
    labels = np.load(directory / "labels.npy")
    if not (len(features) == len(filenames) == len(labels)):
        raise PaperFormatError(
            f"{directory}: features ({len(features)}), filenames ({len(filenames)}) and labels "
            f"({len(labels)}) differ in length"
        )
    frames_of: dict[str, dict[int, int]] = {}
    for row, name in enumerate(filenames.tolist()):
        match = re.fullmatch(r"[^/]+/(.+)-(\d+)\.png", str(name))
        if not match:
            raise PaperFormatError(f"{directory / 'filenames.npy'}: row {row} is {name!r}")
        frames_of.setdefault(match.group(1), {})[int(match.group(2))] = row
    counts = {len(v) for v in frames_of.values()}
    if len(counts) != 1:
        raise PaperFormatError(f"{directory}: clips have different frame counts {sorted(counts)}")
    n = counts.pop()
    out = np.empty((len(clip_ids), n, features.shape[1]), dtype=np.float32)
    out_labels = np.empty(len(clip_ids), dtype=np.int64)
    for c, clip in enumerate(clip_ids):
        rows = frames_of.get(clip)
        if rows is None or sorted(rows) != list(range(1, n + 1)):
            raise PaperFormatError(f"{directory}: clip {clip!r} is missing or lacks frames 1..{n}")
        order = [rows[i] for i in range(1, n + 1)]
        out[c] = features[order]
        out_labels[c] = int(labels[order[0]])
        prefix = str(filenames[order[0]]).split("/", 1)[0]
        if prefix in LABELS and LABELS.index(prefix) != out_labels[c]:
            raise PaperFormatError(
                f"{directory / 'labels.npy'}: clip {clip!r} is labelled {out_labels[c]} but its "
                f"file name says {prefix!r} ({LABELS.index(prefix)} in {LABELS})"
            )
    return out, out_labels
