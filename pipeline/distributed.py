"""Many feature sets at once, as Ray work on a cluster's nodes: a plan, decode tasks, backbone
actors, one writer.

Why this shape. The paper's grid is 12 backbones × N ∈ {5, 10, 15, 20}; inference dominates and
wants every node's GPU (or CPUs), while decoding is cheap but should not be repeated per backbone.
So:

- `plan_feature_sets` computes every requested set's store key on the driver (weights sha256 and
  dataset digest, no TensorFlow) and keeps the ones the store lacks.
- Clip *bytes* travel through Ray's object store (the clips need not be on the workers' disks).
  Each clip is decoded once per sampling plan (frames N, sampling), by a decoder actor on the node
  of a backbone actor that consumes it, and resized there once per input size the plan's
  backbones need; decoding runs ahead of inference, and models load while the first clips decode.
  `pipeline.frames.resize_frames` makes that byte-identical to decoding at each size.
- One actor holds one backbone (`num_cpus` / `num_gpus` per actor, a GPU where the node has one)
  and turns decoded clips into features in fixed batches, as `pipeline.extract` does in-process.
  When the cluster has fewer actor slots than backbones, backbones run in waves; decoded clips are
  kept for the plan's later waves and dropped once no backbone needs them.
- The driver is the one writer: a finished set goes to the store with `FeatureStore.put` (objects,
  then the manifest last), so a set is written exactly once and a rerun plans nothing.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.backbones import BACKBONES, ResolvedWeights, get_backbone, resolve_weights
from pipeline.extract import BatchedInference, dataset_meta, extraction_versions
from pipeline.files import on_node
from pipeline.frames import BadClipError, read_frames, resize_frames
from pipeline.manifest import Clip, Manifest
from pipeline.store import FeatureSet, FeatureSetSpec, FeatureStore

__all__ = [
    "ClusterExtraction",
    "FeatureJob",
    "extract_on_cluster",
    "parse_backbones",
    "parse_weights",
    "plan_feature_sets",
]

DECODE_THREADS = 2  # concurrent decodes per node (OpenCV and NumPy release the GIL)


@dataclass(frozen=True)
class FeatureJob:
    """One feature set to compute: a backbone with its weights, on one sampling plan."""

    spec: FeatureSetSpec
    weights: ResolvedWeights

    @property
    def key(self) -> str:
        return self.spec.key()

    @property
    def backbone(self) -> str:
        return self.spec.backbone

    @property
    def plan(self) -> tuple[int, str]:
        """The sampling plan: (frames, sampling); clips are decoded once per plan."""
        return (self.spec.frames, self.spec.sampling)


def parse_backbones(text: str) -> list[str]:
    """``xception,vgg16`` or ``all`` → registry names, in the order given (``all``: registry
    order). Raises ValueError naming the unknown name."""
    if text.strip() == "all":
        return list(BACKBONES)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("--backbone needs at least one name, or 'all'")
    for name in names:
        get_backbone(name)  # UnknownBackboneError lists the valid names
    return list(dict.fromkeys(names))


def parse_weights(text: str, backbones: Sequence[str]) -> dict[str, str]:
    """``--weights`` for several backbones: comma-separated items, ``NAME=SOURCE`` for one
    backbone and a bare ``SOURCE`` (imagenet, none, a path, an s3:// URI) for the others.

    ``xception=/w/xception.h5,none`` → Xception from that file, every other backbone random.
    """
    default: str | None = None
    chosen: dict[str, str] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if sep and name in BACKBONES:
            chosen[name] = value
        elif default is None:
            default = item
        else:
            raise ValueError(
                f"--weights {text!r}: two defaults ({default!r}, {item!r}); give one bare source "
                "and NAME=SOURCE for the others"
            )
    missing = [b for b in backbones if b not in chosen and default is None]
    if missing:
        raise ValueError(f"--weights {text!r} gives no weights for {', '.join(missing)}")
    return {b: chosen.get(b, default or "") for b in backbones}


def plan_feature_sets(
    manifest: Manifest,
    weights: dict[str, ResolvedWeights],
    frames: Iterable[int],
    sampling: str,
    make_spec: Callable[[Manifest, str, str, int, str], FeatureSetSpec],
) -> list[FeatureJob]:
    """Every (backbone, frames) set asked for, plan by plan (N ascending), backbones in order."""
    return [
        FeatureJob(make_spec(manifest, backbone, resolved.sha256, n, sampling), resolved)
        for n in sorted(set(frames))
        for backbone, resolved in weights.items()
    ]


# --- Ray side -----------------------------------------------------------------------------------


class _Decoder:
    """A Ray actor, one per node that runs backbone actors: decodes clips for them."""

    @staticmethod
    def decode(
        data: bytes, suffix: str, count: int, frames: int, sampling: str, sizes: tuple[int, ...]
    ) -> dict[int, np.ndarray] | BadClipError:
        """One clip's N frames at each input size (uint8 RGB), or the clip's error (returned,
        so the driver decides whether to skip it)."""
        handle, path = tempfile.mkstemp(suffix=suffix, prefix="lushpo-clip-")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            native = read_frames(path, frames, sampling, None, count=count)
            return {size: resize_frames(native, (size, size)) for size in sizes}
        except BadClipError as error:
            return error
        finally:
            os.unlink(path)


class _BackboneWorker:
    """A Ray actor holding one backbone; `run` turns decoded clips into features.

    The constructor only records where the actor landed, so the driver can place decoding next
    to it at once; `load` (TensorFlow, the weights, the model: seconds) runs as the actor's first
    call, while the first clips decode."""

    def __init__(self) -> None:
        import ray

        self.node_id = ray.get_runtime_context().get_node_id()

    def where(self) -> str:
        return self.node_id

    def load(
        self,
        backbone: str,
        weights_source: str,
        weights_sha256: str,
        cache_dir: str | None,
        threads: int | None,
        batch_size: int,
    ) -> tuple[str, dict[str, str]]:
        """Build the model; returns the device ("CPU" or "GPU") and the library versions that
        compute the features (recorded in each set's meta)."""
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
        cache_dir = on_node(cache_dir, self.node_id)
        resolved = resolve_weights(backbone, weights_source, cache_dir=cache_dir)
        if resolved.sha256 != weights_sha256:
            raise ValueError(
                f"weights {weights_source!r} for {backbone} on node {self.node_id} have sha256 "
                f"{resolved.sha256}, but the driver planned {weights_sha256}: every node must "
                "see the same file (use an s3:// URI or a shared path)"
            )
        self.entry = get_backbone(backbone)
        self.model = self.entry.build(resolved.path)
        self.batch_size = batch_size
        device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
        return device, extraction_versions()

    def run(self, frames: int, *decoded: dict[int, np.ndarray] | BadClipError) -> list[Any]:
        """Per clip, in order: features ``float32 [frames, dim]``, or the clip's BadClipError.
        Frames go through the model in batches of `batch_size` packed across clip boundaries."""
        size = self.entry.input_size
        good = [d for d in decoded if not isinstance(d, BadClipError)]
        run = BatchedInference(self.entry, self.model, frames, self.batch_size, len(good))
        for clip in good:
            run.add(self.entry.preprocess(clip[size]))
        run.flush()
        features = iter(run.features())
        return [d if isinstance(d, BadClipError) else next(features) for d in decoded]


@dataclass
class ClusterExtraction:
    """What `extract_on_cluster` did: keys written, per-set nodes, throughput."""

    written: list[str]
    shapes: dict[str, tuple[int, ...]]  # key → (clips, frames, dim)
    nodes: dict[str, list[str]]  # key → node ids whose actors computed it
    frames_per_s: float
    elapsed_s: float
    actor_slots: int


def _actor_slots(cpus: float, gpus: float) -> int:
    import ray

    slots = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        fit = math.floor(res.get("CPU", 0) / cpus) if cpus > 0 else 10**6
        if gpus > 0:
            fit = min(fit, math.floor(res.get("GPU", 0) / gpus))
        slots += max(0, fit)
    return slots


def _waves(jobs: Sequence[FeatureJob], slots: int) -> list[list[str]]:
    """Backbones in groups of at most `slots`, in the order jobs name them."""
    backbones = list(dict.fromkeys(j.backbone for j in jobs))
    return [backbones[i : i + slots] for i in range(0, len(backbones), slots)]


def extract_on_cluster(
    manifest: Manifest,
    jobs: Sequence[FeatureJob],
    store: FeatureStore,
    *,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float | None = None,
    batch_size: int = 32,
    on_bad_clip: str = "fail",
    cache_dir: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ClusterExtraction:
    """Compute `jobs` on the connected Ray cluster and put each set into `store` once.

    Args:
        manifest: the clips (their files are read here, on the driver, and shipped as bytes).
        jobs: the sets to compute (`plan_feature_sets`, less those the store holds).
        cpus_per_actor, gpus_per_actor: each backbone actor's resources; ``gpus_per_actor=None``
            takes one GPU per actor when the cluster has GPUs, else none.
        cache_dir: the workers' weights cache; ``{node_id}`` is filled in on each node.

    Raises:
        BadClipError: with ``on_bad_clip="fail"``, naming every bad clip found.
        RuntimeError: no node has the resources one actor asks for.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not jobs:
        return ClusterExtraction([], {}, {}, 0.0, 0.0, 0)
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    slots = _actor_slots(cpus_per_actor, gpus_per_actor)
    if slots < 1:
        raise RuntimeError(
            f"no node of the Ray cluster has {cpus_per_actor} CPU(s) and {gpus_per_actor} GPU(s) "
            "free for one backbone actor; lower --cpus-per-actor / --gpus-per-actor or add nodes"
        )
    # Any: Ray's annotations do not carry an actor class's methods through `ray.remote`
    worker_cls: Any = ray.remote(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)(_BackboneWorker)
    # Decoding is light next to inference: it takes no CPU slot (the actors hold them) and runs
    # in one long-lived decoder actor per node, next to the backbone actors that consume it.
    # (Bare tasks made Ray start a new worker process for every burst of decodes, which cost
    # more CPU than the decoding on small nodes.)
    # max_concurrency is a documented actor option that Ray's overloads of `remote` leave out
    decoder_cls: Any = ray.remote(  # type: ignore[call-overload]
        num_cpus=0, max_concurrency=DECODE_THREADS
    )(_Decoder)
    decoders: dict[str, Any] = {}  # node id → its decoder actor
    threads = max(1, int(cpus_per_actor)) if gpus_per_actor == 0 else None

    clips_by_plan: dict[tuple[int, str], list[Clip]] = {}
    skipped: dict[tuple[int, str], list[dict[str, str]]] = defaultdict(list)
    for plan in dict.fromkeys(j.plan for j in jobs):
        n = plan[0]
        keep = [c for c in manifest.clips if c.frames >= n]
        short = [c for c in manifest.clips if c.frames < n]
        reasons = [
            {"clip": c.id, "reason": f"has {c.frames} frames, fewer than {n}"} for c in short
        ]
        if short and on_bad_clip == "fail":
            names = ", ".join(c.id for c in short)
            raise BadClipError(short[0].path.parent, f"fewer than {n} frames: {names}")
        clips_by_plan[plan] = keep
        skipped[plan] += reasons
    sizes_by_plan = {
        plan: tuple(sorted({get_backbone(j.backbone).input_size for j in jobs if j.plan == plan}))
        for plan in clips_by_plan
    }
    remaining_by_plan = {plan: sum(j.plan == plan for j in jobs) for plan in clips_by_plan}

    total = sum(len(clips_by_plan[j.plan]) * j.spec.frames for j in jobs)
    bar = tqdm(total=total, unit="frame", desc=f"{len(jobs)} feature set(s)", disable=not progress)
    started = time.perf_counter()
    blobs: dict[str, Any] = {}  # clip id → ObjectRef of its bytes
    decoded: dict[tuple[int, str], dict[str, Any]] = defaultdict(dict)
    written: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}
    nodes: dict[str, set[str]] = defaultdict(set)
    versions: dict[str, dict[str, str]] = {}  # backbone → libraries on its actors
    bad: dict[str, str] = {}
    done_frames = 0

    def decoded_ref(plan: tuple[int, str], clip: Clip, node: str) -> Any:
        ref = decoded[plan].get(clip.id)
        if ref is None:
            if clip.id not in blobs:
                blobs[clip.id] = ray.put(Path(clip.path).read_bytes())
            if node not in decoders:
                decoders[node] = decoder_cls.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
                ).remote()
            ref = decoders[node].decode.remote(
                blobs[clip.id], Path(clip.path).suffix, clip.frames, plan[0], plan[1],
                sizes_by_plan[plan],
            )  # fmt: skip
            decoded[plan][clip.id] = ref
        return ref

    try:
        for wave in _waves(jobs, slots):
            per_backbone = max(1, slots // len(wave))
            actors: dict[str, list[tuple[Any, str]]] = {}
            loading: dict[str, list[Any]] = {}  # backbone → its actors' `load` results
            for backbone in wave:
                weights = next(j.weights for j in jobs if j.backbone == backbone)
                handles = [worker_cls.remote() for _ in range(per_backbone)]
                where = ray.get([h.where.remote() for h in handles])
                actors[backbone] = list(zip(handles, where, strict=True))
                loading[backbone] = [
                    h.load.remote(
                        backbone, weights.source, weights.sha256, cache_dir, threads, batch_size
                    )
                    for h in handles
                ]
            wave_jobs = [j for j in jobs if j.backbone in wave]
            queue: deque[tuple[FeatureJob, int, list[Clip]]] = deque()
            calls: dict[str, int] = defaultdict(int)  # actor calls per set
            for job in wave_jobs:
                clips = clips_by_plan[job.plan]
                # about one batch per call, and at least two calls per actor (load balance)
                per_call = min(batch_size // job.spec.frames, len(clips) // (2 * per_backbone))
                per_call = max(1, per_call)
                for index, start in enumerate(range(0, len(clips), per_call)):
                    queue.append((job, index, clips[start : start + per_call]))
                    calls[job.key] += 1
            parts: dict[str, dict[int, tuple[list[Clip], list[Any]]]] = defaultdict(dict)
            inflight: dict[Any, tuple[FeatureJob, int, list[Clip], str]] = {}
            window = 2 * sum(len(a) for a in actors.values())
            while queue or inflight:
                while queue and len(inflight) < window:
                    job, index, chunk = queue.popleft()
                    actor, node = actors[job.backbone][index % len(actors[job.backbone])]
                    refs = [decoded_ref(job.plan, c, node) for c in chunk]
                    ref = actor.run.remote(job.spec.frames, *refs)
                    inflight[ref] = (job, index, chunk, node)
                for job, index, chunk in itertools.islice(queue, window):  # decode ahead
                    node = actors[job.backbone][index % len(actors[job.backbone])][1]
                    for clip in chunk:
                        decoded_ref(job.plan, clip, node)
                if loading:  # the first calls and their decoding are queued: now wait for models
                    for backbone, refs in loading.items():
                        loaded = ray.get(refs)
                        versions[backbone] = loaded[0][1]
                        log(
                            f"{backbone}: {len(refs)} actor(s) on "
                            + ", ".join(
                                f"{node[:8]} ({device})"
                                for (_, node), (device, _) in zip(
                                    actors[backbone], loaded, strict=True
                                )
                            )
                        )
                    loading = {}
                ready, _ = ray.wait(list(inflight), num_returns=1)
                job, index, chunk, node = inflight.pop(ready[0])
                features = ray.get(ready[0])
                for clip, f in zip(chunk, features, strict=True):
                    if isinstance(f, BadClipError):
                        bad[clip.id] = f.reason
                if bad and on_bad_clip == "fail":
                    raise BadClipError(
                        manifest.clips[0].path.parent,
                        "unreadable clips: "
                        + "; ".join(f"{cid}: {why}" for cid, why in sorted(bad.items())),
                    )
                parts[job.key][index] = (chunk, features)
                nodes[job.key].add(node)
                done_frames += len(chunk) * job.spec.frames
                bar.update(len(chunk) * job.spec.frames)
                elapsed = time.perf_counter() - started
                bar.set_postfix_str(
                    f"{len(written)}/{len(jobs)} sets, {done_frames / elapsed:.1f} frames/s",
                    refresh=False,
                )
                if len(parts[job.key]) == calls[job.key]:
                    fs = _assemble(
                        job, parts.pop(job.key), skipped[job.plan], manifest, batch_size,
                        sorted(nodes[job.key]), time.perf_counter() - started,
                        versions[job.backbone],
                    )  # fmt: skip
                    written.append(store.put(fs))
                    shapes[written[-1]] = tuple(fs.features.shape)
                    remaining_by_plan[job.plan] -= 1
                    if remaining_by_plan[job.plan] == 0:
                        decoded.pop(job.plan, None)  # no backbone needs these frames any more
            for pairs in actors.values():
                for handle, _ in pairs:
                    ray.kill(handle)
    finally:
        bar.close()
        for decoder in decoders.values():
            ray.kill(decoder)
    elapsed = time.perf_counter() - started
    return ClusterExtraction(
        written,
        shapes,
        {k: sorted(v) for k, v in nodes.items()},
        done_frames / elapsed if elapsed > 0 else 0.0,
        elapsed,
        slots,
    )


def _assemble(
    job: FeatureJob,
    parts: dict[int, tuple[list[Clip], Any]],
    skipped: list[dict[str, str]],
    manifest: Manifest,
    batch_size: int,
    nodes: list[str],
    elapsed: float,
    versions: dict[str, str],
) -> FeatureSet:
    kept: list[Clip] = []
    rows: list[np.ndarray] = []
    bad: list[dict[str, str]] = []
    for index in sorted(parts):
        chunk, features = parts[index]
        for clip, f in zip(chunk, features, strict=True):
            if isinstance(f, BadClipError):
                bad.append({"clip": clip.id, "reason": f.reason})
            else:
                kept.append(clip)
                rows.append(np.asarray(f, dtype=np.float32))
    if not kept:
        raise BadClipError(manifest.clips[0].path.parent, "none of the clips could be read")
    features = np.stack(rows)
    meta = dataset_meta(
        manifest, job.weights, job.backbone, skipped + bad, batch_size, elapsed, versions
    )
    meta["frames_per_s"] = None  # sets share actors and decoding: see the run's own figure
    meta["computed_on"] = {"nodes": nodes, "via": "ray"}
    return FeatureSet(
        spec=job.spec,
        features=features,
        clip_ids=tuple(c.id for c in kept),
        labels=np.array([c.label_index for c in kept], dtype=np.int64),
        meta=meta,
    )
