"""`lushpo`: one command, one verb per stage. Each verb lives in `hpo.commands.<verb>` and exposes
`add_parser(subparsers)`; the parser it adds sets `handler(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import sys

VERBS = ("run", "data", "features", "tune", "export", "evaluate", "predict")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lushpo",
        description="Distributed HPO of CNN-LSTM lung-ultrasound video classifiers.",
    )
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        importlib.import_module(f"hpo.commands.{verb}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
