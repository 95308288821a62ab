"""hpo.search: every key has a constraint; bad values fail once, naming key, form, value, fix."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from hpo.search import InvalidConfigError, StudyConfig, config_keys, from_dict, load_config

REPO = Path(__file__).resolve().parents[2]
BASE = {"name": "t", "split": {"kind": "stratified", "k": 3}}


def _with(**sections) -> dict:
    data = {**BASE}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


def test_every_field_has_a_constraint():
    schema = StudyConfig.model_json_schema()
    defs = schema["$defs"]
    constrained = {"type", "anyOf", "enum", "const", "$ref"}
    for key in config_keys():
        node = schema
        for part in key.split("."):
            node = (
                node.get("properties", {}).get(part)
                or defs[node["$ref"].split("/")[-1]]["properties"][part]
            )
        assert constrained & set(node), f"{key} accepts anything: {node}"
    assert schema["additionalProperties"] is False  # unknown keys are refused
    assert all(d["additionalProperties"] is False for d in defs.values())


def test_defaults_and_normalisation(tmp_path):
    cfg = from_dict(
        {
            **BASE,
            "feature_set": {"backbone": "xception", "frames": 20},
            "storage": {"storage_path": str(tmp_path / "runs")},
        }
    )
    assert cfg.feature_set.backbone == ("xception",) and cfg.feature_set.frames == (20,)
    assert cfg.searcher.sampler == "tpe" and cfg.scheduler.name == "none"
    assert cfg.storage.optuna_storage == f"sqlite:///{tmp_path}/runs/t/optuna.db"
    assert cfg.run_path == f"{tmp_path}/runs/t"
    with pytest.raises(ValueError, match="frozen"):
        cfg.name = "other"  # type: ignore[misc]


def test_unknown_keys_are_named_with_the_nearest_known_ones():
    with pytest.raises(InvalidConfigError) as info:
        from_dict(_with(budgett={"trials": 3}), source="study.yaml")
    assert info.value.key == "budgett"
    assert str(info.value).startswith("Unknown key 'budgett' in study.yaml: did you mean 'budget'")
    assert "{'trials': 3}" not in str(info.value)  # the value is not the problem
    with pytest.raises(InvalidConfigError, match=r"Unknown key 'budget.trails'.*'budget.trials'"):
        from_dict(_with(budget={"trails": 3}), source="study.yaml")


def test_config_file_errors_are_one_line_naming_the_file(tmp_path):
    with pytest.raises(InvalidConfigError, match=r"nope.yaml: no such file; pass --config"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nbudget: {trials: [\n")
    with pytest.raises(InvalidConfigError) as info:
        load_config(bad)
    message = str(info.value)
    assert message.startswith(f"{bad}: not valid YAML: ") and "at line 3" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("data", "key", "got", "allowed"),
    [
        (_with(budget={"trials": 0}), "budget.trials", "0", "greater than or equal to 1"),
        (_with(budget={"trials": True}), "budget.trials", "True", "a valid integer"),
        (_with(budget={"max_concurrent": 1.5}), "budget.max_concurrent", "1.5", "a valid integer"),
        (_with(searcher={"sampler": "grid"}), "searcher.sampler", "'grid'", "'cmaes'"),
        (_with(scheduler={"name": "hyperband"}), "scheduler.name", "'hyperband'", "'asha'"),
        (_with(resources={"gpu": -0.25}), "resources.gpu", "-0.25", "greater than or equal to 0"),
        (_with(resources={"cpu": 0}), "resources.cpu", "0", "greater than 0"),
        (_with(feature_set={"sampling": "odd"}), "feature_set.sampling", "'odd'", "'even'"),
        (_with(feature_set={"frames": [20, 0]}), "feature_set.frames", "[20, 0]", "non-empty"),
        (
            _with(training={"validation_fraction": 1.0}),
            "training.validation_fraction",
            "1.0",
            "less than 1",
        ),
        (
            _with(storage={"optuna_storage": "optuna.db"}),
            "storage.optuna_storage",
            "'optuna.db'",
            "sqlite:///",
        ),
        (_with(name="bad name!"), "name", "'bad name!'", "letters"),
        (_with(training={"deterministic": "yes"}), "training.deterministic", "'yes'", "'auto' or"),
        (_with(budget=3), "budget", "3", "a mapping"),
        ({"split": {"kind": "stratified"}}, "name", "None", "set (it has no default)"),
    ],
)
def test_invalid_values_name_key_form_value_and_fix(data, key, got, allowed):
    with pytest.raises(InvalidConfigError) as info:
        from_dict(data, source="study.yaml")
    message = str(info.value)
    assert info.value.key == key
    assert f"'{key}' key in study.yaml" in message
    assert f"Got {got} instead" in message
    assert allowed in message
    assert isinstance(info.value, ValueError)


def test_flag_named_for_keys_a_flag_sets(tmp_path):
    from hpo.cli._commands.tune import config_from_args

    path = tmp_path / "s.yaml"
    flags = dict.fromkeys(("trials", "name", "store", "storage_path", "optuna_storage"))
    args = argparse.Namespace(config=str(path), address=None, data_dir=None, **flags)
    path.write_text("name: n\nsplit: {kind: stratified}\nbudget: {trials: -1}\n")
    with pytest.raises(
        InvalidConfigError, match=r"; set `budget.trials` in .* or pass --trials\.$"
    ):
        config_from_args(args, {})
    path.write_text("name: n\nsplit: {kind: stratified}\nbudget: {patience: 0}\n")
    with pytest.raises(InvalidConfigError, match=r"set `budget.patience` in [^ ]*s.yaml\.$"):
        config_from_args(args, {})  # no flag sets budget.patience


def test_cmaes_over_a_categorical_space_is_refused_or_explicit():
    """Optuna's CMA-ES cannot model categorical dimensions: without a configured independent
    sampler the config is refused in one line naming them; with one, or over a space whose
    categorical dimensions are fixed, it is accepted."""
    base = {"name": "t", "split": {"kind": "stratified"}}
    with pytest.raises(InvalidConfigError) as info:
        from_dict({**base, "searcher": {"sampler": "cmaes"}}, source="study.yaml")
    message = str(info.value)
    assert info.value.key == "searcher.independent_sampler" and "\n" not in message
    assert "categorical dimensions lstm_units, dense_units_1, dense_units_2" in message
    explicit = from_dict({**base, "searcher": {"sampler": "cmaes", "independent_sampler": "tpe"}})
    assert explicit.searcher.independent_sampler == "tpe"
    fixed = {k: [64] for k in ("lstm_units", "dense_units_1", "dense_units_2", "dense_units_3")}
    from_dict({**base, "space": {**fixed, "batch_size": 16}, "searcher": {"sampler": "cmaes"}})
    with pytest.raises(InvalidConfigError, match=r"unset unless searcher\.sampler is cmaes"):
        from_dict({**base, "searcher": {"independent_sampler": "random"}})


def test_cross_field_rules():
    with pytest.raises(InvalidConfigError, match=r"split.data_dir"):
        from_dict({"name": "t"})  # paper split without cross_val.json or data dir
    with pytest.raises(InvalidConfigError, match=r"split.metadata.*dataset_metadata.csv"):
        from_dict({"name": "t", "split": {"kind": "grouped"}})  # grouped without the metadata
    grouped = from_dict({"name": "t", "split": {"kind": "grouped", "metadata": "m.csv"}})
    assert grouped.split.group_by == "patient" and grouped.split.metadata.endswith("/m.csv")
    with pytest.raises(InvalidConfigError, match=r"split.group_by"):
        from_dict({"name": "t", "split": {"kind": "grouped", "metadata": "m", "group_by": "ward"}})
    with pytest.raises(InvalidConfigError, match=r"scheduler.grace_period"):
        from_dict(_with(scheduler={"name": "asha", "grace_period": 9}, budget={"max_epochs": 3}))
    with pytest.raises(InvalidConfigError, match=r"storage.optuna_storage"):
        from_dict(_with(storage={"storage_path": "s3://bucket/runs"}))
    with pytest.raises(InvalidConfigError, match="'space' key"):
        from_dict(_with(space={"lstm_unitz": [32]}))
    with pytest.raises(InvalidConfigError, match="start_from_paper_best"):
        from_dict(_with(space={"lstm_units": [32]}, searcher={"start_from_paper_best": True}))


def test_precedence_flags_over_yaml_over_defaults(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: yaml-name\nstore: file:///yaml\nsplit: {kind: stratified}\n")
    cfg = load_config(path, {"name": "flag-name"}, {"store": "file:///env", "address": "auto"})
    assert cfg.name == "flag-name"
    assert cfg.store == "file:///yaml"  # YAML beats the environment default
    assert cfg.address == "auto"  # the default fills what the YAML leaves out


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(InvalidConfigError, match="--config"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(InvalidConfigError, match="valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("name", ["paper-xception-20.yaml", "quick.yaml"])
def test_shipped_configs_validate(name, tmp_path):
    cfg = load_config(REPO / "configs" / name, defaults={"split.data_dir": str(tmp_path)})
    assert cfg.feature_set.backbone == ("xception",) and cfg.feature_set.frames == (20,)
    assert cfg.split.kind == "paper"


def test_paper_grid_is_every_paper_cell(tmp_path):
    from hpo.results import read_evaluation
    from hpo.search import cell_configs

    cfg = load_config(REPO / "configs" / "paper-grid.yaml", defaults={"split.data_dir": "d"})
    cells = cell_configs(cfg)
    assert cfg.feature_set.grid and len(cells) == 48
    assert all(c.budget.trials == cfg.budget.trials and not c.feature_set.grid for c in cells)
    assert {c.run_path for c in cells} == {f"{cfg.run_path}/{c.name}" for c in cells}
    assert {c.storage.optuna_storage for c in cells} == {cfg.storage.optuna_storage}
    shared = REPO.parent / "shared" / "data" / "paper" / "evaluation.csv"
    if shared.is_file():  # the 48 ImageNet rows of evaluation.csv, nothing else
        rows = {r.model_label for r in read_evaluation(shared)}
        assert {c.name for c in cells} == {r for r in rows if not r.startswith("base_")}
    with pytest.raises(InvalidConfigError, match=r"feature_set\.key"):
        from_dict({"name": "g", "feature_set": {"grid": True, "key": "k"}, "split": {"kind":
                   "stratified"}})  # fmt: skip


def test_cli_reads_env_defaults_and_flags(tmp_path):
    from hpo.cli._commands.tune import config_from_args

    path = tmp_path / "s.yaml"
    path.write_text("name: n\n")
    args = argparse.Namespace(
        config=str(path),
        trials=3,
        name=None,
        store=None,
        storage_path=str(tmp_path / "r"),
        optuna_storage=None,
        address=None,
        data_dir=None,
    )
    env = {"LUSHPO_STORE": "file:///s", "LUSHPO_DATA_DIR": str(tmp_path), "RAY_ADDRESS": "h:1"}
    cfg = config_from_args(args, env)
    assert (cfg.budget.trials, cfg.store, cfg.address) == (3, "file:///s", "h:1")
    assert cfg.split.data_dir == str(tmp_path.resolve())
    assert cfg.storage.storage_path == str((tmp_path / "r").resolve())


def test_lushpo_tune_reports_bad_config_and_missing_feature_set(tmp_path, capsys):
    from hpo.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: n\nsplit: {kind: stratified}\nbudget: {trials: 0}\n")
    assert main(["tune", "--config", str(bad)]) == 2
    assert "'budget.trials' key" in capsys.readouterr().err

    store = tmp_path / "store"
    store.mkdir()
    good = tmp_path / "good.yaml"
    good.write_text(f"name: n\nsplit: {{kind: stratified}}\nstore: {store.as_uri()}\n")
    runs = tmp_path / "runs"
    assert main(["tune", "--config", str(good), "--storage-path", str(runs)]) == 1
    err = capsys.readouterr().err
    assert "xception-f20-even" in err and store.as_uri() in err  # names what and where
    assert not runs.exists()  # failed before any run directory was written


def _schema_configs() -> list[Path]:
    return [*sorted((REPO / "configs").glob("*.yaml")), REPO / "k8s" / "base" / "study.yaml",
            REPO / "k8s" / "overlays" / "gpu" / "study.yaml"]  # fmt: skip


def test_schema_file_is_current_and_every_config_names_it(capsys):
    """configs/lushpo.schema.json is what `lushpo config schema` prints, and each shipped config
    carries the comment editors read it from, resolving to that file."""
    import re

    from hpo.cli import main

    assert main(["config", "schema"]) == 0
    printed = capsys.readouterr().out
    assert (REPO / "configs" / "lushpo.schema.json").read_text() == printed, (
        "configs/lushpo.schema.json is stale: lushpo config schema --out configs/lushpo.schema.json"
    )
    for path in _schema_configs():
        first = path.read_text().splitlines()[0]
        match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
        assert match, f"{path} lacks the schema comment"
        assert (path.parent / match[1]).resolve() == REPO / "configs" / "lushpo.schema.json"


def test_json_schema_accepts_shipped_configs_and_refuses_bad_values():
    """What an editor checks as the YAML is typed agrees with the loader."""
    import json

    import jsonschema
    import yaml

    schema = json.loads((REPO / "configs" / "lushpo.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for path in _schema_configs():
        errors = list(validator.iter_errors(yaml.safe_load(path.read_text())))
        assert not errors, f"{path}: {errors[0].message}"
    bad_configs = [
        _with(budget={"trials": 0}),
        _with(budgett={}),
        _with(searcher={"sampler": "x"}),
        _with(feature_set={"frames": [20, 0]}),
        _with(training={"deterministic": "x"}),
    ]
    for bad in bad_configs:
        assert list(validator.iter_errors(bad)), bad
        with pytest.raises(InvalidConfigError):
            from_dict(bad)


def test_config_check_prints_the_resolved_config(tmp_path, capsys):
    import json

    from hpo.cli import main

    path = tmp_path / "s.yaml"
    path.write_text("name: n\nsplit: {kind: stratified}\nfeature_set: {frames: 5}\n")
    assert main(["config", "check", "--config", str(path), "--trials", "7"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["budget"]["trials"] == 7 and resolved["feature_set"]["frames"] == [5]
    path.write_text("name: n\nsplit: {kind: stratified}\nbudget: {trials: 0}\n")
    assert main(["config", "check", "--config", str(path)]) == 2
    assert "'budget.trials' key" in capsys.readouterr().err
