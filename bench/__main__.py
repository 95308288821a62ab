"""``python -m bench [ID [ARGS...]]``: run one benchmark with its own flags, or all in turn."""

from __future__ import annotations

import importlib
import sys

from bench import BENCHMARKS


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: python -m bench [{'|'.join(BENCHMARKS)} [ARGS...]]  (no ID: run all)")
        return 0
    if argv and argv[0] not in BENCHMARKS:
        print(f"bench: unknown benchmark {argv[0]!r}; choose one of: {', '.join(BENCHMARKS)}")
        return 2
    chosen = [argv[0]] if argv else list(BENCHMARKS)
    for name in chosen:
        print(f"== bench {name} ({BENCHMARKS[name]})", flush=True)
        importlib.import_module(BENCHMARKS[name]).run(argv[1:] if argv else [])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
