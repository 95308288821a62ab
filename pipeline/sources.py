"""Pinned dataset sources: download (retries, resume, sha256) or copy from a local directory, and
`check` which of the paper's 185 clips a data directory holds.

Why pinned: the POCUS repository keeps changing (clips renamed, converted, removed), and the paper
(Barros et al., Sensors 2021) used one snapshot of it. Clips come from a fixed commit of
jannisborn/covid19_ultrasound; the paper's own files are checked against pinned sha256 digests.
Every file written is recorded in ``<data dir>/checksums.json`` (sha256, size, source URL),
which is written last.
"""

from __future__ import annotations

import http.client
import os
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)
from tqdm import tqdm

from pipeline.files import atomic_write_json, read_document, sha256_file
from pipeline.frames import VIDEO_SUFFIXES
from pipeline.groups import GROUP_BY, read_groups
from pipeline.manifest import (
    CLIPS_DIR,
    CROSS_VAL_JSON,
    LABELS,
    METADATA_CSV,
    VIDEOS_CSV,
    Fold,
    Split,
    check_split,
    read_cross_val,
    read_videos_csv,
    spanning_groups,
)

__all__ = [
    "PAPER_BASE_URL",
    "PAPER_COMMIT",
    "PINNED_FILES",
    "PINNED_POCUS_COMMIT",
    "POCUS_BASE_URL",
    "CheckReport",
    "ChecksumMismatchError",
    "DownloadError",
    "FetchReport",
    "PinnedFile",
    "check",
    "fetch",
]

PINNED_POCUS_COMMIT = "9e254a140b4faa2c200b8bb5cee2347b7198fbef"
"""jannisborn/covid19_ultrasound commit the clips and dataset_metadata.csv are taken from."""

PAPER_COMMIT = "6af4ba4"
"""b-mandelbrot/pulmonary-covid19 HEAD the paper files were taken from. Only the abbreviated SHA
is known offline (GitHub resolves it in /raw/ URLs); the files themselves are pinned by sha256."""

POCUS_BASE_URL = (
    f"https://raw.githubusercontent.com/jannisborn/covid19_ultrasound/{PINNED_POCUS_COMMIT}/"
)
PAPER_BASE_URL = f"https://github.com/b-mandelbrot/pulmonary-covid19/raw/{PAPER_COMMIT}/"
CLIPS_URL_PATH = "data/pocus_videos/convex/"
CHECKSUMS_JSON = "checksums.json"

_CHUNK = 1 << 20
_USER_AGENT = "lushpo-data-fetch/0.1 (+https://github.com/jannisborn/covid19_ultrasound)"


@dataclass(frozen=True)
class PinnedFile:
    """A file whose bytes are known in advance: where it goes, where it comes from, its digest."""

    dest: str  # path inside the data dir, POSIX form
    source: str  # "pocus" | "paper": which base URL `url_path` is relative to
    url_path: str
    sha256: str
    size: int


PINNED_FILES: tuple[PinnedFile, ...] = (
    PinnedFile(
        "paper/cross_val.json",
        "paper",
        "cross_val.json",
        "706ebf39aff88118df5ffdd0913fe01adfe99af0dce63e28a58782f78c668e27",
        36690,
    ),
    PinnedFile(
        "paper/videos.csv",
        "paper",
        "videos.csv",
        "c628da42db751b3a6955ea6cdb449fff1dbe04bdad381690e4f90504150b1395",
        6869,
    ),
    PinnedFile(
        "paper/evaluation.csv",
        "paper",
        "evaluation.csv",
        "b44e2a68bad04f6bbc61e064c021159aa0ad3bdf7c0dcdea44bc15d51a4ca6b1",
        34175,
    ),
    PinnedFile(
        "paper/model_params.txt",
        "paper",
        "model_params.txt",
        "c31227a4498e31eebd5d07d3863330721a43cbadb379a7949af47e06c59cdeb3",
        9197,
    ),
    PinnedFile(
        "pocus/dataset_metadata.csv",
        "pocus",
        "data/dataset_metadata.csv",
        "09a408d4524e24ae234bbbc284f7006412a1f83702eb4bde7133904f0248e1d2",
        160275,
    ),
)
"""The paper's four files and the POCUS metadata CSV, with the digests of the pinned versions."""


class DownloadError(RuntimeError):
    """A file could not be fetched: names the URL and the HTTP status or reason."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.status = status


class ChecksumMismatchError(ValueError):
    """A fetched file's sha256 differs from the pinned one."""

    def __init__(self, name: str, expected: str, got: str, source: str) -> None:
        super().__init__(
            f"{name}: sha256 mismatch (expected {expected}, got {got}) for {source}; "
            "the download was discarded"
        )
        self.name = name
        self.expected = expected
        self.got = got
        self.source = source


class _NotFoundError(DownloadError):
    pass


class _TransientError(DownloadError):
    """A failure worth retrying (5xx, 429, dropped connection, short body)."""


@dataclass(frozen=True)
class FetchReport:
    data_dir: str
    fetched: tuple[str, ...]  # data-dir paths written by this call
    present: tuple[str, ...]  # already there (pinned ones verified by sha256), left alone
    missing: tuple[str, ...]  # clip ids the source does not have (HTTP 404 / absent in --from)
    bytes_fetched: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClassCount:
    present: int
    total: int


@dataclass(frozen=True)
class FoldCount:
    """Paper clips of one fold's test set (fold numbers are cross_val.json's keys, 0-based)."""

    fold: int
    present: int
    total: int
    per_class: dict[str, ClassCount]


@dataclass(frozen=True)
class CheckReport:
    data_dir: str
    present: tuple[str, ...]  # the paper's clips found under pocus/convex
    missing: tuple[str, ...]  # the paper's clips not found
    missing_by_class: dict[str, tuple[str, ...]]
    extra: tuple[str, ...]  # clips under pocus/convex that are not among the paper's 185
    per_class: dict[str, ClassCount]
    per_fold: tuple[FoldCount, ...]
    pinned: dict[str, str]  # data-dir path -> "ok" | "missing" | "sha256 mismatch"
    # "patient" | "source" -> group -> test folds: groups of the present clips that sit in more
    # than one test fold of the paper's split (pipeline.groups; a leak the paper's split has)
    spanning: dict[str, dict[str, list[int]]]

    @property
    def total(self) -> int:
        return len(self.present) + len(self.missing)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["present_count"] = len(self.present)
        data["total"] = self.total
        return data


def fetch(
    dest: Path | str,
    *,
    source_dir: Path | str | None = None,
    pocus_base_url: str = POCUS_BASE_URL,
    paper_base_url: str = PAPER_BASE_URL,
    pinned: Sequence[PinnedFile] = PINNED_FILES,
    jobs: int = 4,
    attempts: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    progress: bool = False,
) -> FetchReport:
    """Fill `dest` with the pinned files and the paper's clips (the 185 names in videos.csv).

    From the pinned URLs by default, or copied from `source_dir` (laid out like a data dir; then
    every clip under its pocus/convex is copied, not only the paper's). Downloads retry with
    exponential backoff, resume a partial ``.part`` file with an HTTP Range request and are
    renamed into place when complete. Pinned files are verified (`ChecksumMismatchError`); a clip
    the source lacks (404) is reported in `FetchReport.missing`. Files already present are kept.
    ``paper/cross_val.json`` is written last, so its presence means a fetch has finished.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    source = Path(source_dir) if source_dir is not None else None
    if source is not None and not source.is_dir():
        raise FileNotFoundError(f"source_dir {source}: not a directory")
    bases = {"pocus": pocus_base_url, "paper": paper_base_url}
    getter = _Getter(attempts=attempts, backoff_s=backoff_s, timeout_s=timeout_s)
    checksums = _read_checksums(dest)
    lock = threading.Lock()
    fetched: list[str] = []
    present: list[str] = []
    missing: list[str] = []
    nbytes = 0

    def record(rel: str, entry: dict[str, Any], was_present: bool) -> None:
        nonlocal nbytes
        with lock:
            checksums[rel] = entry
            if was_present:
                present.append(rel)
            else:
                fetched.append(rel)
                nbytes += entry["size"]

    def place_pinned(item: PinnedFile) -> None:
        origin = (
            source / item.dest
            if source is not None
            else urllib.parse.urljoin(bases[item.source], item.url_path)
        )
        entry, was_present = _place(
            getter, origin, dest, item.dest, expected_sha256=item.sha256, known=checksums
        )
        record(item.dest, entry, was_present)

    # cross_val.json is placed last, after every clip: its presence tells `lushpo run` that a
    # fetch into this folder has finished (an interrupted one is completed by the next run).
    last = [item for item in pinned if item.dest == CROSS_VAL_JSON.as_posix()]
    try:
        for item in pinned:
            if item not in last:
                place_pinned(item)

        clip_names = list(read_videos_csv(dest / VIDEOS_CSV))
        if source is not None and (source / CLIPS_DIR).is_dir():
            paper_names = set(clip_names)
            clip_names += sorted(
                p.name
                for p in (source / CLIPS_DIR).iterdir()
                if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES and p.name not in paper_names
            )

        known = dict(checksums)

        def one(name: str) -> None:
            rel = (CLIPS_DIR / name).as_posix()
            origin = (
                source / CLIPS_DIR / name
                if source is not None
                else urllib.parse.urljoin(
                    pocus_base_url, CLIPS_URL_PATH + urllib.parse.quote(name, safe="")
                )
            )
            try:
                entry, was_present = _place(getter, origin, dest, rel, known=known)
            except (_NotFoundError, FileNotFoundError):
                with lock:
                    missing.append(name)
                return
            record(rel, entry, was_present)

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(one, name) for name in clip_names]
            for future in tqdm(
                as_completed(futures),
                total=len(futures),
                desc="clips",
                unit="clip",
                disable=not progress,
            ):
                future.result()
        for item in last:
            place_pinned(item)
    finally:
        atomic_write_json(dest / CHECKSUMS_JSON, checksums)
    return FetchReport(
        data_dir=str(dest),
        fetched=tuple(sorted(fetched)),
        present=tuple(sorted(present)),
        missing=tuple(sorted(missing)),
        bytes_fetched=nbytes,
    )


def check(data_dir: Path | str, *, pinned: Iterable[PinnedFile] = PINNED_FILES) -> CheckReport:
    """Which of the paper's 185 clips `data_dir` holds, per class and per test fold."""
    data_dir = Path(data_dir)
    for required in (VIDEOS_CSV, CROSS_VAL_JSON):
        if not (data_dir / required).is_file():
            raise FileNotFoundError(
                f"{data_dir / required}: not found; run `lushpo data fetch --data-dir {data_dir}`"
            )
    paper = read_videos_csv(data_dir / VIDEOS_CSV)
    folds = read_cross_val(data_dir / CROSS_VAL_JSON)
    check_split(Split("paper", folds), source=str(data_dir / CROSS_VAL_JSON))
    clips_dir = data_dir / CLIPS_DIR
    on_disk = (
        {p.name for p in clips_dir.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES}
        if clips_dir.is_dir()
        else set()
    )

    def counts(names: Iterable[str]) -> dict[str, ClassCount]:
        names = list(names)
        return {
            label: ClassCount(
                present=sum(1 for n in names if paper[n].label == label and n in on_disk),
                total=sum(1 for n in names if paper[n].label == label),
            )
            for label in LABELS
        }

    per_fold = []
    for i, fold in enumerate(folds):
        unknown = [n for n in fold.test if n not in paper]
        if unknown:
            raise ValueError(
                f"{data_dir / CROSS_VAL_JSON}: fold {i} names clips not in videos.csv: {unknown}"
            )
        per_fold.append(
            FoldCount(
                fold=i,
                present=sum(1 for n in fold.test if n in on_disk),
                total=len(fold.test),
                per_class=counts(fold.test),
            )
        )
    pinned_status = {}
    for item in pinned:
        path = data_dir / item.dest
        if not path.is_file():
            pinned_status[item.dest] = "missing"
        else:
            pinned_status[item.dest] = (
                "ok" if sha256_file(path) == item.sha256 else "sha256 mismatch"
            )

    in_use = Split(  # the split a study uses: the paper's, restricted to the clips present
        "paper",
        tuple(
            Fold(
                tuple(c for c in f.train if c in on_disk), tuple(c for c in f.test if c in on_disk)
            )
            for f in folds
        ),
    )
    present_ids = [c for f in in_use.folds for c in f.test]
    spanning = {
        by: spanning_groups(in_use, read_groups(data_dir / METADATA_CSV, present_ids, by))
        for by in GROUP_BY
    }
    return CheckReport(
        spanning=spanning,
        data_dir=str(data_dir),
        present=tuple(n for n in paper if n in on_disk),
        missing=tuple(n for n in paper if n not in on_disk),
        missing_by_class={
            label: tuple(n for n, c in paper.items() if c.label == label and n not in on_disk)
            for label in LABELS
        },
        extra=tuple(sorted(on_disk - set(paper))),
        per_class=counts(paper),
        per_fold=tuple(per_fold),
        pinned=pinned_status,
    )


# --- placing one file ------------------------------------------------------------------------


def _place(
    getter: _Getter,
    origin: str | Path,
    dest: Path,
    rel: str,
    *,
    expected_sha256: str | None = None,
    known: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, Any], bool]:
    """Put `origin` (URL or local path) at `dest/rel`. Returns (checksums entry, was_present).

    A file already at `dest/rel` is kept when it matches the pinned digest (or, with no pin,
    whenever it exists); its entry is recomputed only if checksums.json lacks it or its size
    changed. A present file that fails its pin is fetched again.
    """
    target = dest / rel
    if target.is_file():
        size = target.stat().st_size
        entry = known.get(rel)
        if entry is None or entry.get("size") != size:
            entry = {"sha256": sha256_file(target), "size": size, "url": None}
        if expected_sha256 is None or entry["sha256"] == expected_sha256:
            return dict(entry), True
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    if isinstance(origin, Path):
        url = origin.resolve().as_uri()
        _copy(origin, part)
    else:
        url = origin
        getter.download(origin, part)
    digest = sha256_file(part)
    if expected_sha256 is not None and digest != expected_sha256:
        part.unlink(missing_ok=True)
        raise ChecksumMismatchError(rel, expected_sha256, digest, url)
    size = part.stat().st_size
    os.replace(part, target)
    return {"sha256": digest, "size": size, "url": url}, False


def _copy(source: Path, part: Path) -> None:
    if not source.is_file():
        raise FileNotFoundError(f"{source}: not found in the source directory")
    shutil.copyfile(source, part)


class _Getter:
    """HTTP GET into a `.part` file, resuming with Range, retried with exponential backoff."""

    def __init__(self, *, attempts: int, backoff_s: float, timeout_s: float) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s

    def download(self, url: str, part: Path) -> None:
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff_s, max=60),
            retry=retry_if_exception(lambda exc: isinstance(exc, _TransientError)),
            reraise=True,
        )
        retrying(self._attempt, url, part)

    def _attempt(self, url: str, part: Path) -> None:
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": _USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 404:
                raise _NotFoundError(url, "HTTP 404 (not at this source)", 404) from exc
            if exc.code == 416 and offset:
                total = _total_from_content_range(exc.headers.get("Content-Range"))
                if total == offset:
                    return  # the .part file already holds the whole body
                part.unlink(missing_ok=True)
                raise _TransientError(url, "HTTP 416, restarting from byte 0", 416) from exc
            if exc.code >= 500 or exc.code in (408, 429):
                raise _TransientError(url, f"HTTP {exc.code}", exc.code) from exc
            raise DownloadError(url, f"HTTP {exc.code} {exc.reason}", exc.code) from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise _TransientError(url, f"{type(exc).__name__}: {exc}") from exc
        with response:
            if response.status == 206 and offset:
                start = _start_from_content_range(response.headers.get("Content-Range"))
                if start != offset:
                    part.unlink(missing_ok=True)
                    raise _TransientError(url, f"server resumed at byte {start}, not {offset}")
                mode = "ab"
                total = _total_from_content_range(response.headers.get("Content-Range"))
            else:  # 200: the server ignored Range (or none was sent): start over
                mode = "wb"
                length = response.headers.get("Content-Length")
                total = int(length) if length is not None else None
            with part.open(mode) as out:
                while chunk := _read_chunk(response, url):
                    out.write(chunk)
        got = part.stat().st_size
        if total is not None and got != total:
            raise _TransientError(url, f"body ended at byte {got} of {total}; will resume")


def _read_chunk(response: http.client.HTTPResponse, url: str) -> bytes:
    try:
        return response.read(_CHUNK)
    except (OSError, http.client.HTTPException) as exc:
        raise _TransientError(url, f"connection lost: {type(exc).__name__}: {exc}") from exc


def _start_from_content_range(value: str | None) -> int | None:
    # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0]) if value else None
    except (IndexError, ValueError):
        return None


def _total_from_content_range(value: str | None) -> int | None:
    # "bytes 100-199/200" or "bytes */200"
    try:
        total = value.rsplit("/", 1)[1] if value else "*"
        return None if total == "*" else int(total)
    except (IndexError, ValueError):
        return None


# --- checksums.json --------------------------------------------------------------------------


def _read_checksums(dest: Path) -> dict[str, dict[str, Any]]:
    path = dest / CHECKSUMS_JSON
    if not path.exists():
        return {}
    data = read_document(path, "delete it to re-record")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object of files, got {type(data).__name__}")
    return data
