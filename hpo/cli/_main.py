"""`lushpo`: one command, one verb per stage. Each verb lives in `hpo.cli._commands.<verb>` and
exposes `add_parser(subparsers)`; the parser it adds sets `handler(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import sys

VERBS = ("run", "data", "features", "tune", "export", "evaluate", "publish", "predict", "config")
# Verbs whose handlers run TensorFlow in this process; a subcommand that does not sets
# `tensorflow=False` in its parser's defaults (`features ls`).
TENSORFLOW_VERBS = ("run", "features", "export", "evaluate", "predict")


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
        importlib.import_module(f"hpo.cli._commands.{verb}").add_parser(subparsers)
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
        from hpo.cli._quiet import quiet

        quiet(tensorflow=False)  # the variables first: they must precede any library's import
    # --help, --version and usage errors end here, before any heavy import (each verb imports
    # what it needs inside its handler).
    args = build_parser().parse_args(argv)
    if not verbose and getattr(args, "tensorflow", args.verb in TENSORFLOW_VERBS):
        # TensorFlow is imported now, its start-up lines silenced, only by the verbs that train
        # or predict in this process (seconds): a study's driver leaves it to the trials.
        quiet(tensorflow=True)
    if verbose:
        return int(args.handler(args) or 0)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print(f"lushpo {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the verbs handle what they expect; anything else: one line
        code, message = describe_failure(exc)
        hint = f" (lushpo -v {args.verb} … shows the traceback)" if code == 1 else ""
        print(f"lushpo {args.verb}: error: {message}{hint}", file=sys.stderr)
        return code


def describe_failure(exc: BaseException) -> tuple[int, str]:
    """(exit code, one line) for a failure no verb handled: 2 for config and usage errors, 1 for
    everything that went wrong while running (storage, credentials, permissions, …)."""
    from hpo.search import InvalidConfigError

    if isinstance(exc, InvalidConfigError):
        return 2, str(exc)
    name = type(exc).__name__
    text = " ".join(str(exc).split()) or name
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return 1, (
            f"S3 access failed: {text}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            "AWS_PROFILE), and AWS_ENDPOINT_URL for MinIO"
        )
    if isinstance(exc, PermissionError):
        return 1, f"permission denied: {exc.filename or text}; choose a folder you can write to"
    if isinstance(exc, OSError) and exc.filename:
        return 1, f"{exc.filename}: {exc.strerror or text}"
    return 1, f"{name}: {text}"
