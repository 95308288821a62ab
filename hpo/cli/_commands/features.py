"""`lushpo features [ls | export-paper KEY]`: extract backbone features into the feature store
once, list what the store holds, and write a set in the paper's own npy layout.

The only place this verb reads the environment: `LUSHPO_DATA_DIR`, `LUSHPO_WEIGHTS`,
`LUSHPO_CACHE_DIR`; the default store is the project folder's (`hpo.project`: `LUSHPO_STORE`, else
`.lushpo/store`). Extraction first computes the feature set's key from the
weights' sha256 and the dataset digest (no TensorFlow, no inference) and stops there when the store
already holds it, so re-running a pipeline step costs seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Literal

from hpo import project
from hpo.project import ADDRESS_ENV, CACHE_ENV, DATA_DIR_ENV, WEIGHTS_ENV
from pipeline.backbones import BACKBONES
from pipeline.files import atomic_write_text
from pipeline.frames import SAMPLINGS, VIDEO_SUFFIXES

__all__ = ["add_parser"]

DEFAULT_CACHE_DIR = Path("~/.cache/lushpo")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "features",
        help="extract backbone features into the store (once); ls; export-paper",
        description=(
            "Extract per-frame features of every clip with a keras.applications backbone into "
            "the feature store, unless the store already holds that exact feature set."
        ),
    )
    parser.add_argument(
        "--backbone",
        default=["xception"],
        type=_backbones,
        metavar="NAME[,NAME…]|all",
        help=f"backbones, comma-separated, or all: {', '.join(BACKBONES)} (default: xception)",
    )
    parser.add_argument(
        "--frames",
        type=_frame_counts,
        default=[20],
        metavar="N[,N…]",
        help="frames per clip, comma-separated, e.g. 5,10,15,20 (default: 20)",
    )
    parser.add_argument(
        "--sampling", choices=SAMPLINGS, default="even", help="frame sampler (default: even)"
    )
    parser.add_argument(
        "--weights",
        metavar="imagenet|PATH|URI|none",
        help=f"backbone weights (default: ${WEIGHTS_ENV}, else imagenet); for several backbones, "
        "NAME=SOURCE items and one bare default, e.g. xception=/w/x.h5,none",
    )
    _add_store(parser)
    parser.add_argument(
        "--data-dir", type=Path, metavar="DIR", help=f"data directory (default: ${DATA_DIR_ENV})"
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=32, metavar="B", help="frames per batch (32)"
    )
    parser.add_argument(
        "--on-bad-clip",
        choices=("fail", "skip"),
        default="fail",
        help="a clip that cannot be read: stop (fail, default) or leave it out and record it",
    )
    cluster = parser.add_argument_group(
        "cluster",
        "Several feature sets (or --address) run as Ray work: one backbone per actor, a GPU per "
        "actor where the node has one; one set without --address runs in this process.",
    )
    cluster.add_argument(
        "--address", metavar="ADDR", help=f"Ray cluster to join (default: ${ADDRESS_ENV})"
    )
    cluster.add_argument(
        "--cpus-per-actor", type=float, default=1.0, metavar="C", help="CPUs per actor (1)"
    )
    cluster.add_argument(
        "--gpus-per-actor",
        type=float,
        metavar="G",
        help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)",
    )
    parser.set_defaults(handler=_extract)

    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    ls = actions.add_parser("ls", help="list the feature sets in the store")
    _add_store(ls, default=argparse.SUPPRESS)
    ls.add_argument("--json", action="store_true", help="print the manifests as JSON")
    ls.set_defaults(handler=_ls, tensorflow=False)

    verify = actions.add_parser(
        "verify",
        help="check every object of the store's feature sets (or KEY's) against its sha256",
    )
    verify.add_argument("key", nargs="?", metavar="KEY", help="one feature set (default: all)")
    _add_store(verify, default=argparse.SUPPRESS)
    verify.set_defaults(handler=_verify, tensorflow=False)

    rm = actions.add_parser("rm", help="remove a feature set from the store")
    rm.add_argument("key", metavar="KEY", help="feature set key (see `lushpo features ls`)")
    _add_store(rm, default=argparse.SUPPRESS)
    rm.set_defaults(handler=_rm, tensorflow=False)

    export = actions.add_parser(
        "export-paper",
        help="write a feature set in the paper's npy layout",
        description=(
            "Write OUT/features_{N}/{backbone}/{features-D.npy, filenames.npy, labels.npy}, "
            "read by the paper's DataSource(features_dir='OUT/features_N', model=backbone)."
        ),
    )
    export.add_argument("key", metavar="KEY", help="feature set key (see `lushpo features ls`)")
    export.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    _add_store(export, default=argparse.SUPPRESS)
    export.set_defaults(handler=_export_paper)


def _add_store(parser: argparse.ArgumentParser, default: object = None) -> None:
    parser.add_argument(
        "--store",
        metavar="URI",
        default=default,
        help="feature store, file:///path or s3://bucket/prefix (default: $LUSHPO_STORE, "
        "else .lushpo/store)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _backbones(text: str) -> list[str]:
    from pipeline.distributed import parse_backbones

    try:
        return parse_backbones(text)
    except (KeyError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _frame_counts(text: str) -> list[int]:
    return list(dict.fromkeys(_positive_int(part) for part in text.split(",") if part.strip()))


def _fail(message: object) -> int:
    print(f"lushpo features: error: {message}", file=sys.stderr)
    return 1


def _cache_dir() -> Path:
    return Path(project.flag_or_env(None, CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def _data_dir(args: argparse.Namespace) -> Path:
    data_dir = project.flag_or_env(getattr(args, "data_dir", None), DATA_DIR_ENV)
    if data_dir and not Path(data_dir).is_dir():
        print(f"lushpo features: error: data directory {data_dir} does not exist; run `lushpo "
              f"data fetch --data-dir {data_dir}` or pass the folder that holds the data",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2)  # a missing input: a usage error
    if data_dir:
        return Path(data_dir)
    print(f"lushpo features: error: no data directory; pass --data-dir or set ${DATA_DIR_ENV}",
          file=sys.stderr)  # fmt: skip
    raise SystemExit(2)  # a missing input: a usage error


def _open_store(args: argparse.Namespace):
    from pipeline.store import open_store

    return open_store(getattr(args, "store", None) or project.store_uri(), cache_dir=_cache_dir())


def _extract(args: argparse.Namespace) -> int:
    from pipeline.backbones import WeightsError, resolve_weights
    from pipeline.cluster import ClusterConnectError
    from pipeline.distributed import parse_weights, plan_feature_sets
    from pipeline.extract import make_spec
    from pipeline.frames import BadClipError
    from pipeline.store import StoreError

    data_dir = _data_dir(args)
    weights_text = project.flag_or_env(args.weights, WEIGHTS_ENV) or "imagenet"
    address = project.flag_or_env(args.address, ADDRESS_ENV)
    try:
        store = _open_store(args)
        weights = {
            backbone: resolve_weights(backbone, source, cache_dir=_cache_dir())
            for backbone, source in parse_weights(weights_text, args.backbone).items()
        }
        manifest = _manifest(data_dir, args.on_bad_clip, _cache_dir())
        jobs = plan_feature_sets(manifest, weights, args.frames, args.sampling, make_spec)
        todo = [job for job in jobs if not _sound(store, job.key)]
        for job in jobs:
            if job not in todo:
                print(f"found in store: {job.key} ({store.uri}); nothing to do")
        if not todo:
            return 0
        store.check_writable()  # before the extraction, not after it
        if len(todo) == 1 and address is None:
            return _extract_here(args, store, manifest, todo[0])
        return _extract_on_cluster(args, store, manifest, todo, address)
    except (
        BadClipError,
        WeightsError,
        StoreError,
        ClusterConnectError,
        FileNotFoundError,
        ValueError,
        RuntimeError,
    ) as error:
        return _fail(error)


def _sound(store, key: str) -> bool:
    """Whether `key` is in the store and passes its checksums; a set that fails them is
    removed, said so, and counts as missing (the extraction that follows rebuilds it)."""
    from pipeline.store import CorruptObjectError, FeatureSetNotFoundError

    try:
        store.verify(key)  # reads the manifest once: no separate `exists`
    except FeatureSetNotFoundError:
        return False
    except CorruptObjectError as error:
        print(f"{error}; removing it and extracting it again", file=sys.stderr)
        store.remove(key)
        return False
    return True


def _verify(args: argparse.Namespace) -> int:
    from pipeline.store import CorruptObjectError, StoreError

    try:
        store = _open_store(args)
        keys = [args.key] if args.key else [m["key"] for m in store.list()]
        bad = 0
        for key in keys:
            try:
                store.verify(key)
                print(f"ok: {key}")
            except CorruptObjectError as error:
                bad += 1
                print(f"CORRUPT: {error}; `lushpo features rm {key}`, then extract it again")
    except (StoreError, ValueError) as error:
        return _fail(error)
    print(f"{len(keys) - bad} of {len(keys)} feature set(s) in {store.uri} verified")
    return 1 if bad else 0


def _rm(args: argparse.Namespace) -> int:
    from pipeline.store import StoreError

    try:
        store = _open_store(args)
        store.remove(args.key)
    except (StoreError, ValueError) as error:
        return _fail(error)
    print(f"removed {args.key} from {store.uri}")
    return 0


def _extract_here(args: argparse.Namespace, store, manifest, job) -> int:
    """One set, no cluster: in this process, decoding overlapped with inference."""
    from pipeline.extract import extract

    print(f"extracting {job.key}: {len(manifest)} clips → {store.uri}", file=sys.stderr)
    fs = extract(
        manifest,
        job.backbone,
        job.weights,
        job.spec.frames,
        job.spec.sampling,
        batch_size=args.batch_size,
        on_bad_clip=args.on_bad_clip,
        progress=True,
        cache_dir=_cache_dir(),
    )
    key = store.put(fs)
    skipped = fs.meta.get("skipped", [])
    print(f"stored {key}: shape {tuple(fs.features.shape)}, {len(skipped)} clip(s) skipped")
    for entry in skipped:
        print(f"  skipped {entry['clip']}: {entry['reason']}")
    return 0


def _extract_on_cluster(args: argparse.Namespace, store, manifest, todo, address) -> int:
    """Several sets, or a cluster: Ray actors on the cluster's nodes (local instance without
    an address); this process only plans, ships clip bytes and writes the finished sets."""
    import ray

    from pipeline.cluster import connect
    from pipeline.distributed import extract_on_cluster

    where = address or "a local Ray instance"
    print(f"extracting {len(todo)} set(s), {len(manifest)} clips, on {where}", file=sys.stderr)
    started = connect(address)
    try:
        result = extract_on_cluster(
            manifest,
            todo,
            store,
            cpus_per_actor=args.cpus_per_actor,
            gpus_per_actor=args.gpus_per_actor,
            batch_size=args.batch_size,
            on_bad_clip=args.on_bad_clip,
            cache_dir=project.flag_or_env(None, CACHE_ENV),
            log=lambda line: print(line, file=sys.stderr),
        )
    finally:
        if started:
            ray.shutdown()
    for key in result.written:
        shape = "×".join(str(n) for n in result.shapes[key])
        print(f"stored {key}: {shape} on node(s) {', '.join(n[:8] for n in result.nodes[key])}")
    print(
        f"{len(result.written)} set(s) in {result.elapsed_s:.1f} s, "
        f"{result.frames_per_s:.1f} frames/s over {result.actor_slots} actor slot(s)"
    )
    return 0


def _ls(args: argparse.Namespace) -> int:
    from pipeline.store import StoreError

    try:
        store = _open_store(args)
        manifests = store.list()
    except (StoreError, ValueError) as error:
        return _fail(error)
    if args.json:
        print(json.dumps(manifests, indent=1, ensure_ascii=False))
        return 0
    print(format_listing(manifests, store.uri))
    return 0


def format_listing(manifests: list[dict], uri: str) -> str:
    """The table `lushpo features ls` prints: key, backbone, frames, sampling, shape, created."""
    header = ("key", "backbone", "frames", "sampling", "shape", "created")
    rows = [
        (
            m["key"],
            m["spec"]["backbone"],
            str(m["spec"]["frames"]),
            m["spec"]["sampling"],
            "×".join(str(n) for n in m["shape"]),
            str(m.get("meta", {}).get("created_at", "")),
        )
        for m in manifests
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"store: {uri} ({len(rows)} feature set(s))"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
              for r in [header, *rows]]  # fmt: skip
    return "\n".join(lines)


def _export_paper(args: argparse.Namespace) -> int:
    from pipeline.paper_layout import write_paper_layout
    from pipeline.store import StoreError

    try:
        store = _open_store(args)
        fs = store.get(args.key)
        directory = write_paper_layout(fs, args.out)
    except (StoreError, KeyError, ValueError, OSError) as error:
        return _fail(error)
    clips, frames, dim = fs.features.shape
    print(f"wrote {directory} ({clips} clips × {frames} frames × {dim})")
    print(
        f"paper: DataSource(seq_length={frames}, features_length={dim}, "
        f"features_dir='{directory.parent}', model='{directory.name}')"
    )
    return 0


# --- manifest cache ----------------------------------------------------------------------------
# Counting frames decodes every clip (several seconds for ../shared/data); a re-run over an
# unchanged data dir reuses the manifest. Each input file is checked as git checks its index:
# size, mtime, ctime and inode (a file replaced by a copy with the same size and a restored
# mtime has a new inode and ctime; ctime cannot be set back), plus a sha256 of its first and
# last 64 KiB against an edit in place. A full hash would read every clip on every run.


def _manifest(data_dir: Path, on_bad_clip: Literal["fail", "skip"], cache_dir: Path):
    from pipeline.manifest import Manifest, build_manifest

    if not (data_dir / "pocus" / "convex").is_dir():  # build_manifest says what is missing
        return build_manifest(data_dir, on_bad_clip=on_bad_clip)
    stamp = _stamp(data_dir, on_bad_clip)
    name = hashlib.sha256(f"{data_dir.resolve()}|{on_bad_clip}".encode()).hexdigest()[:16]
    path = cache_dir / "manifests" / f"{name}.json"
    try:
        cached = json.loads(path.read_text())
        if cached["stamp"] == stamp:
            return Manifest.from_json(cached["manifest"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent, stale or unreadable: rebuild
    manifest = build_manifest(data_dir, on_bad_clip=on_bad_clip, progress=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"stamp": stamp, "manifest": manifest.to_json()}))
    except OSError as error:  # a read-only cache only costs speed
        print(f"note: cannot cache the manifest in {path.parent}: {error}", file=sys.stderr)
    return manifest


def _edges_sha256(path: Path, size: int, edge: int = 1 << 16) -> str:
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read(edge))
        if size > edge:
            handle.seek(max(edge, size - edge))
            digest.update(handle.read(edge))
    return digest.hexdigest()


def _stamp(data_dir: Path, on_bad_clip: str) -> dict:
    """The stat fields and edge hash of every clip and paper file `build_manifest` reads."""
    clips_dir = data_dir / "pocus" / "convex"
    files = sorted(
        p for p in clips_dir.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
    )
    files += [data_dir / "paper" / "videos.csv", data_dir / "paper" / "cross_val.json"]
    stats: dict[str, list[object] | None] = {}
    for p in files:
        try:
            st = p.stat()
            stats[str(p.relative_to(data_dir))] = [
                st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, _edges_sha256(p, st.st_size)
            ]  # fmt: skip
        except FileNotFoundError:
            stats[str(p.relative_to(data_dir))] = None
    return {"data_dir": str(data_dir.resolve()), "on_bad_clip": on_bad_clip, "files": stats}
