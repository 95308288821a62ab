"""A study YAML file → frozen pydantic models, validated once at the CLI edge; they also give the
JSON Schema editors check YAML with (`lushpo config schema`). A failure is one InvalidConfigError
naming the key, what it accepts (pydantic's words), the value and the fix. Precedence: flags >
YAML > defaults (environment values the CLI passes in) > built-in; nothing here reads os.environ.
"""

from __future__ import annotations

from collections.abc import Mapping
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from hpo import project
from hpo.search._selection import Constraint, Objective
from hpo.train import InvalidSpaceError, paper_best, study_space
from pipeline.backbones import BACKBONES
from pipeline.files import absolute, read_document

__all__ = [
    "InvalidConfigError",
    "StudyConfig",
    "check_extractable",
    "config_keys",
    "from_dict",
    "load_config",
]


class InvalidConfigError(ValueError):
    """A key (or the file) is wrong: one line naming it, what it accepts, the value, the fix."""

    def __init__(self, key: str, allowed: str, got: Any, source: str, message: str = "") -> None:
        self.key, self.allowed, self.got = key, allowed, got
        must = f"The '{key}' key in {source} must be {allowed}. Got {got!r} instead"
        super().__init__(message or f"{must}; set `{key}` in {source}.")


# Patterns a reader cannot be expected to parse get words in error messages.
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
_URI_PATTERN = r"^((file|s3)://.+|[^:]+)$"
_SQLALCHEMY_PATTERN = r"^[a-z0-9+]+://.*$"
_HTTP_PATTERN = r"^https?://.+$"
_BACKBONE_PATTERN = r"^[a-z0-9_]+$"
_WORDS = {
    _NAME_PATTERN: "a name of letters, digits, '_', '.', '-'",
    _URI_PATTERN: "a local path, file://… or s3://bucket/prefix URI",
    _SQLALCHEMY_PATTERN: "an SQLAlchemy URL such as sqlite:///path/optuna.db",
    _HTTP_PATTERN: "an http(s):// URL",
    _BACKBONE_PATTERN: "a backbone registry name such as 'xception'",
}
_NAME = Annotated[str, Field(pattern=_NAME_PATTERN)]
_URI = Annotated[str, Field(pattern=_URI_PATTERN)]
_SQLALCHEMY = Annotated[str, Field(pattern=_SQLALCHEMY_PATTERN)]
_HTTP = Annotated[str, Field(pattern=_HTTP_PATTERN)]
_BACKBONE = Annotated[str, Field(pattern=_BACKBONE_PATTERN)]
Count = Annotated[int, Field(ge=1)]
Natural = Annotated[int, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Text = Annotated[str, Field(min_length=1)]
Layer = Mapping[str, Any] | None  # dotted keys ("budget.trials") to values; None: not given
LocalPath = Annotated[str, Field(min_length=1), AfterValidator(absolute)]


def _as_tuple(item: Any) -> BeforeValidator:  # YAML: a scalar or a non-empty list of `item`
    return BeforeValidator(
        lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v,),
        json_schema_input_type=item | Annotated[list[item], Field(min_length=1)],
    )


Backbones = Annotated[tuple[_BACKBONE, ...], _as_tuple(_BACKBONE), Field(min_length=1)]
FrameCounts = Annotated[tuple[Count, ...], _as_tuple(Count), Field(min_length=1)]


class _Section(BaseModel):
    # strict: YAML gives real types, so `true` or 1.5 for an int is refused (ints pass as floats)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class FeatureSetConfig(_Section):
    backbone: Backbones = ("xception",)
    frames: FrameCounts = (20,)
    sampling: Literal["even", "first"] = "even"
    key: Text | None = Field(None, description="a store key; skips the (backbone, frames) look-up")
    grid: bool = Field(
        False, description="true: one study per (backbone, frames) cell (hpo.search)"
    )


class SplitConfig(_Section):
    kind: Literal["paper", "stratified", "grouped"] = "paper"
    cross_val: LocalPath | None = Field(None, description="default <data_dir>/paper/cross_val.json")
    data_dir: LocalPath | None = None
    group_by: Literal["patient", "source"] = "patient"
    metadata: LocalPath | None = Field(None, description="default <data_dir>/pocus/…_metadata.csv")
    k: Annotated[int, Field(ge=2)] = Field(5, description="folds of a stratified or grouped split")
    seed: Natural = 0


class BudgetConfig(_Section):
    trials: Count = 20
    max_concurrent: Count = 1
    max_epochs: Count = 100
    patience: Count = 10
    time_budget_s: Positive | None = None
    max_failures: Natural = Field(1, description="retries of a failed trial from its checkpoint")
    checkpoint_every: Natural = Field(5, description="epochs between checkpoints; 0: final only")
    checkpoint_interval_s: NonNegative = 60.0
    report_interval_s: NonNegative = Field(
        5.0, description="0: every epoch (ASHA reads each report's epoch)"
    )


class SchedulerConfig(_Section):
    name: Literal["none", "asha"] = "none"
    grace_period: Count = Field(5, description="epochs before ASHA may stop a trial")
    reduction_factor: Annotated[float, Field(gt=1)] = 3.0


class SearcherConfig(_Section):
    sampler: Literal["tpe", "random", "cmaes"] = "tpe"  # the registry: hpo.search.SAMPLERS
    seed: Natural = 0
    start_from_paper_best: bool = Field(False, description="the paper's point as the first trial")
    n_startup_trials: Count | None = Field(
        None,
        description="TPE's random start-up trials; default a quarter of budget.trials, 1 to 10",
    )
    independent_sampler: Literal["random", "tpe"] | None = Field(
        None,
        description="cmaes only: the sampler of the dimensions CMA-ES cannot model (categorical)",
    )


class ObjectiveConfig(_Section):
    on: Literal["test_folds", "validation"] = Field(
        "test_folds",
        description="the folds the search maximises accuracy on: test_folds (the paper's "
        "protocol) or validation (each fold's inner split; the test folds stay unseen)",
    )
    constraints: list[Text] = Field(
        [],
        description="bounds on the same folds, e.g. 'covid_recall >= 0.9': the best trial is "
        "the best feasible one",
    )
    directions: dict[Text, Literal["maximize", "minimize"]] = Field(
        {},
        description="two metrics or more, e.g. {accuracy: maximize, covid_recall: maximize}: a "
        "Pareto front, one point of which export picks (--pick)",
    )

    def objective(self) -> Any:
        """This section as `hpo.search.Objective` (already checked by `_check`)."""

        return Objective.from_dict(self.model_dump())


class ResourcesConfig(_Section):
    cpu: Positive = 1.0
    gpu: NonNegative = Field(0.0, description="fractions such as 0.25 share one GPU")
    gpu_memory_limit_mb: Count | None = None
    intra_op_threads: Natural | None = Field(
        None,
        description="TensorFlow's threads within an op; default the trial's CPUs (at least 1); "
        "0: TensorFlow's own default, every core of the node",
    )
    inter_op_threads: Natural | None = Field(
        None, description="TensorFlow's threads running ops side by side; default as above"
    )


class TrainingConfig(_Section):
    validation_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    seed: Natural = 0
    deterministic: Literal["auto"] | bool = Field("auto", description="auto: on without a GPU")
    mixed_precision: bool = Field(False, description="bfloat16 compute, float32 softmax")


class RescoreConfig(_Section):
    top_k: Natural = Field(0, description="top trials retrained with fresh seeds; 0: off")
    seeds: Annotated[int, Field(ge=2)] = 5


class StorageConfig(_Section):
    storage_path: Annotated[_URI, AfterValidator(absolute)] = Field(
        default_factory=lambda: str(project.runs_dir()),
        description="Ray Tune results: a path or s3://bucket/prefix (default .lushpo/runs)",
    )
    optuna_storage: _SQLALCHEMY | None = Field(None, description="default <run>/optuna.db (sqlite)")
    endpoint_url: _HTTP | None = None


class StudyConfig(_Section):
    name: _NAME
    feature_set: FeatureSetConfig = FeatureSetConfig()
    split: SplitConfig = SplitConfig()
    space: dict[str, Any] = Field({}, description="search-space overrides (hpo.train)")
    budget: BudgetConfig = BudgetConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    searcher: SearcherConfig = SearcherConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    resources: ResourcesConfig = ResourcesConfig()
    training: TrainingConfig = TrainingConfig()
    rescore: RescoreConfig = RescoreConfig()
    storage: StorageConfig = Field(default_factory=StorageConfig)
    store: _URI | None = Field(None, description="feature store URI")
    address: Text | None = Field(None, description="Ray cluster to join; none: a local one")
    cache_dir: Text | None = Field(None, description="node cache; {node_id} is filled in")
    num_cpus: Count | None = None

    @property
    def run_path(self) -> str:
        """Where Ray Tune writes this study: <storage_path>/<name>."""
        return f"{self.storage.storage_path.rstrip('/')}/{self.name}"

    @property
    def optuna_url(self) -> str:
        """``storage.optuna_storage``, which `load_config` and `from_dict` always fill (the
        default: ``<run>/optuna.db``)."""
        if self.storage.optuna_storage is None:
            raise ValueError(f"study {self.name!r}: no Optuna storage URL (storage.optuna_storage)")
        return self.storage.optuna_storage

    @property
    def store_uri(self) -> str:
        """``store``, the feature store's URI; a study cannot run without one."""
        if self.store is None:
            raise ValueError("no feature store given: set `store` in the config or pass --store")
        return self.store

    def replace(self, **changes: Any) -> StudyConfig:
        """A copy with top-level keys replaced; a section given as {field: value} is updated."""
        return self.model_copy(update={
            k: getattr(self, k).model_copy(update=v) if isinstance(v, dict) and k != "space" else v
            for k, v in changes.items()
        })  # fmt: skip


def config_keys() -> list[str]:
    """Every YAML key of a StudyConfig: ``name`` or ``section.field``."""
    return [f"{name}.{sub}" if sub else name for name, info in StudyConfig.model_fields.items()
            for sub in getattr(info.annotation, "model_fields", None) or [""]]  # fmt: skip


# Where pydantic's own words are unclear: a regex, a model's class name, "Field required".
_PLAIN = {"model_type": "a mapping", "dict_type": "a mapping", "too_short": "non-empty",
          "string_too_short": "non-empty", "missing": "set (it has no default)"}  # fmt: skip


def _error(exc: ValidationError, data: Mapping[str, Any], source: str) -> InvalidConfigError:
    """The first pydantic error as one InvalidConfigError naming the YAML key."""
    errors = exc.errors()
    loc = [str(p) for p in errors[0]["loc"]]
    if errors[0]["type"] == "extra_forbidden":
        keys = config_keys() if len(loc) > 1 else list(StudyConfig.model_fields)
        close = get_close_matches(".".join(loc), keys, 3, 0.5)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        message = (f"Unknown key '{'.'.join(loc)}' in {source}: {hint}rename or remove it "
                   "(`lushpo config schema` lists every key)")  # fmt: skip
        return InvalidConfigError(".".join(loc), "a known key", loc[-1], source, message)
    key = ".".join(loc[:2]) if ".".join(loc[:2]) in config_keys() else loc[0]
    got = data[loc[0]].get(loc[1]) if "." in key else data.get(key)
    words = " or ".join(dict.fromkeys(  # a union's branches all fail at the same key
        _WORDS.get(str((e.get("ctx") or {}).get("pattern")))
        or _PLAIN.get(e["type"], e["msg"].removeprefix("Input should be "))
        for e in errors if [str(p) for p in e["loc"][:2]] == loc[:2]))  # fmt: skip
    if len(loc) > 2 and loc[2].isdigit():  # an item of a list such as feature_set.frames
        words = f"one value or a non-empty list, each {words}"
    return InvalidConfigError(key, words, got, source)


def _check(cfg: StudyConfig, source: str) -> None:
    """Rules across keys, each naming the key to change; the space must fit `hpo.train`."""
    from optuna.distributions import CategoricalDistribution

    split, fs, asha = cfg.split, cfg.feature_set, cfg.scheduler
    needs = "{} (or split.data_dir holding {}, or LUSHPO_DATA_DIR) when split.kind is '{}'"
    rules = [  # key, broken, got, what it must be
        ("split.data_dir", split.kind == "paper" and not (split.cross_val or split.data_dir),
         None, needs.format("split.cross_val", "paper/cross_val.json", "paper")),
        ("split.metadata", split.kind == "grouped" and not (split.metadata or split.data_dir),
         None, needs.format("the POCUS metadata", "pocus/dataset_metadata.csv", "grouped")),
        ("feature_set.key", fs.grid and fs.key, fs.key, "unset when feature_set.grid is true"),
        ("scheduler.grace_period", asha.name == "asha" and asha.grace_period
         > cfg.budget.max_epochs, asha.grace_period, "at most budget.max_epochs"),
        ("storage.optuna_storage", cfg.run_path.startswith("s3://")
         and not cfg.storage.optuna_storage, None, "an SQLAlchemy URL when storage.storage_path "
         "is s3:// (the sqlite default lives next to a local storage path only)"),
    ]  # fmt: skip
    for key, broken, got, allowed in rules:
        if broken:
            raise InvalidConfigError(key, allowed, got, source)
    cell = slice(1 if fs.grid else None)  # a grid's cells each have one backbone and one N
    try:
        space = study_space(cfg.space, fs.backbone[cell], fs.frames[cell])
    except InvalidSpaceError as exc:
        raise InvalidConfigError("space", f"valid overrides ({exc})", cfg.space, source) from None
    search = cfg.searcher
    if search.independent_sampler is not None and search.sampler != "cmaes":
        raise InvalidConfigError(
            "searcher.independent_sampler", "unset unless searcher.sampler is cmaes",
            search.independent_sampler, source,
        )  # fmt: skip
    categorical = [
        k for k, d in space.items() if isinstance(d, CategoricalDistribution) and len(d.choices) > 1
    ]
    if search.sampler == "cmaes" and search.independent_sampler is None and categorical:
        # Optuna's CmaEsSampler samples what it cannot model with a RandomSampler, unasked
        raise InvalidConfigError(
            "searcher.independent_sampler",
            "'random' or 'tpe' with sampler cmaes, which cannot model the categorical "
            f"dimensions {', '.join(categorical)} (or use sampler tpe)",
            None, source,
        )  # fmt: skip

    for text in cfg.objective.constraints:
        try:
            Constraint.parse(text)
        except ValueError as exc:
            raise InvalidConfigError("objective.constraints", str(exc), text, source) from None
    try:
        Objective.from_dict({"directions": cfg.objective.directions})
    except ValueError as exc:
        directions = cfg.objective.directions
        raise InvalidConfigError("objective.directions", str(exc), directions, source) from None
    for key in ("constraints", "directions"):  # CmaEsSampler: one objective, no constraints
        if getattr(cfg.objective, key) and search.sampler == "cmaes":
            allowed = f"tpe or random with objective.{key}"
            raise InvalidConfigError("searcher.sampler", allowed, "cmaes", source)
    try:
        if cfg.searcher.start_from_paper_best:
            paper_best(space)
    except InvalidSpaceError as exc:
        allowed = f"false when the paper's point is outside the space ({exc})"
        raise InvalidConfigError("searcher.start_from_paper_best", allowed, True, source) from None


def check_extractable(cfg: StudyConfig, source: str = "the study config") -> None:
    """Refuse a backbone `lushpo features` cannot extract, naming the ones it can. `tune` alone
    does not ask this: it reads whatever sets the store holds (a pinned `feature_set.key`, or
    sets someone else put there)."""

    unknown = [b for b in cfg.feature_set.backbone if b not in BACKBONES]
    if cfg.feature_set.key is None and unknown:
        allowed = f"one of {sorted(BACKBONES)} (the backbones `lushpo features` extracts)"
        got = unknown[0] if len(unknown) == 1 else unknown
        raise InvalidConfigError("feature_set.backbone", allowed, got, source)


def from_dict(
    data: Mapping[str, Any],
    overrides: Layer = None,
    defaults: Layer = None,
    source: str = "the config",
) -> StudyConfig:
    """Validate a config mapping, with dotted-key `defaults` under it and `overrides` over it
    (None: not given), into a StudyConfig."""
    if not isinstance(data, Mapping):
        raise InvalidConfigError("<top level>", "a mapping of sections", data, source)
    merged = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items() if v is not None}
    for layer, wins in ((defaults or {}, False), (overrides or {}, True)):
        for key, value in layer.items():
            section, _, field = key.rpartition(".")
            target = merged.setdefault(section, {}) if section else merged
            if value is not None and isinstance(target, dict) and (wins or field not in target):
                target[field] = value
    try:
        cfg = StudyConfig.model_validate(merged)
    except ValidationError as exc:
        raise _error(exc, merged, source) from None
    _check(cfg, source)
    if cfg.storage.optuna_storage or cfg.run_path.startswith("s3://"):
        return cfg
    return cfg.replace(storage={"optuna_storage": f"sqlite:///{cfg.run_path}/optuna.db"})


def load_config(path: str | Path, overrides: Layer = None, defaults: Layer = None) -> StudyConfig:
    """Read a study YAML file; `overrides` (CLI flags) win over it, `defaults` (env) lose to it."""
    try:
        data = read_document(path, "pass --config a valid YAML file") or {}
    except (FileNotFoundError, ValueError) as exc:  # one line naming the file, the spot, the fix
        raise InvalidConfigError("--config", "a YAML file", path, str(path), str(exc)) from None
    return from_dict(data, overrides, defaults, source=str(path))
