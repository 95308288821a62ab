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

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic import StrictBool as Bool
from pydantic import StrictFloat as Float  # ints are accepted for floats
from pydantic import StrictInt as Int  # YAML gives real ints: true/false and 1.5 are refused

from hpo import project

__all__ = ["InvalidConfigError", "StudyConfig", "from_dict", "load_config"]

FLAGS = {  # the flag that sets a key: error messages name both ways to fix a value
    "name": "--name",
    "store": "--store",
    "address": "--address",
    "budget.trials": "--trials",
    "split.data_dir": "--data-dir",
    "storage.storage_path": "--storage-path",
    "storage.optuna_storage": "--optuna-storage",
}


class InvalidConfigError(ValueError):
    """A key (or the file) is wrong: one line naming it, what it accepts, the value, the fix."""

    def __init__(self, key: str, allowed: str, got: Any, source: str, message: str = "") -> None:
        self.key, self.allowed, self.got, self.source = key, allowed, got, source
        fix = f"set `{key}` in {source}" + (f" or pass {FLAGS[key]}" if key in FLAGS else "")
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
Count = Annotated[Int, Field(ge=1)]
Natural = Annotated[Int, Field(ge=0)]
Text = Annotated[str, Field(min_length=1)]


def _local_abs(path: str) -> str:
    local = Path(path.removeprefix("file://")).expanduser()
    return path if path.startswith("s3://") else str(local.resolve())


LocalPath = Annotated[str, Field(min_length=1), AfterValidator(_local_abs)]


def _one_or_many(item: Any) -> Any:  # YAML: a scalar or a non-empty list; the model: a tuple
    as_list = BeforeValidator(
        lambda v: v if isinstance(v, (list, tuple)) else [v],
        json_schema_input_type=item | Annotated[list[item], Field(min_length=1)],
    )
    return Annotated[tuple[item, ...], as_list, Field(min_length=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSetConfig(_Section):
    backbone: _one_or_many(_BACKBONE) = ("xception",)
    frames: _one_or_many(Count) = (20,)
    sampling: Literal["even", "first"] = "even"
    key: Text | None = Field(None, description="a store key; skips the (backbone, frames) look-up")
    grid: Bool = Field(False, description="true: one study per (backbone, frames) cell (hpo.grid)")


class SplitConfig(_Section):
    kind: Literal["paper", "stratified", "grouped"] = Field(
        "paper", description="paper: cross_val.json; stratified or grouped: k folds with a seed"
    )
    cross_val: LocalPath | None = Field(None, description="default <data_dir>/paper/cross_val.json")
    data_dir: LocalPath | None = None
    group_by: Literal["patient", "source"] = "patient"
    metadata: LocalPath | None = Field(None, description="default <data_dir>/pocus/…_metadata.csv")
    k: Annotated[Int, Field(ge=2)] = 5
    seed: Natural = 0


class BudgetConfig(_Section):
    trials: Count = 20
    max_concurrent: Count = 1
    max_epochs: Count = 100
    patience: Count = 10
    time_budget_s: Annotated[Float, Field(gt=0)] | None = None
    max_failures: Natural = Field(1, description="retries of a failed trial from its checkpoint")
    checkpoint_every: Natural = Field(5, description="epochs between checkpoints; 0: final only")
    checkpoint_interval_s: Annotated[Float, Field(ge=0)] = 60.0
    report_interval_s: Annotated[Float, Field(ge=0)] = Field(
        5.0, description="a trial reports at most this often; 0 (and ASHA): every epoch"
    )


class SchedulerConfig(_Section):
    name: Literal["none", "asha"] = "none"
    grace_period: Count = Field(5, description="epochs before ASHA may stop a trial")
    reduction_factor: Annotated[Float, Field(gt=1)] = 3.0


class SearcherConfig(_Section):
    sampler: Literal["tpe", "random", "cmaes"] = "tpe"  # the registry: hpo.study.SAMPLERS
    seed: Natural = 0
    start_from_paper_best: Bool = Field(False, description="the paper's point as the first trial")


class ResourcesConfig(_Section):
    cpu: Annotated[Float, Field(gt=0)] = 1.0
    gpu: Annotated[Float, Field(ge=0, description="fractions such as 0.25 share one GPU")] = 0.0
    gpu_memory_limit_mb: Count | None = None
    intra_op_threads: Count | None = None


class TrainingConfig(_Section):
    validation_fraction: Annotated[Float, Field(gt=0, lt=1)] = 0.2
    seed: Natural = 0
    deterministic: Literal["auto"] | Bool = Field("auto", description="auto: on without a GPU")
    mixed_precision: Bool = Field(False, description="bfloat16 compute, float32 softmax")


class RescoreConfig(_Section):
    top_k: Natural = Field(0, description="top trials retrained with fresh seeds; 0: off")
    seeds: Annotated[Int, Field(ge=2)] = 5


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
    fields = StudyConfig.model_fields
    return [f"{name}.{sub}" if sub else name for name, info in fields.items()
            for sub in getattr(info.annotation, "model_fields", None) or [""]]  # fmt: skip


def describe(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    """What a JSON Schema accepts, in words: 'an int in [1, inf)', "a str among {'a', 'b'}"."""
    schema = defs[schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema
    if "anyOf" in schema:
        forms = [describe(s, defs) for s in schema["anyOf"]]
        return ", ".join(forms[:-1]) + " or " + forms[-1]
    if "const" in schema or "enum" in schema:
        values = schema.get("enum", [schema.get("const")])
        return "a str among {" + ", ".join(map(repr, values)) + "}"
    kind = schema.get("type")
    if kind in ("integer", "number"):
        lo = schema.get("minimum", schema.get("exclusiveMinimum", "-inf"))
        hi = schema.get("maximum", schema.get("exclusiveMaximum", "inf"))
        left, right = "[" if "minimum" in schema else "(", "]" if "maximum" in schema else ")"
        return ("an int" if kind == "integer" else "a number") + f" in {left}{lo}, {hi}{right}"
    if kind == "array":
        size = "a non-empty list" if schema.get("minItems") else "a list"
        return f"{size} of ({describe(schema.get('items', {}), defs)})"
    if kind == "object":
        return "a mapping of " + ", ".join(schema.get("properties", ["keys to values"]))
    if kind == "string":
        return _WORDS.get(schema.get("pattern"), "a str")
    return {"boolean": "true or false", "null": "None"}.get(kind, "a value")


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
    key = loc[0] if ".".join(loc[:2]) not in config_keys() else ".".join(loc[:2])
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
    s3 = cfg.run_path.startswith("s3://")
    rules = [
        ("split.data_dir", split.kind == "paper" and not (split.cross_val or split.data_dir), None,
         "a data dir holding paper/cross_val.json (or set split.cross_val, or LUSHPO_DATA_DIR) "
         "when split.kind is 'paper'"),
        ("split.metadata", split.kind == "grouped" and not (split.metadata or split.data_dir),
         None, "the POCUS dataset_metadata.csv (or split.data_dir holding "
         "pocus/dataset_metadata.csv, or LUSHPO_DATA_DIR) when split.kind is 'grouped'"),
        ("feature_set.key", fs.grid and fs.key, fs.key, "unset when feature_set.grid is true"),
        ("scheduler.grace_period", asha.name == "asha"
         and asha.grace_period > cfg.budget.max_epochs,
         asha.grace_period, "at most budget.max_epochs"),
        ("storage.optuna_storage", s3 and not cfg.storage.optuna_storage, None,
         "an SQLAlchemy URL (required when storage.storage_path is s3://; the sqlite default "
         "lives next to a local storage path only)"),
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
    overrides: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
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


def load_config(
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> StudyConfig:
    """Read a study YAML file; `overrides` (CLI flags) win over it, `defaults` (env) lose to it."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        problem = "no such config file; pass --config an existing YAML file"
    except OSError as exc:
        problem = f"cannot read it ({exc.strerror})"
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        problem = f"not valid YAML: {what}{where}"
    else:
        return from_dict(data, overrides, defaults, source=str(path))
    raise InvalidConfigError("--config", "a YAML file", str(path), str(path), f"{path}: {problem}")
