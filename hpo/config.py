"""A study YAML file → frozen pydantic models, validated once at the CLI edge; they also give the
JSON Schema editors check YAML with (`lushpo config schema`). A failure is one InvalidConfigError
naming the key, what it accepts (the schema in words), the value and the fix. Precedence: flags >
YAML > defaults (environment values the CLI passes in) > built-in; nothing here reads os.environ.
"""

from __future__ import annotations

from collections.abc import Mapping
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from hpo import project
from pipeline.files import read_document

__all__ = ["InvalidConfigError", "StudyConfig", "config_keys", "from_dict", "load_config"]

# Keys a flag of `tune`/`run` also sets, named `--` + the last part with dashes (--trials).
FLAGGED = frozenset(
    ("name", "store", "address", "budget.trials", "split.data_dir", "storage.storage_path",
     "storage.optuna_storage")
)  # fmt: skip


class InvalidConfigError(ValueError):
    """A key (or the file) is wrong: one line naming it, what it accepts, the value, the fix."""

    def __init__(self, key: str, allowed: str, got: Any, source: str, message: str = "") -> None:
        self.key, self.allowed, self.got, self.source = key, allowed, got, source
        flag = "--" + key.rpartition(".")[2].replace("_", "-")
        fix = f"set `{key}` in {source}" + (f" or pass {flag}" if key in FLAGGED else "")
        must = f"The '{key}' key in {source} must be {allowed}. Got {got!r} instead; {fix}."
        super().__init__(message or must)


# Patterns a reader cannot be expected to parse get words in error messages.
_WORDS = {
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$": "a name of letters, digits, '_', '.', '-'",
    r"^((file|s3)://.+|[^:]+)$": "a local path, file://… or s3://bucket/prefix URI",
    r"^[a-z0-9+]+://.*$": "an SQLAlchemy URL such as sqlite:///path/optuna.db",
    r"^https?://.+$": "an http(s):// URL",
    r"^[a-z0-9_]+$": "a backbone registry name such as 'xception'",
}
_NAME, _URI, _SQLALCHEMY, _HTTP, _BACKBONE = (Annotated[str, Field(pattern=p)] for p in _WORDS)
Count, Natural = Annotated[int, Field(ge=1)], Annotated[int, Field(ge=0)]
Positive, NonNegative = Annotated[float, Field(gt=0)], Annotated[float, Field(ge=0)]
Text = Annotated[str, Field(min_length=1)]
Layer = Mapping[str, Any] | None  # dotted keys ("budget.trials") to values; None: not given


def _local_abs(path: str) -> str:
    local = Path(path.removeprefix("file://")).expanduser()
    return path if path.startswith("s3://") else str(local.resolve())


LocalPath = Annotated[str, Field(min_length=1), AfterValidator(_local_abs)]


def _one_or_many(item: Any) -> Any:  # YAML: a scalar or a non-empty list; the model: a tuple
    as_tuple = BeforeValidator(
        lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v,),
        json_schema_input_type=item | Annotated[list[item], Field(min_length=1)],
    )
    return Annotated[tuple[item, ...], as_tuple, Field(min_length=1)]


class _Section(BaseModel):
    # strict: YAML gives real types, so `true` or 1.5 for an int is refused (ints pass as floats)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class FeatureSetConfig(_Section):
    backbone: _one_or_many(_BACKBONE) = ("xception",)
    frames: _one_or_many(Count) = (20,)
    sampling: Literal["even", "first"] = "even"
    key: Text | None = Field(None, description="a store key; skips the (backbone, frames) look-up")
    grid: bool = Field(False, description="true: one study per (backbone, frames) cell (hpo.grid)")


class SplitConfig(_Section):
    kind: Literal["paper", "stratified", "grouped"] = Field(
        "paper", description="paper: cross_val.json; stratified or grouped: k folds with a seed"
    )
    cross_val: LocalPath | None = Field(None, description="default <data_dir>/paper/cross_val.json")
    data_dir: LocalPath | None = None
    group_by: Literal["patient", "source"] = "patient"
    metadata: LocalPath | None = Field(None, description="default <data_dir>/pocus/…_metadata.csv")
    k: Annotated[int, Field(ge=2)] = 5
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
        5.0, description="a trial reports at most this often; 0 (and ASHA): every epoch"
    )


class SchedulerConfig(_Section):
    name: Literal["none", "asha"] = "none"
    grace_period: Count = Field(5, description="epochs before ASHA may stop a trial")
    reduction_factor: Annotated[float, Field(gt=1)] = 3.0


class SearcherConfig(_Section):
    sampler: Literal["tpe", "random", "cmaes"] = "tpe"  # the registry: hpo.study.SAMPLERS
    seed: Natural = 0
    start_from_paper_best: bool = Field(False, description="the paper's point as the first trial")


class ResourcesConfig(_Section):
    cpu: Positive = 1.0
    gpu: NonNegative = Field(0.0, description="fractions such as 0.25 share one GPU")
    gpu_memory_limit_mb: Count | None = None
    intra_op_threads: Count | None = None


class TrainingConfig(_Section):
    validation_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    seed: Natural = 0
    deterministic: Literal["auto"] | bool = Field("auto", description="auto: on without a GPU")
    mixed_precision: bool = Field(False, description="bfloat16 compute, float32 softmax")


class RescoreConfig(_Section):
    top_k: Natural = Field(0, description="top trials retrained with fresh seeds; 0: off")
    seeds: Annotated[int, Field(ge=2)] = 5


class StorageConfig(_Section):
    storage_path: Annotated[_URI, AfterValidator(_local_abs)] = Field(
        default_factory=lambda: str(project.runs_dir()),
        description="Ray Tune results: a path or s3://bucket/prefix (default .lushpo/runs)",
    )
    optuna_storage: _SQLALCHEMY | None = Field(None, description="default <run>/optuna.db (sqlite)")
    endpoint_url: _HTTP | None = None


class StudyConfig(_Section):
    name: _NAME
    feature_set: FeatureSetConfig = FeatureSetConfig()
    split: SplitConfig = SplitConfig()
    space: dict[str, Any] = Field({}, description="search-space overrides (hpo.space)")
    budget: BudgetConfig = BudgetConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    searcher: SearcherConfig = SearcherConfig()
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


def describe(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    """What a JSON Schema accepts, in words: 'an int in [1, inf)', "a str among {'a', 'b'}"."""
    schema = defs[schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema
    kind = schema.get("type")
    if "anyOf" in schema:
        forms = [describe(s, defs) for s in schema["anyOf"]]
        return ", ".join(forms[:-1]) + " or " + forms[-1]
    if "const" in schema or "enum" in schema:
        values = schema.get("enum", [schema.get("const")])
        return "a str among {" + ", ".join(map(repr, values)) + "}"
    if kind in ("integer", "number"):
        lo = schema.get("minimum", schema.get("exclusiveMinimum", "-inf"))
        hi = schema.get("maximum", schema.get("exclusiveMaximum", "inf"))
        left, right = "[" if "minimum" in schema else "(", "]" if "maximum" in schema else ")"
        return ("an int" if kind == "integer" else "a number") + f" in {left}{lo}, {hi}{right}"
    if kind == "array":
        size = "a non-empty list" if schema.get("minItems") else "a list"
        return f"{size} of ({describe(schema.get('items', {}), defs)})"
    words = {"string": _WORDS.get(schema.get("pattern"), "a str"), "object": "a mapping"}
    return {**words, "boolean": "true or false", "null": "None"}.get(kind, "a value")


def _error(exc: ValidationError, data: Mapping[str, Any], source: str) -> InvalidConfigError:
    """The first pydantic error as one InvalidConfigError naming the YAML key."""
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    if first["type"] == "extra_forbidden":
        keys = config_keys() if len(loc) > 1 else list(StudyConfig.model_fields)
        close = get_close_matches(".".join(loc), keys, 3, 0.5)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        message = (f"Unknown key '{'.'.join(loc)}' in {source}: {hint}rename or remove it "
                   "(`lushpo config schema` lists every key)")  # fmt: skip
        return InvalidConfigError(".".join(loc), "a known key", loc[-1], source, message)
    key = ".".join(loc[:2]) if ".".join(loc[:2]) in config_keys() else loc[0]
    schema, got = StudyConfig.model_json_schema(), data.get(loc[0])
    field = schema["properties"][loc[0]]
    if "." in key:
        field = schema["$defs"][field["$ref"].rsplit("/", 1)[-1]]["properties"][loc[1]]
        got = got.get(loc[1]) if isinstance(got, Mapping) else None
    return InvalidConfigError(key, describe(field, schema["$defs"]), got, source)


def _check(cfg: StudyConfig, source: str) -> None:
    """Rules across keys, each naming the key to change; the space must fit `hpo.space`."""
    from hpo.space import InvalidSpaceError, paper_best, search_space

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
    searched = not fs.grid  # a grid runs one study per cell: neither is a search dimension
    try:
        space = search_space(
            cfg.space,
            backbones=fs.backbone if searched and len(fs.backbone) > 1 else None,
            frames=fs.frames if searched and len(fs.frames) > 1 else None,
        )
    except InvalidSpaceError as exc:
        raise InvalidConfigError("space", f"valid overrides ({exc})", cfg.space, source) from None
    try:
        if cfg.searcher.start_from_paper_best:
            paper_best(space)
    except InvalidSpaceError as exc:
        allowed = f"false when the paper's point is outside the space ({exc})"
        raise InvalidConfigError("searcher.start_from_paper_best", allowed, True, source) from None


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
        data = read_document(path) or {}
    except FileNotFoundError:
        problem = f"{path}: no such config file; pass --config an existing YAML file"
    except ValueError as exc:  # unreadable or not YAML: one line naming the file and the spot
        problem = str(exc)
    else:
        return from_dict(data, overrides, defaults, source=str(path))
    raise InvalidConfigError("--config", "a YAML file", str(path), str(path), problem)
