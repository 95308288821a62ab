"""`lushpo config schema|check`: the study config's JSON Schema, and a config checked the way
`tune` and `run` read it (flags > YAML > environment > defaults)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config",
        help="print the study config's JSON Schema, or check a config file",
        description=(
            "schema: the JSON Schema of a study YAML file (editors validate configs/*.yaml with "
            "it through their `# yaml-language-server: $schema=` line); check: validate FILE as "
            "`lushpo tune` would, with the same flags and environment, and print the result."
        ),
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    schema = actions.add_parser("schema", help="print the JSON Schema of a study config")
    schema.add_argument("--out", type=Path, metavar="FILE", help="write it to FILE instead")
    schema.set_defaults(handler=_schema)
    check = actions.add_parser("check", help="validate a study config and print it resolved")
    from hpo.cli._commands.tune import add_study_arguments

    add_study_arguments(check)
    check.set_defaults(handler=_check)


def schema_text() -> str:
    """The schema as written to configs/lushpo.schema.json (a test keeps that file current)."""
    from hpo.search import StudyConfig

    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    schema.update(StudyConfig.model_json_schema())
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def _schema(args: argparse.Namespace) -> int:
    if args.out is None:
        sys.stdout.write(schema_text())
        return 0
    from pipeline.files import atomic_write_text

    atomic_write_text(args.out, schema_text())
    print(f"wrote {args.out}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from hpo.cli._commands.tune import config_from_args
    from hpo.search import check_extractable, masked

    cfg = config_from_args(args)  # InvalidConfigError: one line and exit 2 (hpo.cli)
    check_extractable(cfg, args.config)  # as `lushpo run` needs it
    shown = cfg.model_dump(mode="json")
    shown["storage"]["optuna_storage"] = masked(shown["storage"]["optuna_storage"])
    print(json.dumps(shown, indent=2))
    return 0
