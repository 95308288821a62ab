"""`lushpo evaluate DIR`: recompute an export's metrics and compare them with the paper.

Reads `LUSHPO_DATA_DIR` (the paper's evaluation.csv is `<data-dir>/paper/evaluation.csv`) and,
only when the folder's paper-layout features are missing, `LUSHPO_STORE` / `LUSHPO_CACHE_DIR`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hpo import project
from hpo.search import GRID_FILE
from pipeline.files import atomic_write_text

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="recompute an export's metrics and print them beside the paper's",
        description=(
            "Score each exported fold-{i}.h5 on its test fold (the paper's metrics: accuracy; "
            "precision, recall, F1, specificity per class; mean and population std over folds), "
            "compare with the paper's evaluation.csv row and headline, and write report.md, "
            "report.json and plots into DIR."
        ),
    )
    parser.add_argument("directory", metavar="DIR", type=Path, help="a `lushpo export` folder")
    parser.add_argument("--data-dir", type=Path, metavar="DIR", help="default: $LUSHPO_DATA_DIR")
    parser.add_argument(
        "--paper-csv", type=Path, metavar="FILE", help="default: <data-dir>/paper/evaluation.csv"
    )
    parser.add_argument("--store", metavar="URI", help="default: $LUSHPO_STORE")
    parser.add_argument("--cache-dir", metavar="DIR", help="default: $LUSHPO_CACHE_DIR")
    parser.add_argument(
        "--optuna-storage", metavar="URL", help="Optuna storage (default: the model card's)"
    )
    parser.add_argument(
        "--no-paper",
        action="store_true",
        help="write a report without the paper's columns when no evaluation.csv is at hand "
        "(never replaces a report that has them)",
    )
    parser.add_argument("--json", action="store_true", help="print report.json instead")
    parser.set_defaults(handler=_run)


def _paper_csv(args: argparse.Namespace) -> Path | None:
    if args.paper_csv:
        return args.paper_csv
    data_dir = project.flag_or_env(args.data_dir, project.DATA_DIR_ENV)
    if data_dir and (Path(data_dir) / "paper" / "evaluation.csv").is_file():
        return Path(data_dir) / "paper" / "evaluation.csv"
    return None


def _missing_paper(args: argparse.Namespace) -> str | None:
    """Why this evaluation may not run without the paper's evaluation.csv, or None when it may:
    only with --no-paper, and never over a report that compares with the paper."""
    data_dir = project.flag_or_env(args.data_dir, project.DATA_DIR_ENV)
    where = f"{data_dir}/paper/evaluation.csv" if data_dir else "no --data-dir / $LUSHPO_DATA_DIR"
    if not args.no_paper:
        return (
            f"no paper evaluation.csv ({where}); pass --paper-csv FILE or --data-dir DIR, or "
            "--no-paper for a report without the paper's columns"
        )
    try:
        earlier = json.loads((args.directory / "report.json").read_text())
    except (OSError, ValueError):
        return None
    if earlier.get("paper"):
        return (
            f"{args.directory / 'report.json'} compares with the paper; a report without "
            f"the paper ({where}) would replace it with less: pass --paper-csv FILE"
        )
    return None


def _run(args: argparse.Namespace) -> int:
    from hpo.results import (  # TensorFlow and matplotlib, when run
        REPORT_MD,
        comparison_table,
        confidence_section,
        estimates_section,
        evaluate,
    )

    if (args.directory / GRID_FILE).is_file():
        return _run_grid(args)
    paper_csv = _paper_csv(args)
    if paper_csv is None and args.directory.is_dir():
        problem = _missing_paper(args)
        if problem:
            print(f"lushpo evaluate: error: {problem}", file=sys.stderr)
            return 2
    try:
        report = evaluate(
            args.directory,
            paper_csv=paper_csv,
            store=project.flag_or_env(args.store, project.STORE_ENV),
            cache_dir=project.flag_or_env(args.cache_dir, project.CACHE_ENV),
            optuna_storage=args.optuna_storage,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"lushpo evaluate: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print((args.directory / "report.json").read_text())
        return 0
    print(comparison_table(report))
    print()
    print(estimates_section(report))
    print()
    print(confidence_section(report))
    for note in report["notes"]:
        print(f"- {note}")
    print(f"report: {args.directory / REPORT_MD} (and report.json, plots) in {args.directory}")
    return 0


def _run_grid(args: argparse.Namespace) -> int:
    """A grid export: evaluate every cell, then the paper's whole table (68 rows)."""
    from hpo.results import (
        evaluate,  # TensorFlow, when run
        grid_table,
        plot_grid,
        read_evaluation,
        render_grid_markdown,
    )

    paper_csv = _paper_csv(args)
    if paper_csv is None:
        print("lushpo evaluate: error: a grid needs the paper's evaluation.csv", file=sys.stderr)
        return 2
    grid = json.loads((args.directory / GRID_FILE).read_text())
    reports = {}
    try:
        for cell in grid["cells"]:
            reports[cell] = evaluate(
                args.directory / cell,
                paper_csv=paper_csv,
                store=project.flag_or_env(args.store, project.STORE_ENV),
                cache_dir=project.flag_or_env(args.cache_dir, project.CACHE_ENV),
                optuna_storage=args.optuna_storage,
            )
        table = grid_table(reports, read_evaluation(paper_csv))
    except (FileNotFoundError, ValueError) as exc:
        print(f"lushpo evaluate: error: {exc}", file=sys.stderr)
        return 2
    markdown = render_grid_markdown(table)
    outputs = {"paper_table.md": markdown, "paper_table.json": json.dumps(table, indent=1)}
    for name, text in outputs.items():
        atomic_write_text(args.directory / name, text)
    plot_grid(table, args.directory / "paper_table.png")
    print(json.dumps(table, indent=1) if args.json else markdown)
    print(f"table: {args.directory / 'paper_table.md'} (and .json, .png); per-cell reports in "
          f"{args.directory}/<cell>/report.md")  # fmt: skip
    return 0
