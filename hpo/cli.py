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
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show TensorFlow, Keras, absl and Ray messages (off by default; errors always show)",
    )
    parser.add_argument("--version", action="version", version=f"lushpo {_version()}")
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        importlib.import_module(f"hpo.commands.{verb}").add_parser(subparsers)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lushpo")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = {"-v", "--verbose"} & set(argv)
    argv = [a for a in argv if a not in ("-v", "--verbose")]  # -v may follow the verb too
    if not verbose:
        from hpo.quiet import quiet

        # Before the parser: building it imports the verbs, and some of them TensorFlow.
        quiet(tensorflow=True)
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
