"""`lushpo tune --config FILE`: run (or resume) a distributed study.

The only place the study reads the environment: LUSHPO_STORE, LUSHPO_DATA_DIR, LUSHPO_CACHE_DIR
and RAY_ADDRESS fill keys the YAML leaves out; AWS_ENDPOINT_URL points s3:// run storage at a
non-AWS endpoint. Flags win over the YAML, the YAML over the environment.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["add_parser", "config_from_args"]

_ENV_DEFAULTS = {
    "store": "LUSHPO_STORE",
    "split.data_dir": "LUSHPO_DATA_DIR",
    "cache_dir": "LUSHPO_CACHE_DIR",
    "address": "RAY_ADDRESS",
    "storage.endpoint_url": "AWS_ENDPOINT_URL",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="run a Ray Tune + Optuna study of the CNN-LSTM head",
        description="Run the study in FILE on a local Ray instance, or on --address.",
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="study YAML")
    parser.add_argument("--trials", type=int, metavar="N", help="budget.trials")
    parser.add_argument("--name", help="study name (run dir and Optuna study)")
    parser.add_argument("--store", metavar="URI", help="feature store (env LUSHPO_STORE)")
    parser.add_argument("--storage-path", metavar="URI", help="Ray Tune results: path or s3://")
    parser.add_argument("--optuna-storage", metavar="URL", help="Optuna storage URL")
    parser.add_argument("--address", metavar="ADDR", help="Ray cluster to join (env RAY_ADDRESS)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the study of this name")
    again.add_argument("--overwrite", action="store_true", help="delete it and start again")
    parser.set_defaults(handler=_handle)


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None):
    """The validated StudyConfig: flags > YAML > environment > built-in defaults."""
    from hpo.config import load_config

    environ = dict(os.environ if environ is None else environ)
    overrides = {
        "budget.trials": args.trials,
        "name": args.name,
        "store": args.store,
        "storage.storage_path": args.storage_path,
        "storage.optuna_storage": args.optuna_storage,
        "address": args.address,
    }
    defaults = {key: environ.get(env) or None for key, env in _ENV_DEFAULTS.items()}
    return load_config(args.config, overrides, defaults)


def _handle(args: argparse.Namespace) -> int:
    from hpo.config import InvalidConfigError

    try:
        cfg = config_from_args(args)
    except InvalidConfigError as exc:
        print(f"lushpo tune: {exc}", file=sys.stderr)
        return 2

    from hpo.progress import StudyProgress, results_table
    from hpo.study import AllTrialsFailedError, StudyExistsError, run_study
    from pipeline.store import StoreError

    progress = StudyProgress(cfg.budget.trials, cfg.run_path, cfg.storage.optuna_storage)
    try:
        result = run_study(cfg, resume=args.resume, overwrite=args.overwrite, callbacks=[progress])
    except (StudyExistsError, AllTrialsFailedError, StoreError, ValueError, OSError) as exc:
        print(f"lushpo tune: {exc}", file=sys.stderr)
        return 1
    print(results_table(result))
    return 0
