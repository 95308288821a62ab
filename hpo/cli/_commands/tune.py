"""`lushpo tune --config FILE`: run (or resume) a distributed study.

The only place the study reads the environment: LUSHPO_STORE, LUSHPO_DATA_DIR, LUSHPO_CACHE_DIR
and RAY_ADDRESS fill keys the YAML leaves out; AWS_ENDPOINT_URL points s3:// run storage at a
non-AWS endpoint. Flags win over the YAML, the YAML over the environment.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from hpo import project

__all__ = [
    "INTERRUPTED",
    "add_parser",
    "add_study_arguments",
    "config_from_args",
    "resume_command",
]

INTERRUPTED = 130  # exit status after Ctrl-C, as shells report 128 + SIGINT

_ENV_DEFAULTS = {
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
    add_study_arguments(parser)
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the study of this name")
    again.add_argument("--overwrite", action="store_true", help="delete it and start again")
    parser.add_argument(
        "--nested",
        action="store_true",
        help="nested CV: one study per outer fold on its training clips only (honest estimate)",
    )
    parser.add_argument(
        "--inner-folds",
        type=_at_least_two,
        metavar="K",
        help="inner folds with --nested (default split.k)",
    )
    parser.set_defaults(handler=_handle)


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that override a study config's keys (`tune` and `run` share them)."""
    parser.add_argument("--config", required=True, metavar="FILE", help="study YAML")
    parser.add_argument("--trials", type=int, metavar="N", help="budget.trials")
    parser.add_argument("--name", help="study name (run dir and Optuna study)")
    parser.add_argument("--store", metavar="URI", help="feature store (env LUSHPO_STORE)")
    parser.add_argument("--storage-path", metavar="URI", help="Ray Tune results: path or s3://")
    parser.add_argument("--optuna-storage", metavar="URL", help="Optuna storage URL")
    parser.add_argument("--address", metavar="ADDR", help="Ray cluster to join (env RAY_ADDRESS)")
    parser.add_argument("--data-dir", metavar="DIR", help="split.data_dir (env LUSHPO_DATA_DIR)")


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None):
    """The validated StudyConfig: flags > YAML > environment > built-in defaults. An error on a
    key a flag sets also names the flag (`--` and the key's last part: --trials)."""
    from hpo.search import InvalidConfigError, load_config

    environ = dict(os.environ if environ is None else environ)
    overrides = {
        "budget.trials": args.trials,
        "name": args.name,
        "store": args.store,
        "storage.storage_path": args.storage_path,
        "storage.optuna_storage": args.optuna_storage,
        "address": args.address,
        "split.data_dir": args.data_dir,
    }
    defaults = {key: environ.get(env) or None for key, env in _ENV_DEFAULTS.items()}
    # The project folder (hpo.project) below YAML: LUSHPO_STORE, else .lushpo/store and runs.
    defaults["store"] = project.store_uri(environ)
    defaults["storage.storage_path"] = str(project.runs_dir(environ))
    try:
        return load_config(args.config, overrides, defaults)
    except InvalidConfigError as exc:
        env = {**_ENV_DEFAULTS, "store": project.STORE_ENV}.get(exc.key)
        if env and environ.get(env) and exc.got == environ[env] and overrides.get(exc.key) is None:
            # The value came from the environment, not from the file the message would blame.
            exc.args = (
                f"The environment variable {env} (the default of '{exc.key}') must be "
                f"{exc.allowed}. Got {exc.got!r} instead; fix or unset {env}.",
            )
        elif exc.key in overrides:
            flag = "--" + exc.key.rpartition(".")[2].replace("_", "-")
            exc.args = (f"{str(exc).removesuffix('.')} or pass {flag}.",)
        raise


def _handle(args: argparse.Namespace) -> int:
    from hpo.search import InvalidConfigError

    try:
        cfg = config_from_args(args)
    except InvalidConfigError as exc:
        print(f"lushpo tune: {exc}", file=sys.stderr)
        return 2

    from hpo.search import (
        results_table,
        run_study,
    )

    if cfg.feature_set.grid:
        if getattr(args, "nested", False):
            print("lushpo tune: --nested takes one feature set, not a grid", file=sys.stderr)
            return 2
        return _handle_grid(args, cfg)
    if getattr(args, "nested", False):
        return _handle_nested(args, cfg)
    if getattr(args, "inner_folds", None) is not None:
        print("lushpo tune: --inner-folds needs --nested", file=sys.stderr)
        return 2
    progress = progress_view(cfg)
    code, result = _guarded(
        args,
        lambda: run_study(cfg, resume=args.resume, overwrite=args.overwrite, callbacks=[progress]),
    )
    if code is not None:
        return code
    print(results_table(result))
    if cfg.rescore.top_k:
        from hpo.results import rescore_table
        from hpo.search import run_rescore

        code, record = _guarded(args, lambda: run_rescore(cfg, result, log=_stderr))
        if code is not None:
            return code
        print(rescore_table(record))
    failed = [t for t in result.trials if t.error]
    if failed:
        print(
            f"{len(failed)} of {len(result.trials)} trials failed; after fixing the cause, "
            f"retry them with: {resume_command(args)}",
            file=sys.stderr,
        )
    return 0


def resume_command(args: argparse.Namespace, argv: Sequence[str] | None = None) -> str:
    """The exact command that resumes this study: the command line that started it (`argv`,
    default sys.argv when it ran `lushpo tune`) without --overwrite and with --resume; for
    `lushpo run`, which resumes by default, that line without --overwrite. When called
    in-process with other argv, the line is rebuilt from the parsed `args`."""
    argv = _masked_argv(sys.argv if argv is None else argv)
    if len(argv) > 1 and argv[1] == "run":
        return shlex.join(["lushpo", *[a for a in argv[1:] if a != "--overwrite"]])
    if len(argv) > 1 and argv[1] == "tune":
        rest = argv[2:]
    else:
        rest = []
        for dest, value in vars(args).items():
            flag = "--" + dest.replace("_", "-")
            if dest in ("handler", "verb", "resume", "overwrite") or value in (None, False):
                continue
            rest += [flag] if value is True else [flag, str(value)]
        rest = _masked_argv(rest)
    rest = [a for a in rest if a not in ("--overwrite", "--resume")] + ["--resume"]
    return shlex.join(["lushpo", "tune", *rest])


def _masked_argv(argv: Sequence[str]) -> list[str]:
    """`argv` with the password of an --optuna-storage URL masked (the resumed driver takes it
    from LUSHPO_OPTUNA_STORAGE or LUSHPO_OPTUNA_PASSWORD: `hpo.search.connectable`)."""
    from hpo.search import masked

    shown = list(argv)
    for i, arg in enumerate(shown):
        if arg.startswith("--optuna-storage="):
            shown[i] = "--optuna-storage=" + masked(arg.split("=", 1)[1])
        elif i and shown[i - 1] == "--optuna-storage":
            shown[i] = masked(arg)
    return shown


def progress_view(cfg) -> Any:
    """The live view of one study (`hpo.search.StudyProgress`)."""
    from hpo.search import StudyProgress, masked

    return StudyProgress(
        cfg.budget.trials,
        cfg.run_path,
        masked(cfg.storage.optuna_storage),
        time_budget_s=cfg.budget.time_budget_s,
        objective=cfg.objective.objective(),
    )


def _at_least_two(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fold count of 2 or more")
    return value


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _guarded(args: argparse.Namespace, run):
    """(None, what `run()` returns), or (exit code, None) after one line on stderr."""
    from hpo.cli._quiet import quieted
    from hpo.search import (
        AllTrialsFailedError,
        RunLockedError,
        SearchSettingsChangedError,
        StudyExistsError,
        StudyInterruptedError,
        StudySettingsChangedError,
    )
    from pipeline.cluster import ClusterConnectError
    from pipeline.store import StoreError

    if quieted():  # Optuna sets its own logger to INFO: "A new study created in RDB …"
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return None, run()
    except (StudySettingsChangedError, SearchSettingsChangedError) as exc:
        print(f"lushpo tune: {exc}", file=sys.stderr)  # a refused --resume: a usage error
        return 2, None
    except (StudyInterruptedError, KeyboardInterrupt) as exc:
        print(f"lushpo tune: {str(exc) or 'interrupted'}", file=sys.stderr)
        print(f"resume with: {resume_command(args)}", file=sys.stderr)
        return INTERRUPTED, None
    except (
        StudyExistsError,
        RunLockedError,
        AllTrialsFailedError,
        StoreError,
        ClusterConnectError,
        ValueError,
        OSError,
    ) as exc:
        print(f"lushpo tune: {_line(exc)}", file=sys.stderr)
        return 1, None


def _line(exc: BaseException) -> str:
    """The failure's one line; a file system error names the path and, where there is one,
    the fix (as the CLI says it of any failure: `hpo.cli.describe_failure`)."""
    from hpo.cli._main import describe_failure

    return describe_failure(exc)[1] if isinstance(exc, OSError) and exc.filename else str(exc)


def _handle_grid(args: argparse.Namespace, cfg) -> int:
    """A grid config: one study per (backbone, N) cell, resumable cell by cell."""
    from hpo.search import run_grid

    def progress(cell) -> list:
        return [progress_view(cell)]

    code, results = _guarded(
        args,
        lambda: run_grid(cfg, resume=args.resume, overwrite=args.overwrite, callbacks=progress),
    )
    if code is not None:
        return code
    objective = cfg.objective.objective()
    for label, result in results.items():
        best = result.best
        score = f"{best.value:.3f}" if best else "no finished trial"
        print(
            f"{label}: best mean CV {objective.shown} {score} ({len(result.trials)} trials; "
            f"{objective.selected_on})"
        )
    print(f"grid run: {cfg.run_path} (lushpo export {cfg.run_path} --out DIR)")
    return 0


def _handle_nested(args: argparse.Namespace, cfg) -> int:
    """`--nested`: hpo.search.run_nested with a fresh progress view per inner study."""
    from hpo.search import (
        AllTrialsFailedError,
        NestedLeakError,
        StudyExistsError,
        StudyInterruptedError,
        nested_table,
        run_nested,
    )
    from pipeline.store import StoreError

    def progress(inner) -> list:
        return [progress_view(inner)]

    try:
        record = run_nested(
            cfg,
            inner_k=args.inner_folds,
            resume=args.resume,
            overwrite=args.overwrite,
            callbacks=progress,
        )
    except (StudyInterruptedError, KeyboardInterrupt) as exc:
        # Finished inner studies are kept; --resume skips them and continues the interrupted one.
        print(f"lushpo tune: {str(exc) or 'interrupted'}", file=sys.stderr)
        print(f"resume with: {resume_command(args)}", file=sys.stderr)
        return INTERRUPTED
    except (
        StudyExistsError,
        AllTrialsFailedError,
        NestedLeakError,
        StoreError,
        ValueError,
        OSError,
        RuntimeError,
    ) as exc:
        print(f"lushpo tune: {_line(exc)}", file=sys.stderr)
        return 1
    print(nested_table(record))
    return 0
