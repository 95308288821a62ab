"""`lushpo run --config FILE`: the whole pipeline as one idempotent, resumable verb.

data (fetched when the data dir lacks its clips, or the paper's split lacks paper/cross_val.json,
which `data fetch` writes last; always with --fetch; then checked, leaks included) → features
(every feature set the config needs; found in the store on a rerun) → tune (resumed, or started
anew with --overwrite) → export (replacing the previous export) → evaluate → publish (only for an
s3:// --out: the export is made in the node cache, then copied there). Each step is the verb
of the same name, called in this process with the arguments printed before it, so a step can be
rerun by hand. A run interrupted at any step finishes when started again: extraction writes a set's
manifest last, the study resumes from its run storage, and the export is replaced.

`make run`, the RayJob entrypoint and deploy/compose.yaml all call this verb. Reads the same
environment as the verbs it calls; what no flag places goes to the project folder (`hpo.project`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from hpo import project
from hpo.cli._commands import data, evaluate, export, features, publish, tune
from pipeline.files import absolute, on_node

__all__ = ["add_parser", "pipeline_steps"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="the whole pipeline: data, features, tune, export, evaluate (idempotent, resumable)",
        description=(
            "Run every step of the study in FILE: fetch the data if the data dir lacks it, "
            "extract the feature sets the store lacks, run or resume the study (--overwrite "
            "starts it anew), export its best trial into --out (replacing an earlier export) "
            "and evaluate that export. Rerunning skips what is done."
        ),
    )
    tune.add_study_arguments(parser)
    parser.add_argument(
        "--weights",
        metavar="imagenet|PATH|URI|none",
        help="backbone weights for extraction (env LUSHPO_WEIGHTS, else imagenet)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="export folder or s3:// prefix (published after evaluate) (default: "
        "$LUSHPO_RESULTS_DIR/<name>, else .lushpo/out/<name>)",
    )
    parser.add_argument(
        "--fetch",
        action="store_true",
        help="always run `data fetch` first (it keeps files already present); default: only "
        "when the data dir lacks its clips, or the paper's split lacks paper/cross_val.json "
        "(a finished fetch writes it last)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="start the study anew instead of resuming it"
    )
    parser.set_defaults(handler=_run)


def pipeline_steps(
    args: argparse.Namespace, environ: dict[str, str] | None = None
) -> tuple[object, list[tuple[ModuleType, list[str]]]]:
    """The validated study config, and the verbs `run` calls in order, each with its full
    argument list. Raises InvalidConfigError for a bad config or flag."""
    from hpo.search import check_extractable

    environ = dict(os.environ if environ is None else environ)
    cfg = tune.config_from_args(args, environ)
    data_dir, run_path = cfg.split.data_dir, cfg.run_path  # absolute already (hpo.search)
    results = args.out or _results(environ, cfg.name)
    published = results.rstrip("/") if results.startswith("s3://") else None
    if published:  # exported and evaluated in the node cache, then published to the prefix
        cache = on_node(cfg.cache_dir or str(features.DEFAULT_CACHE_DIR), "driver")
        results = str(Path(cache).expanduser() / "exports" / cfg.name)
    out = absolute(results)
    shared = {"--store": cfg.store, "--data-dir": data_dir}

    steps: list[tuple[ModuleType, list[str]]] = []
    if data_dir is not None:
        # The paper's split reads the paper's files; a stratified split of one's own clips
        # needs only the clips folder.
        needs_paper = cfg.split.kind == "paper" and not cfg.split.cross_val
        fetched = (Path(data_dir) / "paper" / "cross_val.json").is_file()
        has_clips = (Path(data_dir) / "pocus" / "convex").is_dir()
        if args.fetch or not has_clips or (needs_paper and not fetched):
            steps.append((data, ["data", "fetch", "--data-dir", data_dir]))
        if needs_paper or fetched or args.fetch:
            steps.append((data, ["data", "check", "--data-dir", data_dir]))
    if cfg.feature_set.key is None:  # a pinned key names a set that is already in the store
        check_extractable(cfg, args.config)
        extract = {
            "--backbone": ",".join(cfg.feature_set.backbone),
            "--frames": ",".join(str(n) for n in cfg.feature_set.frames),
            "--sampling": cfg.feature_set.sampling,
            "--weights": args.weights,
            "--address": cfg.address,
            **shared,
        }
        steps.append((features, ["features", *_flags(extract)]))
    study = {
        "--config": args.config,
        "--name": cfg.name,
        "--trials": args.trials,
        "--storage-path": cfg.storage.storage_path,
        "--optuna-storage": args.optuna_storage,
        "--address": cfg.address,
        **shared,
    }
    again = "--overwrite" if args.overwrite else "--resume"
    steps.append((tune, ["tune", *_flags(study), again]))
    exported = {"--out": out, "--store": cfg.store, "--optuna-storage": args.optuna_storage}
    steps.append((export, ["export", run_path, *_flags(exported), "--overwrite"]))
    # --no-paper: a study on the user's own data has no evaluation.csv; when the data dir holds
    # one it is used, and a report with the paper's columns is never replaced by one without.
    steps.append((evaluate, ["evaluate", out, *_flags(shared), "--no-paper"]))
    if published:
        steps.append((publish, ["publish", out, published]))
    return cfg, steps


def _results(environ: dict[str, str], name: str) -> str:
    """--out's default: `<$LUSHPO_RESULTS_DIR>/<name>` (a folder or an s3:// prefix), else the
    project folder's `out/<name>`."""
    env = environ.get(project.RESULTS_ENV, "")
    if env.startswith("s3://"):
        return f"{env.rstrip('/')}/{name}"
    return str(project.results_dir(environ) / name)


def _flags(values: dict[str, object]) -> list[str]:
    """--flag value pairs, leaving out the unset ones."""
    pairs = [(flag, str(value)) for flag, value in values.items() if value is not None]
    return [part for pair in pairs for part in pair]


def _call(module: ModuleType, argv: Sequence[str]) -> int:
    """One verb, parsed by its own parser, as `lushpo <argv>` would run it."""
    parser = argparse.ArgumentParser(prog="lushpo")
    module.add_parser(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(list(argv))
    return int(args.handler(args) or 0)


def _run(args: argparse.Namespace) -> int:
    from hpo.search import InvalidConfigError

    try:
        _, steps = pipeline_steps(args)
    except InvalidConfigError as exc:
        print(f"lushpo run: {exc}", file=sys.stderr)
        return 2
    for number, (module, argv) in enumerate(steps, start=1):
        step = " ".join(argv[:2]) if argv[0] == "data" else argv[0]
        print(f"lushpo run [{number}/{len(steps)}] {step}: {shlex.join(['lushpo', *argv])}",
              file=sys.stderr, flush=True)  # fmt: skip
        code = _call(module, argv)
        if code:
            print(f"lushpo run: step {step!r} failed (exit {code}); fix it and run the same "
                  f"command again: finished steps are skipped", file=sys.stderr)  # fmt: skip
            return code
    return 0
