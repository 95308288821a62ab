"""`lushpo data` (not yet implemented)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="(not yet implemented)")
    parser.set_defaults(handler=lambda args: parser.error("not yet implemented"))
