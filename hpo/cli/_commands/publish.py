"""`lushpo publish FOLDER s3://…`: copy a finished export (its model files, card and report) to
object storage, replacing the export published there before and nothing else.

`lushpo run --out s3://…` (or `LUSHPO_RESULTS_DIR=s3://…`) exports and evaluates in a local
folder under the node cache and calls this verb last, so a RayJob's results land beside its run
storage rather than on a pod's volume. Reads `AWS_ENDPOINT_URL` (MinIO, moto) and the standard
AWS credentials."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpo import project

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "publish",
        help="copy an export folder to an s3:// prefix (replacing only an earlier export there)",
        description="Copy a finished export (its listed model files, card and report) to an "
        "s3:// prefix, replacing the export published there before and nothing else.",
    )
    parser.add_argument("folder", metavar="FOLDER", help="an export folder (export, evaluate)")
    parser.add_argument("uri", metavar="URI", help="s3://bucket/prefix to publish it to")
    parser.set_defaults(handler=_publish)


def _publish(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from hpo.results import OwnershipError, publish

    if not args.uri.startswith("s3://"):
        print(f"lushpo publish: {args.uri!r} is not an s3:// URI", file=sys.stderr)
        return 2
    try:
        names = publish(
            Path(args.folder), args.uri, project.flag_or_env(None, project.ENDPOINT_ENV)
        )
    except (OwnershipError, OSError, BotoCoreError, ClientError) as exc:
        print(f"lushpo publish: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(f"published {len(names)} file(s) of {args.folder} to {args.uri}")
    return 0
