"""Preparing a study on the driver, before any trial: its feature sets found in the store, its
split, the settings every trial shares, the storage filesystem, and the Ray instance it
joins or starts. `run_studies`, the grid, nested CV and rescore all prepare this way."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import pyarrow.fs as pafs
import ray

from hpo.search._config import StudyConfig
from hpo.train import TrialSettings
from pipeline.cluster import connect
from pipeline.files import on_node, s3_filesystem
from pipeline.groups import grouped_split, read_groups
from pipeline.manifest import (
    LABELS,
    METADATA_CSV,
    Clip,
    Manifest,
    Split,
    paper_split,
    stratified_split,
)
from pipeline.store import FeatureSetNotFoundError, open_store

__all__ = [
    "cache_dir_for",
    "compute_split",
    "on_this_node",
    "resolve_feature_sets",
    "start_ray",
    "storage_filesystem",
    "trial_settings",
]


def storage_filesystem(cfg: StudyConfig) -> tuple[pafs.FileSystem | None, str]:
    """(filesystem, path) for RunConfig: local paths as they are; s3:// through pyarrow's
    S3FileSystem pointed at the configured endpoint (e.g. MinIO or moto) when there is one."""
    path = cfg.storage.storage_path
    if not path.startswith("s3://"):
        return None, path
    return s3_filesystem(cfg.storage.endpoint_url), path[len("s3://") :].rstrip("/")


def resolve_feature_sets(cfg: StudyConfig) -> dict[tuple[str, int], str]:
    """{(backbone, frames): store key} for every feature set the study may read, or a clear error
    naming the store and what it holds. Runs on the driver before any Ray work."""
    store = open_store(cfg.store_uri)  # ValueError naming the fix when the config has none
    fs_cfg = cfg.feature_set
    if fs_cfg.key is not None:
        if not store.exists(fs_cfg.key):
            raise store.not_found(fs_cfg.key)
        return {(fs_cfg.backbone[0], fs_cfg.frames[0]): fs_cfg.key}
    keys: dict[tuple[str, int], str] = {}
    for backbone in fs_cfg.backbone:
        for frames in fs_cfg.frames:
            found = store.find(backbone, frames, fs_cfg.sampling)
            if not found:
                held = [m["key"] for m in store.list()]
                raise FeatureSetNotFoundError(
                    f"{backbone}-f{frames}-{fs_cfg.sampling}", store.uri, held
                )
            if len(found) > 1:
                raise ValueError(
                    f"store {store.uri} holds {len(found)} feature sets for {backbone}, "
                    f"{frames} frames, {fs_cfg.sampling} sampling: {found}; "
                    "pick one with feature_set.key"
                )
            keys[(backbone, frames)] = found[0]
    return keys


def cache_dir_for(cfg: StudyConfig, node_id: str) -> str | None:
    """The node cache for `node_id` (`pipeline.files.on_node`)."""
    return on_node(cfg.cache_dir, node_id)


def compute_split(cfg: StudyConfig, key: str, node_id: str) -> Split:
    """The CV split restricted to the feature set's clips (read through this node's cache)."""
    fs = open_store(cfg.store_uri, cache_dir=cache_dir_for(cfg, node_id)).get(key)
    frames = int(fs.features.shape[1])
    manifest = Manifest(
        clips=tuple(
            sorted(
                (
                    Clip(id=cid, label=LABELS[int(lab)], path=Path(cid), frames=frames)
                    for cid, lab in zip(fs.clip_ids, fs.labels, strict=True)
                ),
                key=lambda c: c.id,
            )
        )
    )
    if cfg.split.kind == "stratified":
        return stratified_split(manifest, cfg.split.k, cfg.split.seed)
    if cfg.split.kind == "grouped":
        metadata = cfg.split.metadata or str(Path(cfg.split.data_dir or "") / METADATA_CSV)
        if not Path(metadata).is_file():
            raise FileNotFoundError(
                f"grouped split needs {metadata} (split.metadata / split.data_dir / "
                "LUSHPO_DATA_DIR)"
            )
        groups = read_groups(metadata, manifest.ids, cfg.split.group_by)
        return grouped_split(manifest, groups, cfg.split.k, cfg.split.seed)
    cross_val = cfg.split.cross_val or str(
        Path(cfg.split.data_dir or "") / "paper" / "cross_val.json"
    )
    if not Path(cross_val).is_file():
        raise FileNotFoundError(
            f"paper split needs {cross_val} (split.cross_val / split.data_dir / LUSHPO_DATA_DIR)"
        )
    return paper_split(manifest, Path(cross_val))


def trial_settings(
    cfg: StudyConfig, keys: Mapping[tuple[str, int], str], split: Split
) -> TrialSettings:
    """What every trial of this study shares: where its features are, the split, the budget."""
    return TrialSettings(
        store_uri=cfg.store_uri,
        cache_dir=cfg.cache_dir,
        feature_sets=(
            next(iter(keys.values()))
            if len(keys) == 1
            else {f"{b}/{n}": k for (b, n), k in keys.items()}
        ),
        split=split,
        max_epochs=cfg.budget.max_epochs,
        patience=cfg.budget.patience,
        validation_fraction=cfg.training.validation_fraction,
        seed=cfg.training.seed,
        gpu_memory_limit_mb=cfg.resources.gpu_memory_limit_mb,
        intra_op_threads=_threads(cfg.resources.intra_op_threads, cfg.resources.cpu),
        inter_op_threads=_threads(cfg.resources.inter_op_threads, cfg.resources.cpu),
        deterministic=None if cfg.training.deterministic == "auto" else cfg.training.deterministic,
        mixed_precision=cfg.training.mixed_precision,
        checkpoint_every=cfg.budget.checkpoint_every,
        checkpoint_interval_s=cfg.budget.checkpoint_interval_s,
        # A report every few seconds is enough for the progress view, the time budget and ASHA
        # (which reads each report's epoch), and spares a driver round trip per epoch.
        report_every_s=cfg.budget.report_interval_s,
    )


def _threads(configured: int | None, cpus: float) -> int | None:
    """TensorFlow's thread pool size for a trial: as configured, by default the trial's CPUs
    (TensorFlow would size it by the node's cores, which trials side by side oversubscribe;
    Ray's OMP_NUM_THREADS does not govern it); None (0 configured): TensorFlow's default."""
    if configured is None:
        return max(1, int(cpus))
    return configured or None


def on_this_node(settings: TrialSettings) -> TrialSettings:
    """`settings` with this node's cache dir: "{node_id}" in `cache_dir` becomes the id of the
    node the Ray task or trial runs on, so nodes that share a disk (or a test's loopback
    cluster) keep separate caches."""
    node_id = ray.get_runtime_context().get_node_id()
    return dataclasses.replace(settings, cache_dir=on_node(settings.cache_dir, node_id))


def start_ray(cfg: StudyConfig) -> bool:
    """Join cfg.address (token auth as `pipeline.cluster.connect` applies it), or start a local
    instance; True when this call started Ray."""
    return connect(cfg.address, num_cpus=cfg.num_cpus)
