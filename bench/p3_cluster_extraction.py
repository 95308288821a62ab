"""P3: cluster extraction throughput on 2 nodes ÷ on 1 node, same clips, one run.

A Ray cluster of one node with one CPU extracts a feature set through
`pipeline.distributed.extract_on_cluster` (backbone actors, decode tasks, the driver as the one
writer); then a second one-CPU node joins and the same clips are extracted again into a fresh
store. Both runs are timed end to end (actor start and model build included), so the ratio is
what a user sees. Goal: >= 1.7.

    python -m bench p3 [--backbone xception] [--clips 60] [--frames 10] [--weights none]

Defaults: the first `--clips` clips of ``$LUSHPO_DATA_DIR`` (else ../shared/data), random
weights (inference cost does not depend on the weights' values).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._record import machine, write_record

__all__ = ["run"]

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "p3_cluster_extraction.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench p3", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="xception")
    parser.add_argument("--weights", default="none")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("LUSHPO_DATA_DIR") or REPO.parent / "shared" / "data"),
    )
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)

    import ray
    from ray.cluster_utils import Cluster

    from pipeline.backbones import resolve_weights
    from pipeline.distributed import extract_on_cluster, plan_feature_sets
    from pipeline.extract import library_versions, make_spec
    from pipeline.manifest import Manifest, build_manifest
    from pipeline.store import open_store

    everything = build_manifest(args.data_dir)
    eligible = tuple(c for c in everything.clips if c.frames >= args.frames)
    manifest = Manifest(clips=eligible[: args.clips])
    weights = {args.backbone: resolve_weights(args.backbone, args.weights)}
    (job,) = plan_feature_sets(manifest, weights, [args.frames], "even", make_spec)
    n_frames = len(manifest.clips) * args.frames

    head = {"num_cpus": 1, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    runs: dict[str, Any] = {}
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        with tempfile.TemporaryDirectory(prefix="lushpo-p3-") as tmp:
            for nodes in (1, 2):
                if nodes == 2:
                    cluster.add_node(num_cpus=1)
                    cluster.wait_for_nodes()
                store = open_store(Path(tmp, f"store-{nodes}").as_uri())
                load = os.getloadavg()[0]
                started = time.perf_counter()
                result = extract_on_cluster(
                    manifest, [job], store, batch_size=args.batch_size, progress=False,
                    log=lambda _line: None,
                )  # fmt: skip
                elapsed = time.perf_counter() - started
                runs[f"{nodes}_node"] = {
                    "elapsed_s": round(elapsed, 2),
                    "frames_per_s": round(n_frames / elapsed, 3),
                    "actor_slots": result.actor_slots,
                    "nodes_used": len(result.nodes[job.key]),
                    "load_average_1m_before": round(load, 2),
                }
    finally:
        ray.shutdown()
        cluster.shutdown()
    record = {
        "metric": "P3",
        "value": round(runs["2_node"]["frames_per_s"] / runs["1_node"]["frames_per_s"], 4),
        "goal": ">= 1.7",
        "runs": runs,
        "backbone": args.backbone,
        "weights": args.weights,
        "clips": len(manifest.clips),
        "frames_per_clip": args.frames,
        "frames": n_frames,
        "batch_size": args.batch_size,
        "includes": "end to end: actor start, model build, decoding (0-CPU tasks next to the "
        "actors), inference, assembly and the store write; each node capped at 1 CPU",
        "machine": machine(),
        "versions": library_versions(),
    }
    return write_record(record, args.out)


if __name__ == "__main__":
    run()
