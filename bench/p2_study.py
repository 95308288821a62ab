"""P2: what running a study under lushpo costs against Optuna on its own, side by side in one run.

Four contenders run the same N trials of the same training function (`hpo.train.
cross_validate_with`, the maths lushpo's trainable wraps) on the same features and split, each as a
fresh process timed from its start to its exit, so each pays its own interpreter start and imports
(TensorFlow included), as a user typing the command does:

- ``optuna-seq``: a plain sequential Optuna loop (ask/tell, in-memory storage, TPE), one
  trial at a time with every core;
- ``lushpo-1``: ``lushpo tune`` at ``max_concurrent: 1`` (one trial with every core): a local Ray
  instance started and stopped, Ray Tune, checkpoints, Optuna on sqlite, the progress log;
- ``optuna-par``: Optuna's own parallel mode, n worker processes sharing one ``JournalStorage``
  file, one single-threaded trial per process;
- ``lushpo-n``: ``lushpo tune`` at ``max_concurrent: n``, one single-threaded trial per core.

P2 at concurrency 1 = lushpo-1 ÷ optuna-seq; at concurrency n (the cores) = lushpo-n ÷ optuna-par.
Goal: ≤ 1.05 for both. Every trial costs the same: the head's size and batch are fixed (64-unit
LSTM, one 64-unit dense layer, batch 32, early stopping off), while TPE still samples dropouts and
learning rate. The sequential pair samples the very same configs (same TPE seed, same order;
checked: ``same_configs``). The features are synthetic, shaped like the paper's Xception-20 set
(119 clips × 20 frames × 2048), 5-fold stratified split. The default size (16 trials × 40 epochs,
a few minutes per contender) stands for a real study such as `make run`'s 9 minutes: lushpo's
costs are mostly fixed per study (Ray's start and stop, the first trial's worker), and
``fixed_overhead_s`` records them so the ratio can be read for any study length.

    python -m bench p2 [--trials N] [--max-epochs E] [--concurrency N] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench._record import add_feature_args, machine, write_record

__all__ = ["run"]

RESULTS = Path(__file__).resolve().parent / "results" / "p2_study.json"
REPO = Path(__file__).resolve().parents[1]

# Fixed size and batch: every trial costs the same, whatever TPE samples for the rest.
SPACE = {"lstm_units": [64], "dense_layers": 1, "dense_units_1": [64], "batch_size": [32]}


def study_yaml(
    root: Path,
    store_uri: str,
    args: argparse.Namespace,
    *,
    name: str,
    concurrent: int,
    resources: dict[str, Any],
    num_cpus: int | None,
) -> Path:
    """The bench study (`SPACE`, synthetic features, 5 folds, early stopping off) as a YAML file
    ``<root>/<name>.yaml`` for ``lushpo tune``; `args` holds its size (``--trials`` …)."""
    config = {
        "name": name,
        "store": store_uri,
        "feature_set": {"backbone": "synthetic", "frames": args.frames},
        "split": {"kind": "stratified", "k": 5, "seed": args.seed},
        "space": SPACE,
        "budget": {"trials": args.trials, "max_concurrent": concurrent,
                   "max_epochs": args.max_epochs, "patience": args.max_epochs},
        "searcher": {"sampler": "tpe", "seed": args.seed},
        "training": {"seed": args.seed},
        "resources": resources,
        "storage": {"storage_path": str(root / "runs")},
        "num_cpus": num_cpus,
    }  # fmt: skip
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def synthetic_store(root: Path, args: argparse.Namespace) -> tuple[str, str, dict[str, str]]:
    """A file:// store under `root` holding the synthetic feature set `args` shapes, and the
    environment a ``lushpo tune`` contender runs in: (store URI, set key, environment)."""
    from pipeline.store import open_store
    from tests.support.featuresets import synthetic_feature_set

    fs = synthetic_feature_set(
        clips=args.clips, frames=args.frames, dim=args.dim, signal=0.3, seed=args.seed
    )
    (root / "store").mkdir()
    store_uri = (root / "store").as_uri()
    key = open_store(store_uri).put(fs)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "LUSHPO_"))}
    env |= {"PYTHONPATH": str(REPO), "RAY_TMPDIR": tempfile.mkdtemp(prefix="benchr", dir="/tmp"),
            "LUSHPO_HOME": str(root / "home")}  # fmt: skip
    return store_uri, key, env


def _timed(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one contender as a fresh process: its wall time, and the machine's load around it."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed ({done.returncode}): {done.stderr[-3000:]}")
    return {"wall_s": round(wall, 2), "load_1m_before": round(load, 2),
            "load_1m_after": round(os.getloadavg()[0], 2), "stdout": done.stdout}  # fmt: skip


# --- the Optuna contenders (`python -m bench.p2_study optuna JOB WORKERS`) -----------------------


def _trials(
    study: Any, job: dict[str, Any], n_trials: int, threads: int | None, reseed: bool = False
) -> None:
    """Ask/tell `n_trials` trials of `study`: cross_validate of each sampled config. `reseed`:
    a TPE sampler seeded from (seed, trial number) before each ask, as lushpo's searcher does
    (`hpo.search.sampler_seed`), so the sequential pair draws the same configs."""
    from hpo.search import ask_active, make_sampler, sampler_seed, startup_trials
    from hpo.train import TrialSettings, configure_tensorflow, cross_validate_with, search_space
    from pipeline.manifest import Split
    from pipeline.store import open_store

    settings = TrialSettings(
        job["store"], job["key"], Split.from_dict(job["split"]), max_epochs=job["max_epochs"],
        patience=job["max_epochs"], seed=job["seed"], intra_op_threads=threads,
    )  # fmt: skip
    configure_tensorflow(settings)
    fs = open_store(job["store"]).get(job["key"])
    space = search_space(SPACE)  # what lushpo searches for this config
    for number in range(n_trials):
        if reseed:
            study.sampler = make_sampler(
                "tpe",
                sampler_seed(job["seed"], number),
                n_startup_trials=startup_trials(job["trials"]),  # the study's, as lushpo's
            )
        trial = ask_active(study, space)  # the active dimensions, as lushpo's searcher
        result = cross_validate_with(fs, settings, trial.params)  # the study's own call
        study.tell(trial, float(result.metrics["accuracy"]))


def _journal(job: dict[str, Any]) -> Any:
    import optuna

    return optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(job["journal"])
    )


def _optuna_worker(job: dict[str, Any], rank: int, n_trials: int) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=job["seed"] + rank)
    study = optuna.load_study(study_name="p2", storage=_journal(job), sampler=sampler)
    _trials(study, job, n_trials, threads=1)


def _optuna_main(job_path: str, workers: int) -> None:
    """optuna-seq (workers == 1, in-memory storage) or optuna-par (a JournalStorage file)."""
    import multiprocessing

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    job = json.loads(Path(job_path).read_text())
    if workers == 1:
        sampler = optuna.samplers.TPESampler(seed=job["seed"])
        study = optuna.create_study(direction="maximize", sampler=sampler)
        _trials(study, job, job["trials"], threads=None, reseed=True)
    else:
        study = optuna.create_study(study_name="p2", storage=_journal(job), direction="maximize")
        context = multiprocessing.get_context("spawn")  # fresh interpreters, as n shells would
        procs = [
            context.Process(target=_optuna_worker, args=(job, rank, share))
            for rank, share in enumerate(
                job["trials"] // workers + (i < job["trials"] % workers) for i in range(workers)
            )
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
            if p.exitcode != 0:
                raise SystemExit(f"optuna worker exited with {p.exitcode}")
    done = [t for t in study.trials if t.value is not None]
    print(json.dumps({"values": [t.value for t in done], "params": [t.params for t in done]}))


# --- the bench -----------------------------------------------------------------------------------


def _lushpo_trials(run_dir: Path) -> tuple[list[float], list[dict]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=run_dir.name, storage=f"sqlite:///{run_dir}/optuna.db")
    done = [t for t in study.trials if t.value is not None]
    return [t.value for t in done], [t.params for t in done]


def _canon(configs: list[dict]) -> list[str]:
    return sorted(repr(sorted(c.items())) for c in configs)


def _alone(c: int) -> str:
    """The name of the Optuna-alone contender at concurrency `c`."""
    return "optuna-seq" if c == 1 else f"optuna-par-{c}"


def _pair(
    root: Path,
    store_uri: str,
    key: str,
    env: dict[str, str],
    args: argparse.Namespace,
    c: int,
    repeat: int,
) -> dict[str, dict[str, Any]]:
    """One repeat of the pair at concurrency `c`: Optuna alone and ``lushpo tune``, in the order
    the repeat's parity gives (so a drifting machine load favours neither), by contender name."""
    from hpo.search import load_config
    from hpo.search._prepare import compute_split

    # one trial with every core (TensorFlow's own threads), or one single-threaded trial per core
    threads = {"cpu": os.cpu_count(), "intra_op_threads": 0} if c == 1 else {"cpu": 1}
    config = study_yaml(
        root, store_uri, args, name=f"p2-{c}-{repeat}", concurrent=c, resources=threads,
        num_cpus=os.cpu_count(),
    )  # fmt: skip
    split = compute_split(load_config(config), key, "driver")  # what lushpo splits
    optuna_name = _alone(c)
    job = {"store": store_uri, "key": key, "split": split.to_dict(), "seed": args.seed,
           "trials": args.trials, "max_epochs": args.max_epochs,
           "journal": str(root / f"{optuna_name}-{repeat}.log")}  # fmt: skip
    job_path = root / f"{optuna_name}-{repeat}.json"
    job_path.write_text(json.dumps(job))

    def optuna_alone() -> dict[str, Any]:
        argv = [sys.executable, "-m", "bench.p2_study", "optuna", str(job_path), str(c)]
        timed = _timed(argv, env)
        return timed | json.loads(timed.pop("stdout").splitlines()[-1])

    def lushpo() -> dict[str, Any]:
        timed = _timed([str(Path(sys.executable).with_name("lushpo")), "tune", "--config",
                        str(config)], env)  # fmt: skip
        del timed["stdout"]
        values, params = _lushpo_trials(root / "runs" / f"p2-{c}-{repeat}")
        return timed | {"values": values, "params": params}

    order = [(optuna_name, optuna_alone), (f"lushpo-{c}", lushpo)]
    pair = {name: measure() for name, measure in (order if repeat % 2 == 0 else order[::-1])}
    for name, contender in pair.items():
        if len(contender["values"]) != args.trials:
            raise RuntimeError(
                f"{name} finished {len(contender['values'])} of {args.trials} trials"
            )
    return pair


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure P2 at concurrency 1 and n, write bench/results/p2_study.json, return the record."""
    parser = argparse.ArgumentParser(prog="bench p2", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--max-epochs", type=int, default=40)
    add_feature_args(parser)
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 1,
                        help="n for the parallel pair (default: the cores; 1: the sequential "
                        "pair only)")  # fmt: skip
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of each pair; the value is the median of their ratios",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    levels = sorted({1, args.concurrency})
    pairs: dict[int, list[dict[str, dict[str, Any]]]] = {c: [] for c in levels}
    with tempfile.TemporaryDirectory(prefix="lushpo-p2-") as tmp:
        root = Path(tmp)
        store_uri, key, env = synthetic_store(root, args)
        for repeat in range(args.repeats):
            for c in levels:
                pairs[c].append(_pair(root, store_uri, key, env, args, c, repeat))

    # (lushpo, Optuna alone) wall times of each repeat, by concurrency
    walls = {
        c: [(pair[f"lushpo-{c}"]["wall_s"], pair[_alone(c)]["wall_s"]) for pair in pairs[c]]
        for c in levels
    }
    ratios = {c: [lushpo / alone for lushpo, alone in walls[c]] for c in levels}
    overheads = {c: [round(lushpo - alone, 1) for lushpo, alone in walls[c]] for c in levels}
    first = pairs[1][0]
    one, seq = first["lushpo-1"], first["optuna-seq"]
    record = {
        "metric": "P2",
        **{f"value_concurrency_{c}": round(statistics.median(ratios[c]), 4) for c in levels},
        "ratios": {f"concurrency_{c}": [round(r, 4) for r in ratios[c]] for c in levels},
        "goal": "<= 1.05 at every concurrency",
        "fixed_overhead_s": {f"concurrency_{c}": overheads[c] for c in levels},
        "same_configs_at_concurrency_1": _canon(one["params"]) == _canon(seq["params"]),
        "same_accuracies_at_concurrency_1": sorted(one["values"]) == sorted(seq["values"]),
        "contenders": [
            {name: {k: v for k, v in c.items() if k != "params"} for name, c in pair.items()}
            for c in levels
            for pair in pairs[c]
        ],
        "repeats": args.repeats,
        "trials": args.trials,
        "max_epochs": args.max_epochs,
        "early_stopping": "off (patience = max_epochs)",
        "features": f"synthetic float32 [{args.clips}, {args.frames}, {args.dim}], 5-fold "
        "stratified split",
        "space": SPACE,
        "seed": args.seed,
        "timing": "each contender a fresh process, from start to exit (imports included); "
        "the pair's order alternates between repeats",
        "machine": machine(),
    }
    return write_record(record, args.out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["optuna"]:
        _optuna_main(sys.argv[2], int(sys.argv[3]))
    else:
        run(sys.argv[1:])
