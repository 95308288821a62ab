"""`lushpo export RUN --out DIR`: the best trial of a Ray Tune run → .h5 models + model card.

Reads `LUSHPO_STORE` and `LUSHPO_CACHE_DIR` (the store holds the trial's feature set, copied
next to the models in the paper's layout) and `AWS_ENDPOINT_URL` (the S3 endpoint of s3:// runs);
without --store or --out, the project folder's (`hpo.project`)."""

from __future__ import annotations

import argparse
import sys

from hpo import project
from hpo.search import TIE_BREAK, selected_on

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export the best trial of a run to fold-{i}.h5, model.h5 and model_card.json",
        description=(
            "Pick the best trial of the Ray Tune run RUN (<storage_path>/<name>, a path or "
            "s3:// URI) — " + ", ".join(TIE_BREAK) + " — copy its fold models, retrain one "
            "model on all clips, and write the feature set in the paper's layout and a model card."
        ),
    )
    parser.add_argument("run", metavar="RUN", help="Ray Tune run directory (path or s3:// URI)")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="folder to write (default: $LUSHPO_RESULTS_DIR/<run>, else .lushpo/out/<run>)",
    )
    parser.add_argument(
        "--store",
        metavar="URI",
        help="feature store (default: the one the study read, else $LUSHPO_STORE or .lushpo/store)",
    )
    parser.add_argument(
        "--cache-dir", metavar="DIR", help="node cache (default: $LUSHPO_CACHE_DIR)"
    )
    parser.add_argument(
        "--optuna-storage",
        metavar="URL",
        help="the run's Optuna storage (default: RUN/optuna.db when present)",
    )
    parser.add_argument("--study-name", metavar="NAME", help="default: the run's name")
    parser.add_argument(
        "--pick",
        metavar="RULE",
        action="append",
        default=[],
        help="export the highest accuracy that meets RULE, e.g. 'covid_recall >= 0.9', on the "
        "study's objective folds (on its Pareto front with objective.directions); repeatable",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export in DIR (only the files it lists; others stay)",
    )
    parser.set_defaults(handler=_run)


def _run_name(run: str) -> str:
    """A run folder's last path part: the study's name."""
    return run.rstrip("/").rsplit("/", 1)[-1]


def _study(args: argparse.Namespace) -> dict | None:
    if not args.optuna_storage:
        return None
    name = args.study_name or _run_name(args.run)
    return {"optuna_storage": args.optuna_storage, "study_name": name}


def _run(args: argparse.Namespace) -> int:
    from hpo.results import (
        ExportError,
        export_best,
        export_grid,
        run_filesystem,
    )  # TensorFlow, when run
    from hpo.search import RunLockedError, read_grid

    store = args.store  # None: the store each trial read (its trial.json), else the project's
    out = args.out or str(project.results_dir() / _run_name(args.run))
    cache_dir = project.flag_or_env(args.cache_dir, project.CACHE_ENV)
    endpoint_url = project.flag_or_env(None, project.ENDPOINT_ENV)
    grid = read_grid(*run_filesystem(args.run, endpoint_url))
    if grid is not None:
        results = export_grid(
            args.run,
            out,
            grid,
            log=lambda msg: print(msg, file=sys.stderr),
            store=store,
            cache_dir=cache_dir,
            overwrite=args.overwrite,
            endpoint_url=endpoint_url,
            pick=args.pick,
        )
        done = sum(not isinstance(r, str) for r in results.values())
        print(f"exported {done} of {len(results)} grid cells to {out}")
        return 0 if done else 1
    try:
        result = export_best(
            args.run,
            out,
            store=store,
            cache_dir=cache_dir,
            overwrite=args.overwrite,
            study=_study(args),
            pick=args.pick,
            endpoint_url=endpoint_url,
            log=lambda msg: print(msg, file=sys.stderr),
        )
    except (ExportError, RunLockedError, FileNotFoundError, ValueError) as exc:
        print(f"lushpo export: error: {exc}", file=sys.stderr)
        return 2
    card = result.card
    summary = card["summary"]["accuracy"]
    ci = card["confidence"]["accuracy"]
    print(
        f"exported trial {card['trial_id']} ({card['backbone']}-{card['frames']}, mean CV accuracy "
        f"{summary['mean']:.3f} ± {summary['std']:.3f}, pooled 95% CI [{ci['low']:.3f}, "
        f"{ci['high']:.3f}], {selected_on(card)}) to {result.directory}"
    )
    print(card["claim"])
    return 0
