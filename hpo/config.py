"""One YAML study file → typed frozen dataclasses, validated once at the CLI edge.

Constraints are data (after scikit-learn's ``_param_validation``): `CONSTRAINTS` maps every YAML
key (``section.field``) to the forms it may take, and a test fails if a dataclass field has no
entry. Every failure has one shape, `InvalidConfigError`, naming the key, the allowed forms, the
value received and the key or flag to change. Inner code (study, trainable) trusts the result.

Precedence: command-line overrides > YAML > defaults (environment values the CLI passes in) >
built-in defaults. Nothing here reads the environment.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import yaml

from hpo import project

__all__ = [
    "CONSTRAINTS",
    "SAMPLERS",
    "InvalidConfigError",
    "StudyConfig",
    "from_dict",
    "load_config",
]

SAMPLERS: tuple[str, ...] = ("tpe", "random", "cmaes")
"""Optuna samplers by name (the registry itself lives in `hpo.study`)."""

SCHEDULERS: tuple[str, ...] = ("none", "asha")

# Command-line flag for each key a flag can set: error messages name both ways to fix a value.
FLAGS: dict[str, str] = {
    "name": "--name",
    "store": "--store",
    "address": "--address",
    "budget.trials": "--trials",
    "storage.storage_path": "--storage-path",
    "storage.optuna_storage": "--optuna-storage",
}


class InvalidConfigError(ValueError):
    """A study config value is not one of its allowed forms; says what to change."""

    def __init__(
        self, key: str, allowed: str, got: Any, source: str = "the config", fix: str = ""
    ) -> None:
        self.key, self.allowed, self.got, self.source = key, allowed, got, source
        fix = fix or f"set `{key}` in {source}"
        if key in FLAGS:
            fix += f" or pass {FLAGS[key]}"
        super().__init__(
            f"The '{key}' key in {source} must be {allowed}. Got {got!r} instead; {fix}."
        )


class ConfigFileError(InvalidConfigError):
    """The --config file is missing, unreadable or not YAML: one line naming the file."""

    def __init__(self, path: Path, problem: str) -> None:
        self.key, self.allowed, self.got, self.source = "--config", "", str(path), str(path)
        ValueError.__init__(self, f"{path}: {problem}")


class UnknownConfigKeyError(InvalidConfigError):
    """A key the config schema does not have; names it and the nearest known keys."""

    def __init__(self, key: str, valid: list[str], source: str) -> None:
        self.key, self.allowed, self.got, self.source = key, "a known key", key, source
        sections = sorted({k.split(".", 1)[0] for k in valid})
        close = difflib.get_close_matches(key, valid if "." in key else sections, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        ValueError.__init__(
            self,
            f"Unknown key '{key}' in {source}: {hint}rename or remove it (top-level keys: "
            f"{', '.join(sections)}; `lushpo tune --help` and docs list every key).",
        )


# --- constraints -----------------------------------------------------------------------------


class _Constraint:
    def ok(self, value: Any) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class _Interval(_Constraint):
    type: type
    low: float | None
    high: float | None
    closed: str = "both"  # which ends are included: both | left | right | neither

    def ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, self.type):
            return False
        lo_ok = self.low is None or (
            value >= self.low if self.closed in ("both", "left") else value > self.low
        )
        hi_ok = self.high is None or (
            value <= self.high if self.closed in ("both", "right") else value < self.high
        )
        return lo_ok and hi_ok

    def __str__(self) -> str:
        kind = "an int" if self.type is Integral else "a number"
        left = "[" if self.closed in ("both", "left") and self.low is not None else "("
        right = "]" if self.closed in ("both", "right") and self.high is not None else ")"
        lo = "-inf" if self.low is None else self.low
        hi = "inf" if self.high is None else self.high
        return f"{kind} in {left}{lo}, {hi}{right}"


@dataclass(frozen=True)
class _Options(_Constraint):
    values: tuple[str, ...]

    def ok(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.values

    def __str__(self) -> str:
        return "a str among {" + ", ".join(repr(v) for v in self.values) + "}"


@dataclass(frozen=True)
class _Pattern(_Constraint):
    regex: str
    description: str

    def ok(self, value: Any) -> bool:
        return isinstance(value, str) and re.fullmatch(self.regex, value) is not None

    def __str__(self) -> str:
        return self.description


@dataclass(frozen=True)
class _InstanceOf(_Constraint):
    type: type
    description: str

    def ok(self, value: Any) -> bool:
        if self.type is not bool and isinstance(value, bool):
            return False
        return isinstance(value, self.type)

    def __str__(self) -> str:
        return self.description


@dataclass(frozen=True)
class _NonEmptyListOf(_Constraint):
    item: _Constraint

    def ok(self, value: Any) -> bool:
        return (
            isinstance(value, (list, tuple))
            and len(value) > 0
            and all(self.item.ok(v) for v in value)
        )

    def __str__(self) -> str:
        return f"a non-empty list of ({self.item})"


class _NoneOK(_Constraint):
    def ok(self, value: Any) -> bool:
        return value is None

    def __str__(self) -> str:
        return "None"


_NONE = _NoneOK()
_NAME = _Pattern(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", "a name of letters, digits, '_', '.', '-'")
_URI = _Pattern(r"(file|s3)://.+|[^:]+", "a local path, file://… or s3://bucket/prefix URI")
_PATH = _Pattern(r".+", "a non-empty path")
_STR = _Pattern(r".+", "a non-empty str")
_BACKBONE = _Pattern(r"[a-z0-9_]+", "a backbone registry name such as 'xception'")
_FRAMES = _Interval(Integral, 1, None, "left")

CONSTRAINTS: dict[str, list[_Constraint]] = {
    "name": [_NAME],
    "store": [_URI, _NONE],
    "address": [_STR, _NONE],
    "cache_dir": [_PATH, _NONE],
    "num_cpus": [_Interval(Integral, 1, None, "left"), _NONE],
    "feature_set.backbone": [_BACKBONE, _NonEmptyListOf(_BACKBONE)],
    "feature_set.frames": [_FRAMES, _NonEmptyListOf(_FRAMES)],
    "feature_set.sampling": [_Options(("even", "first"))],
    "feature_set.key": [_STR, _NONE],
    "feature_set.grid": [_InstanceOf(bool, "true or false")],
    "split.kind": [_Options(("paper", "stratified", "grouped"))],
    "split.group_by": [_Options(("patient", "source"))],
    "split.metadata": [_PATH, _NONE],
    "split.cross_val": [_PATH, _NONE],
    "split.data_dir": [_PATH, _NONE],
    "split.k": [_Interval(Integral, 2, None, "left")],
    "split.seed": [_Interval(Integral, 0, None, "left")],
    "space": [_InstanceOf(dict, "a mapping of search-space parameter → override")],
    "budget.trials": [_Interval(Integral, 1, None, "left")],
    "budget.max_concurrent": [_Interval(Integral, 1, None, "left")],
    "budget.max_epochs": [_Interval(Integral, 1, None, "left")],
    "budget.patience": [_Interval(Integral, 1, None, "left")],
    "budget.time_budget_s": [_Interval(Real, 0, None, "neither"), _NONE],
    "budget.max_failures": [_Interval(Integral, 0, None, "left")],
    "budget.checkpoint_every": [_Interval(Integral, 0, None, "left")],
    "budget.checkpoint_interval_s": [_Interval(Real, 0, None, "left")],
    "scheduler.name": [_Options(SCHEDULERS)],
    "scheduler.grace_period": [_Interval(Integral, 1, None, "left")],
    "scheduler.reduction_factor": [_Interval(Real, 1, None, "neither")],
    "searcher.sampler": [_Options(SAMPLERS)],
    "searcher.seed": [_Interval(Integral, 0, None, "left")],
    "searcher.start_from_paper_best": [_InstanceOf(bool, "true or false")],
    "resources.cpu": [_Interval(Real, 0, None, "neither")],
    "resources.gpu": [_Interval(Real, 0, None, "left")],
    "resources.gpu_memory_limit_mb": [_Interval(Integral, 1, None, "left"), _NONE],
    "resources.intra_op_threads": [_Interval(Integral, 1, None, "left"), _NONE],
    "training.validation_fraction": [_Interval(Real, 0, 1, "neither")],
    "training.seed": [_Interval(Integral, 0, None, "left")],
    "training.deterministic": [_Options(("auto",)), _InstanceOf(bool, "true or false")],
    "training.mixed_precision": [_InstanceOf(bool, "true or false")],
    "rescore.top_k": [_Interval(Integral, 0, None, "left")],
    "rescore.seeds": [_Interval(Integral, 2, None, "left")],
    "storage.storage_path": [_URI],
    "storage.optuna_storage": [
        _Pattern(r"[a-z0-9+]+://.*", "an SQLAlchemy URL such as sqlite:///path/optuna.db"),
        _NONE,
    ],
    "storage.endpoint_url": [_Pattern(r"https?://.+", "an http(s):// URL"), _NONE],
}


def _allowed(key: str) -> str:
    forms = [str(c) for c in CONSTRAINTS[key]]
    return forms[0] if len(forms) == 1 else ", ".join(forms[:-1]) + " or " + forms[-1]


# --- the config dataclasses --------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSetConfig:
    """Which feature set(s) the trials read: one key per (backbone, frames) pair."""

    backbone: tuple[str, ...] = ("xception",)
    frames: tuple[int, ...] = (20,)
    sampling: str = "even"
    key: str | None = None  # a store key; skips the look-up by (backbone, frames, sampling)
    # false: backbone and frames (when several) are search dimensions of one study; true: one
    # study per (backbone, frames) cell, each with the whole budget (hpo.grid), as the paper did
    grid: bool = False


@dataclass(frozen=True)
class SplitConfig:
    # paper: cross_val.json; stratified: k folds with a seed; grouped: k stratified group folds
    # (no patient or source in two test folds, pipeline.groups)
    kind: str = "paper"
    cross_val: str | None = None  # path to cross_val.json (default <data_dir>/paper/cross_val.json)
    data_dir: str | None = None
    group_by: str = "patient"  # grouped: patient or source, from the POCUS metadata
    metadata: str | None = None  # default <data_dir>/pocus/dataset_metadata.csv
    k: int = 5
    seed: int = 0


@dataclass(frozen=True)
class BudgetConfig:
    trials: int = 20
    max_concurrent: int = 1
    max_epochs: int = 100
    patience: int = 10
    time_budget_s: float | None = None
    max_failures: int = 1  # retries of a failed trial from its last checkpoint
    checkpoint_every: int = 5  # epochs between a trial's checkpoints (0: only the final one)
    checkpoint_interval_s: float = 60.0  # and at least this many seconds between them


@dataclass(frozen=True)
class SchedulerConfig:
    name: str = "none"
    grace_period: int = 5  # epochs before ASHA may stop a trial
    reduction_factor: float = 3.0


@dataclass(frozen=True)
class SearcherConfig:
    sampler: str = "tpe"
    seed: int = 0
    start_from_paper_best: bool = False  # enqueue hpo.space.PAPER_BEST as the first trial


@dataclass(frozen=True)
class ResourcesConfig:
    cpu: float = 1.0
    gpu: float = 0.0  # fractions such as 0.25 share one GPU between trials
    gpu_memory_limit_mb: int | None = None  # TensorFlow memory cap; pair with a GPU fraction
    intra_op_threads: int | None = None


@dataclass(frozen=True)
class TrainingConfig:
    validation_fraction: float = 0.2  # of each training fold, for early stopping
    seed: int = 0
    # TensorFlow op determinism: "auto" is on without a GPU and off with one (docs/performance.md)
    deterministic: str | bool = "auto"
    mixed_precision: bool = False  # bfloat16 compute, float32 weights and softmax; for GPUs


@dataclass(frozen=True)
class RescoreConfig:
    # The winner's curse (hpo.rescore): retrain the top_k trials with `seeds` fresh seeds each and
    # export the best by their mean. 0: off.
    top_k: int = 0
    seeds: int = 5


@dataclass(frozen=True)
class StorageConfig:
    # Ray Tune results: local path or s3://bucket/prefix; default <project folder>/runs
    storage_path: str = field(default_factory=lambda: str(project.runs_dir()))
    optuna_storage: str | None = None  # default sqlite:///<storage_path>/<name>/optuna.db (local)
    endpoint_url: str | None = None  # for s3:// storage; the CLI passes AWS_ENDPOINT_URL


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: what to read, how to split, what to search, how hard, where to write."""

    name: str
    feature_set: FeatureSetConfig = field(default_factory=FeatureSetConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    space: Mapping[str, Any] = field(default_factory=dict)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    searcher: SearcherConfig = field(default_factory=SearcherConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    rescore: RescoreConfig = field(default_factory=RescoreConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    store: str | None = None  # feature store URI
    address: str | None = None  # Ray cluster to join; None starts a local instance
    cache_dir: str | None = None  # node cache; "{node_id}" is filled in on each node
    num_cpus: int | None = None  # CPUs of the local Ray instance (None: all)

    @property
    def run_path(self) -> str:
        """Where Ray Tune writes this study: <storage_path>/<name>."""
        return f"{self.storage.storage_path.rstrip('/')}/{self.name}"

    @property
    def is_s3(self) -> bool:
        return self.storage.storage_path.startswith("s3://")


_SECTIONS: dict[str, type] = {
    "feature_set": FeatureSetConfig,
    "split": SplitConfig,
    "budget": BudgetConfig,
    "scheduler": SchedulerConfig,
    "searcher": SearcherConfig,
    "resources": ResourcesConfig,
    "training": TrainingConfig,
    "rescore": RescoreConfig,
    "storage": StorageConfig,
}
_TOP_LEVEL = tuple(f.name for f in fields(StudyConfig) if f.name not in _SECTIONS)


def config_keys() -> list[str]:
    """Every YAML key of a StudyConfig as ``section.field``; each needs a constraint."""
    keys = list(_TOP_LEVEL)
    for section, cls in _SECTIONS.items():
        keys += [f"{section}.{f.name}" for f in fields(cls)]
    return keys


# --- loading -----------------------------------------------------------------------------------


def _flatten(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """YAML mapping → {dotted key: value}; unknown keys are an error listing the valid ones."""
    flat: dict[str, Any] = {}
    valid = config_keys()
    for top, value in data.items():
        if top in _SECTIONS:
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise InvalidConfigError(
                    top,
                    "a mapping of " + ", ".join(f.name for f in fields(_SECTIONS[top])),
                    value,
                    source,
                )
            for sub, v in value.items():
                flat[f"{top}.{sub}"] = v
        else:
            flat[str(top)] = value
    for key in flat:
        if key not in valid:
            raise UnknownConfigKeyError(key, valid, source)
    return flat


def _validate(key: str, value: Any, source: str) -> None:
    if not any(c.ok(value) for c in CONSTRAINTS[key]):
        raise InvalidConfigError(key, _allowed(key), value, source)


def _normalise(key: str, value: Any) -> Any:
    if key in ("feature_set.backbone", "feature_set.frames"):
        return tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if (
        key
        in (
            "budget.time_budget_s",
            "resources.cpu",
            "resources.gpu",
            "scheduler.reduction_factor",
            "training.validation_fraction",
        )
        and value is not None
    ):
        return float(value)
    if key == "space":
        return dict(value)
    return value


def _local_abs(path: str) -> str:
    if path.startswith("file://"):
        path = path[len("file://") :]
    return str(Path(path).expanduser().resolve())


def _check_space(flat: Mapping[str, Any], source: str) -> None:
    """Space overrides (and the paper's point, when asked for) must fit `hpo.space`."""
    from hpo.space import InvalidSpaceError, paper_best, search_space

    backbones = flat.get("feature_set.backbone", ())
    frames = flat.get("feature_set.frames", ())
    if flat.get("feature_set.grid"):
        backbones, frames = (), ()  # one study per cell: neither is a search dimension
    try:
        space = search_space(
            flat.get("space"),
            backbones=backbones if len(backbones) > 1 else None,
            frames=frames if len(frames) > 1 else None,
        )
    except InvalidSpaceError as exc:
        raise InvalidConfigError(
            "space", f"valid search-space overrides ({exc})", flat.get("space"), source
        ) from None
    if flat.get("searcher.start_from_paper_best"):
        try:
            paper_best(space)
        except InvalidSpaceError as exc:
            raise InvalidConfigError(
                "searcher.start_from_paper_best",
                f"false when the paper's point is outside the space ({exc})",
                True,
                source,
            ) from None


def from_dict(
    data: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    source: str = "the config",
) -> StudyConfig:
    """Validate a config mapping (plus dotted-key overrides and defaults) into a StudyConfig."""
    if not isinstance(data, Mapping):
        raise InvalidConfigError("<top level>", "a mapping of sections", data, source)
    flat = {k: v for k, v in (defaults or {}).items() if v is not None}
    flat.update(_flatten(data, source))
    flat.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if "name" not in flat:
        raise InvalidConfigError("name", _allowed("name"), None, source)
    for key, value in flat.items():
        if key not in CONSTRAINTS:
            raise InvalidConfigError(key, "one of the known keys", "unknown key", source)
        _validate(key, value, source)
    flat = {k: _normalise(k, v) for k, v in flat.items()}

    # Cross-field rules, each naming the key to change.
    if flat.get("split.kind", "paper") == "paper" and not (
        flat.get("split.cross_val") or flat.get("split.data_dir")
    ):
        raise InvalidConfigError(
            "split.data_dir",
            "a data dir holding paper/cross_val.json (or set split.cross_val, or LUSHPO_DATA_DIR)"
            " when split.kind is 'paper'",
            None,
            source,
        )
    if flat.get("split.kind") == "grouped" and not (
        flat.get("split.metadata") or flat.get("split.data_dir")
    ):
        raise InvalidConfigError(
            "split.metadata",
            "the POCUS dataset_metadata.csv (or split.data_dir holding "
            "pocus/dataset_metadata.csv, or LUSHPO_DATA_DIR) when split.kind is 'grouped'",
            None,
            source,
        )
    if flat.get("feature_set.grid") and flat.get("feature_set.key"):
        raise InvalidConfigError(
            "feature_set.key", "unset when feature_set.grid is true", flat["feature_set.key"],
            source,
        )  # fmt: skip
    if flat.get("scheduler.name") == "asha" and flat.get("scheduler.grace_period", 5) > flat.get(
        "budget.max_epochs", BudgetConfig.max_epochs
    ):
        raise InvalidConfigError(
            "scheduler.grace_period",
            "at most budget.max_epochs",
            flat["scheduler.grace_period"],
            source,
        )
    storage_path = flat.get("storage.storage_path") or StorageConfig().storage_path
    if storage_path.startswith("s3://"):
        if not flat.get("storage.optuna_storage"):
            raise InvalidConfigError(
                "storage.optuna_storage",
                "an SQLAlchemy URL (required when storage.storage_path is s3://; the sqlite "
                "default lives next to a local storage path only)",
                None,
                source,
            )
    else:
        storage_path = _local_abs(storage_path)
        flat["storage.storage_path"] = storage_path
        flat.setdefault(
            "storage.optuna_storage", f"sqlite:///{storage_path}/{flat['name']}/optuna.db"
        )
    _check_space(flat, source)
    for key in ("split.cross_val", "split.data_dir", "split.metadata"):
        if flat.get(key):
            flat[key] = _local_abs(flat[key])

    sections: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    top: dict[str, Any] = {}
    for key, value in flat.items():
        if "." in key:
            section, sub = key.split(".", 1)
            sections[section][sub] = value
        else:
            top[key] = value
    return StudyConfig(**top, **{s: _SECTIONS[s](**kw) for s, kw in sections.items()})


def load_config(
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> StudyConfig:
    """Read a study YAML file; `overrides` (CLI flags) win over it, `defaults` (env) lose to it."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigFileError(
            path, "no such config file; pass --config an existing YAML file"
        ) from None
    except OSError as exc:
        raise ConfigFileError(path, f"cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigFileError(path, f"not valid YAML: {problem}{where}") from None
    return from_dict(data, overrides, defaults, source=str(path))


def as_dict(cfg: Any) -> Any:
    """A StudyConfig as plain data (for printing and for the run's config.json)."""
    if is_dataclass(cfg):
        return {f.name: as_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, tuple):
        return [as_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: as_dict(v) for k, v in cfg.items()}
    return cfg
