"""Clip manifest and cross-validation splits (paper | stratified).

Pure data: a `Manifest` lists the clips found in a data directory; a `Split` says which clip ids
are in each fold's train and test sets. Both are frozen and hash into a stable digest, so a feature
set or a trial can name exactly the data it was computed from.

Data-dir layout (the same as ../shared/data):
``pocus/convex/<clips>``, ``pocus/dataset_metadata.csv``,
``paper/{cross_val.json, videos.csv, evaluation.csv, model_params.txt}``.
Folds are 0-based, numbered as the keys of the paper's ``cross_val.json``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from pipeline.files import read_document, sha256_file
from pipeline.frames import VIDEO_SUFFIXES, BadClipError, count_frames

__all__ = [
    "LABELS",
    "BadClipError",
    "Clip",
    "Fold",
    "Manifest",
    "PaperClip",
    "SkippedClip",
    "Split",
    "SplitLeakError",
    "build_manifest",
    "check_split",
    "label_from_name",
    "paper_split",
    "read_cross_val",
    "read_videos_csv",
    "stratified_split",
]

LABELS: tuple[str, ...] = ("cov", "pne", "reg")
"""Class names in label-index order (0 = COVID-19, 1 = pneumonia, 2 = healthy/regular)."""

CLIPS_DIR = Path("pocus", "convex")
METADATA_CSV = Path("pocus", "dataset_metadata.csv")
PAPER_DIR = Path("paper")
VIDEOS_CSV = PAPER_DIR / "videos.csv"
CROSS_VAL_JSON = PAPER_DIR / "cross_val.json"

_PREFIX_LABELS = (("Cov", "cov"), ("Pneu", "pne"), ("pneu", "pne"), ("Reg", "reg"))


@dataclass(frozen=True)
class Clip:
    id: str  # file name as in the paper's cross_val.json, e.g. "Cov-Atlas+(44).gif"
    label: str  # one of LABELS
    path: Path
    frames: int  # frames OpenCV decodes from the file
    size: int | None = None  # bytes on disk when the manifest was built
    sha256: str | None = None  # of the file's bytes when the manifest was built
    fold: int | None = None  # paper fold whose test set holds this clip; None if not a paper clip

    @property
    def label_index(self) -> int:
        return LABELS.index(self.label)


@dataclass(frozen=True)
class SkippedClip:
    """A file under pocus/convex that is not in the manifest, and why."""

    id: str
    reason: str


@dataclass(frozen=True)
class Manifest:
    clips: tuple[Clip, ...]  # sorted by id
    skipped: tuple[SkippedClip, ...] = ()  # bad clips left out with on_bad_clip="skip"
    excluded: tuple[SkippedClip, ...] = ()  # Vir / unknown-prefix clips (not one of LABELS)

    def digest(self) -> str:
        """sha256 over (id, label, frames, size, sha256) of every clip: the dataset hash.

        Paths, folds and the skipped/excluded lists are left out, so the same clips in another
        directory or on another machine give the same digest.
        """
        rows = [[c.id, c.label, c.frames, c.size, c.sha256] for c in self.clips]
        return _sha256_json({"clips": rows})

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.clips)

    def __len__(self) -> int:
        return len(self.clips)

    def by_id(self) -> dict[str, Clip]:
        return {c.id: c for c in self.clips}

    def to_json(self) -> str:
        payload = {
            "format": 1,
            "digest": self.digest(),
            "clips": [
                {
                    "id": c.id,
                    "label": c.label,
                    "path": str(c.path),
                    "frames": c.frames,
                    "size": c.size,
                    "sha256": c.sha256,
                    "fold": c.fold,
                }
                for c in self.clips
            ],
            "skipped": [{"id": s.id, "reason": s.reason} for s in self.skipped],
            "excluded": [{"id": s.id, "reason": s.reason} for s in self.excluded],
        }
        return json.dumps(payload, indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Inverse of `to_json`; raises ValueError when the stored digest does not match."""
        data = json.loads(text)
        try:
            manifest = cls(
                clips=tuple(
                    Clip(
                        id=c["id"],
                        label=c["label"],
                        path=Path(c["path"]),
                        frames=int(c["frames"]),
                        size=c.get("size"),
                        sha256=c.get("sha256"),
                        fold=c.get("fold"),
                    )
                    for c in data["clips"]
                ),
                skipped=tuple(SkippedClip(s["id"], s["reason"]) for s in data.get("skipped", [])),
                excluded=tuple(SkippedClip(s["id"], s["reason"]) for s in data.get("excluded", [])),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"manifest JSON lacks field {exc}") from exc
        for clip in manifest.clips:
            if clip.label not in LABELS:
                raise ValueError(f"manifest JSON: clip {clip.id!r} has label {clip.label!r}")
        stored = data.get("digest")
        if stored is not None and stored != manifest.digest():
            raise ValueError(
                f"manifest JSON digest {stored} does not match its clips ({manifest.digest()})"
            )
        return manifest


@dataclass(frozen=True)
class Fold:
    train: tuple[str, ...]  # clip ids
    test: tuple[str, ...]


@dataclass(frozen=True)
class Split:
    name: str  # "paper" | "stratified" | "grouped" | "inner-<k>"
    folds: tuple[Fold, ...]
    warnings: tuple[str, ...] = field(default=(), compare=False)
    # clip id → patient/source group (pipeline.groups) for a grouped split: inner validation
    # splits and nested inner folds then keep groups whole too. None: clips are independent.
    groups: Mapping[str, str] | None = None

    def digest(self) -> str:
        """sha256 over the name, every fold's train/test ids and the groups (warnings left out)."""
        return _sha256_json(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The `{"name", "folds": [{"train", "test"}][, "groups"]}` shape stored in trial.json."""
        out: dict[str, Any] = {
            "name": self.name,
            "folds": [{"train": list(f.train), "test": list(f.test)} for f in self.folds],
        }
        if self.groups is not None:
            out["groups"] = dict(sorted(self.groups.items()))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Split:
        return cls(
            name=data["name"],
            folds=tuple(Fold(tuple(f["train"]), tuple(f["test"])) for f in data["folds"]),
            groups=data.get("groups"),
        )


class SplitLeakError(ValueError):
    """A split that would train on a test clip, test a clip twice or never, or name clips the
    feature set lacks. The message names the split, the fold and the clips."""


def check_split(split: Split, available: Iterable[str] | None = None, source: str = "") -> None:
    """Refuse a split that leaks: in every fold train ∩ test = ∅; every clip of the split is
    tested exactly once; with `available` (the feature set's clip ids), every clip is in it.

    Raises:
        SplitLeakError: one line naming `source` (default: the split's name), folds and clips.
    """
    problems: list[str] = []
    tested: Counter[str] = Counter()
    for i, fold in enumerate(split.folds):
        both = sorted(set(fold.train) & set(fold.test))
        if both:
            problems.append(f"fold {i} has {_few(both)} in both train and test")
        tested.update(fold.test)
    twice = sorted(c for c, n in tested.items() if n > 1)
    if twice:
        problems.append(f"{_few(twice)} tested in more than one fold")
    never = sorted({c for fold in split.folds for c in fold.train} - set(tested))
    if never:
        problems.append(f"{_few(never)} never tested")
    if available is not None:
        absent = sorted({c for f in split.folds for c in (*f.train, *f.test)} - set(available))
        if absent:
            problems.append(f"{_few(absent)} not in the feature set")
    if split.groups is not None:
        spanning = spanning_groups(split, split.groups)
        if spanning:
            shown = [f"{g} (folds {', '.join(map(str, f))})" for g, f in spanning.items()]
            problems.append(f"group(s) in more than one test fold: {_few(shown)}")
    if problems:
        raise SplitLeakError(f"{source or split.name + ' split'}: " + "; ".join(problems))


def spanning_groups(split: Split, groups: Mapping[str, str]) -> dict[str, list[int]]:
    """Groups whose clips sit in more than one test fold of `split`: group → sorted folds.
    A clip `groups` does not name is its own group."""
    folds: dict[str, set[int]] = {}
    for i, fold in enumerate(split.folds):
        for clip in fold.test:
            folds.setdefault(groups.get(clip, clip), set()).add(i)
    return {g: sorted(f) for g, f in sorted(folds.items()) if len(f) > 1}


def _few(ids: Sequence[str], shown: int = 5) -> str:
    """'clip a, b' or 'N clips: a, b, … (+k more)'."""
    more = f", … (+{len(ids) - shown} more)" if len(ids) > shown else ""
    noun = "clip" if len(ids) == 1 else f"{len(ids)} clips:"
    return f"{noun} {', '.join(ids[:shown])}{more}"


@dataclass(frozen=True)
class PaperClip:
    """One row of the paper's videos.csv."""

    id: str
    label: str
    frames: int


def label_from_name(name: str) -> str | None:
    """Label from the POCUS file-name prefix (Cov / Pneu, pneu / Reg); None for Vir and others."""
    for prefix, label in _PREFIX_LABELS:
        if name.startswith(prefix):
            return label
    return None


def read_videos_csv(path: Path | str) -> dict[str, PaperClip]:
    """The paper's 185 clips (label, filename, frames), in file order."""
    path = Path(path)
    clips: dict[str, PaperClip] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"label", "filename", "frames"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            label, name = row["label"], row["filename"]
            if label not in LABELS:
                raise ValueError(f"{path}:{line}: label {label!r} is not one of {LABELS}")
            try:
                frames = int(row["frames"])
            except ValueError:
                raise ValueError(
                    f"{path}:{line}: frames {row['frames']!r} is not an integer"
                ) from None
            if name in clips:
                raise ValueError(f"{path}:{line}: clip {name!r} is listed twice")
            clips[name] = PaperClip(name, label, frames)
    return clips


def read_cross_val(path: Path | str) -> tuple[Fold, ...]:
    """The paper's folds from cross_val.json (`{fold: {train|test: [[files], [labels]]}}`),
    ordered by fold key 0, 1, ...; ids keep the file's order."""
    return _load_cross_val(Path(path))[0]


def _load_cross_val(path: Path) -> tuple[tuple[Fold, ...], dict[str, str]]:
    data = read_document(path, "fetch it again with `lushpo data fetch`")
    if not isinstance(data, dict) or not data:
        got = "an empty object" if data == {} else type(data).__name__
        raise ValueError(f"{path}: expected a non-empty object of folds, got {got}")
    try:
        keys = sorted(data, key=int)
    except ValueError:
        raise ValueError(f"{path}: fold keys must be integers, got {sorted(data)}") from None
    if [int(k) for k in keys] != list(range(len(keys))):
        raise ValueError(f"{path}: fold keys must be 0..{len(keys) - 1}, got {keys}")
    folds = []
    labels: dict[str, str] = {}
    for key in keys:
        parts = []
        for part in ("train", "test"):
            try:
                files, part_labels = data[key][part]
            except (KeyError, TypeError, ValueError):
                raise ValueError(
                    f"{path}: fold {key} lacks {part!r}: [[files], [labels]]"
                ) from None
            if len(files) != len(part_labels):
                raise ValueError(
                    f"{path}: fold {key} {part}: {len(files)} files but {len(part_labels)} labels"
                )
            for name, label in zip(files, part_labels, strict=True):
                if label not in LABELS:
                    raise ValueError(
                        f"{path}: fold {key} {part}: {name!r} has label {label!r}, "
                        f"not one of {LABELS}"
                    )
                labels[name] = label
            parts.append(tuple(files))
        folds.append(Fold(train=parts[0], test=parts[1]))
    return tuple(folds), labels


def build_manifest(
    data_dir: Path | str,
    *,
    on_bad_clip: Literal["fail", "skip"] = "fail",
    progress: bool = False,
) -> Manifest:
    """Every clip under `data_dir/pocus/convex` with its label, decoded frame count and hash.

    Labels come from the paper's videos.csv when the clip is one of its 185, else from the file
    name's prefix; Vir and unknown prefixes are left out and listed in `Manifest.excluded`.
    Clips OpenCV cannot decode raise one `BadClipError` naming all of them (`on_bad_clip="fail"`)
    or are listed in `Manifest.skipped` (`"skip"`).
    """
    if on_bad_clip not in ("fail", "skip"):
        raise ValueError(f"on_bad_clip must be 'fail' or 'skip', got {on_bad_clip!r}")
    data_dir = Path(data_dir)
    clips_dir = data_dir / CLIPS_DIR
    if not clips_dir.is_dir():
        raise FileNotFoundError(f"{clips_dir}: no clips folder (run `lushpo data fetch`)")
    videos_csv, cross_val = data_dir / VIDEOS_CSV, data_dir / CROSS_VAL_JSON
    paper = read_videos_csv(videos_csv) if videos_csv.exists() else {}
    folds = read_cross_val(cross_val) if cross_val.exists() else ()
    test_fold = {clip_id: i for i, fold in enumerate(folds) for clip_id in fold.test}

    files = sorted(
        p
        for p in clips_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in VIDEO_SUFFIXES
    )
    clips: list[Clip] = []
    skipped: list[SkippedClip] = []
    excluded: list[SkippedClip] = []
    # disable=None: tqdm draws only on a terminal, so logs and pipes stay clean
    for path in tqdm(files, desc="manifest", unit="clip", disable=None if progress else True):
        name = path.name
        label = paper[name].label if name in paper else label_from_name(name)
        if label is None:
            reason = (
                "viral pneumonia (Vir) is not one of the classes cov, pne, reg"
                if name.startswith("Vir")
                else "not in the paper's videos.csv and the name does not start with Cov, "
                "Pneu/pneu or Reg"
            )
            excluded.append(SkippedClip(name, reason))
            continue
        try:
            frames = count_frames(path)
        except BadClipError as exc:
            skipped.append(SkippedClip(name, exc.reason))
            continue
        size, sha256 = _file_digest(path)
        clips.append(Clip(name, label, path, frames, size, sha256, test_fold.get(name)))
    if skipped and on_bad_clip == "fail":  # every bad clip named, not just the first
        listed = "; ".join(f"{s.id} ({s.reason})" for s in skipped)
        raise BadClipError(
            clips_dir,
            f"{len(skipped)} clip(s) cannot be read: {listed}; fix or remove them, or pass "
            "--on-bad-clip skip",
        )
    clips.sort(key=lambda c: c.id)
    return Manifest(tuple(clips), tuple(skipped), tuple(excluded))


def paper_split(manifest: Manifest, cross_val_path: Path | str) -> Split:
    """The paper's folds restricted to the clips in `manifest`, with a warning for every fold
    whose test (or train) set loses a class entirely, and for present clips the split leaves out."""
    folds, paper_labels = _load_cross_val(Path(cross_val_path))
    labels = {c.id: c.label for c in manifest.clips}
    restricted: list[Fold] = []
    warnings: list[str] = []
    for i, fold in enumerate(folds):
        kept = Fold(
            train=tuple(c for c in fold.train if c in labels),
            test=tuple(c for c in fold.test if c in labels),
        )
        restricted.append(kept)
        for part in ("test", "train"):
            paper_ids, kept_ids = getattr(fold, part), getattr(kept, part)
            had = {paper_labels[c] for c in paper_ids}
            have = {labels[c] for c in kept_ids}
            for label in LABELS:
                if label in had and label not in have:
                    warnings.append(
                        f"fold {i}: {part} set has no {label} clip "
                        f"(all of the paper's {label} clips in it are missing)"
                    )
    check_split(Split("paper", folds), source=str(cross_val_path))  # the file itself
    in_split = {c for fold in folds for c in (*fold.train, *fold.test)}
    outside = sorted(set(labels) - in_split)
    if outside:
        warnings.append(
            f"{len(outside)} clip(s) present are not in the paper's split and are left out: "
            + ", ".join(outside)
        )
    split = Split("paper", tuple(restricted), tuple(warnings))
    check_split(split, labels, source=f"{cross_val_path} restricted to the clips present")
    return split


def stratified_split(manifest: Manifest, k: int = 5, seed: int = 0) -> Split:
    """The POCUS cross_val_splitter rule: per class, sort the names, give each of the k folds a
    contiguous block of floor(n/k) clips, then send each leftover clip to a fold drawn by a
    seeded RNG. Every clip is in exactly one test fold."""
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    rng = np.random.default_rng(seed)
    tests: list[list[str]] = [[] for _ in range(k)]
    by_label = _ids_by_label(manifest.clips)
    for label in LABELS:
        names = sorted(by_label.get(label, ()))
        block = len(names) // k
        for i in range(k):
            tests[i].extend(names[i * block : (i + 1) * block])
        for name in names[k * block :]:
            tests[int(rng.integers(k))].append(name)
    order = manifest.ids
    folds = []
    for test in tests:
        held = set(test)
        folds.append(Fold(train=tuple(c for c in order if c not in held), test=tuple(test)))
    labels = {c.id: c.label for c in manifest.clips}
    warnings = [
        f"fold {i}: test set has no {label} clip ({len(by_label[label])} {label} clips for k={k})"
        for i, fold in enumerate(folds)
        for label in LABELS
        if by_label.get(label) and label not in {labels[c] for c in fold.test}
    ]
    split = Split("stratified", tuple(folds), tuple(warnings))
    check_split(split, labels)
    return split


def _ids_by_label(clips: Iterable[Clip]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for clip in clips:
        grouped.setdefault(clip.label, []).append(clip.id)
    return grouped


def _file_digest(path: Path) -> tuple[int, str]:
    return path.stat().st_size, sha256_file(path)


def _sha256_json(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
