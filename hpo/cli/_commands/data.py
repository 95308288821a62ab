"""`lushpo data fetch|check`: fill a data directory from the pinned sources (or a local copy) and
report which of the paper's 185 clips it holds. The only place `LUSHPO_DATA_DIR` is read."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hpo import project
from hpo.project import DATA_DIR_ENV
from pipeline.manifest import LABELS
from pipeline.sources import (
    PAPER_COMMIT,
    PINNED_POCUS_COMMIT,
    CheckReport,
    ChecksumMismatchError,
    DownloadError,
    check,
    fetch,
)

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="fetch the POCUS clips and the paper's files; check what a data dir holds",
        description="Fill or inspect a data directory (pocus/convex/<clips>, paper/...).",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    fetch_parser = actions.add_parser(
        "fetch",
        help="download the pinned clips and paper files (or copy them with --from)",
        description=(
            f"Download the paper's clips from jannisborn/covid19_ultrasound@{PINNED_POCUS_COMMIT} "
            f"and its files from b-mandelbrot/pulmonary-covid19@{PAPER_COMMIT} (sha256-pinned). "
            "Clips the pinned commit lacks are reported as missing; see docs/data.md."
        ),
    )
    _add_data_dir(fetch_parser)
    fetch_parser.add_argument(
        "--from",
        dest="source_dir",
        type=Path,
        metavar="DIR",
        help="copy from a directory laid out like the data dir instead of downloading",
    )
    fetch_parser.add_argument(
        "--jobs", type=_positive_int, default=4, metavar="N", help="parallel downloads (4)"
    )
    fetch_parser.set_defaults(handler=_fetch)

    check_parser = actions.add_parser(
        "check", help="which of the paper's 185 clips are present, per class and per fold"
    )
    _add_data_dir(check_parser)
    check_parser.add_argument("--json", action="store_true", help="print the report as JSON")
    check_parser.set_defaults(handler=_check)


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help=f"data directory (default: ${DATA_DIR_ENV})",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _data_dir(args: argparse.Namespace) -> Path:
    if args.data_dir is not None:
        return args.data_dir
    env = project.flag_or_env(None, DATA_DIR_ENV)
    if not env:
        print(f"lushpo data: no data directory; pass --data-dir or set ${DATA_DIR_ENV}",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2)  # a missing input: a usage error
    return Path(env)


def _fetch(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    try:
        report = fetch(data_dir, source_dir=args.source_dir, jobs=args.jobs, progress=True)
    except (ChecksumMismatchError, DownloadError, FileNotFoundError, ValueError) as exc:
        print(f"lushpo data fetch: error: {exc}", file=sys.stderr)
        return 1
    mib = report.bytes_fetched / 2**20
    print(f"data dir: {report.data_dir}")
    print(f"fetched {len(report.fetched)} file(s) ({mib:.1f} MiB); kept {len(report.present)}")
    if report.missing:
        print(f"{len(report.missing)} clip(s) not at the source (add them by hand, docs/data.md):")
        for name in report.missing:
            print(f"  {name}")
    print(f"checksums: {data_dir / 'checksums.json'}")
    return 0


def _check(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    if not data_dir.is_dir():  # a missing input: a usage error, as the README says
        print(f"lushpo data check: error: {data_dir} does not exist; run `lushpo data fetch "
              f"--data-dir {data_dir}` or pass the folder that holds the data",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        report = check(data_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"lushpo data check: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_dict(), indent=1, ensure_ascii=False))
    else:
        print(format_report(report))
    return 0


def format_report(report: CheckReport) -> str:
    """The human-readable table `lushpo data check` prints."""
    lines = [
        f"data dir: {report.data_dir}",
        f"paper clips present: {len(report.present)} of {report.total}",
        "",
        f"{'class':<6}{'present':>8}{'total':>7}",
    ]
    for label in LABELS:
        count = report.per_class[label]
        lines.append(f"{label:<6}{count.present:>8}{count.total:>7}")
    lines += ["", f"{'fold':<5}{'test':>7}" + "".join(f"{label:>7}" for label in LABELS)]
    for fold in report.per_fold:
        cells = [(fold.present, fold.total)] + [
            (fold.per_class[label].present, fold.per_class[label].total) for label in LABELS
        ]
        lines.append(f"{fold.fold:<5}" + "".join(f"{f'{p}/{t}':>7}" for p, t in cells))
    lines.append("(fold = cross_val.json key, 0-based; counts are the fold's test set)")
    empty = [
        f"fold {fold.fold} has no {label}"
        for fold in report.per_fold
        for label in LABELS
        if fold.per_class[label].total and not fold.per_class[label].present
    ]
    if empty:
        lines.append("warning: " + "; ".join(empty))
    for by, groups in report.spanning.items():
        lines += ["", f"{by} groups in more than one test fold of the paper's split: {len(groups)}"]
        lines += [
            f"  {group}: folds {', '.join(map(str, folds))}" for group, folds in groups.items()
        ]
    if any(report.spanning.values()):
        lines.append("(a leak the paper's split has; split.kind: grouped keeps each group whole)")
    bad = {name: status for name, status in report.pinned.items() if status != "ok"}
    if bad:
        lines += ["", "pinned files not as expected:"]
        lines += [f"  {name}: {status}" for name, status in bad.items()]
    lines += ["", f"extra clips (not among the paper's {report.total}): {len(report.extra)}"]
    lines += [f"  {name}" for name in report.extra]
    lines += ["", f"missing clips: {len(report.missing)}"]
    for label in LABELS:
        names = report.missing_by_class[label]
        if names:
            lines.append(f"  {label} ({len(names)}):")
            lines += [f"    {name}" for name in names]
    return "\n".join(lines)
