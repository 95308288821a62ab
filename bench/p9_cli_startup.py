"""P9: how long `lushpo` takes to answer before it does any work (issue 23, item 5).

Times, as a user's shell does (a fresh process each), `lushpo --version`, `lushpo --help`,
`lushpo features ls` on an empty store and a usage error (`lushpo tune --frobnicate`), in quiet
mode (the default). Side by side in the same run, the same four through the previous start-up,
which imported TensorFlow before parsing the arguments (``import tensorflow`` then the CLI).
Each figure is the median of `--repeats` runs. Goal: every command under 2 s.

    python -m bench p9 [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._record import machine, write_record

__all__ = ["run"]

RESULTS = Path(__file__).resolve().parent / "results" / "p9_cli_startup.json"
GOAL_S = 2.0
# The start-up before the fix: TensorFlow imported (and its devices set up) before parsing.
_BEFORE = (
    "import sys; from hpo.cli._quiet import quiet; quiet(tensorflow=True); "
    "from hpo.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _commands(store: str) -> dict[str, list[str]]:
    return {
        "--version": ["--version"],
        "--help": ["--help"],
        "features ls": ["features", "ls", "--store", store],
        "a usage error": ["tune", "--frobnicate"],
    }


def _median_s(argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=False, timeout=300)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 3)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench p9", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    lushpo = str(Path(sys.executable).with_name("lushpo"))
    with tempfile.TemporaryDirectory(prefix="lushpo-p9-") as tmp:
        commands = _commands(Path(tmp).as_uri())
        now = {name: _median_s([lushpo, *a], args.repeats) for name, a in commands.items()}
        before = {
            name: _median_s([sys.executable, "-c", _BEFORE, *a], args.repeats)
            for name, a in commands.items()
        }
    record = {
        "metric": "P9",
        "value": max(now.values()),
        "goal": f"< {GOAL_S} s (the slowest of the four commands, median of {args.repeats})",
        "seconds": now,
        "seconds_before": before,
        "machine": machine(),
    }
    return write_record(record, args.out)


if __name__ == "__main__":
    run()
