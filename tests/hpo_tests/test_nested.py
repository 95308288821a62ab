"""hpo.search: inner splits that never hold an outer test clip, and a real tiny nested run (2 outer
× 2 inner folds × 2 trials) whose trials' own trial.json splits are checked, exported into the
model card and shown in the evaluate report beside the paper-style figure."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from hpo.search import from_dict
from hpo.search._nested import (
    NESTED_FILE,
    NestedLeakError,
    _check_no_leak,
    card_entry,
    inner_split,
    nested_table,
    outer_config,
    refit_and_score,
)
from pipeline.manifest import LABELS, Fold, Split
from tests.support.featuresets import put_synthetic, synthetic_feature_set
from tests.support.studies import TINY_SPACE, tiny_study

# one batch size: the refit of the outer fold's best trains the same head as its inner trials
NESTED_SPACE = {
    **TINY_SPACE,
    "batch_size": [8],
    "learning_rate": {"low": 3e-3, "high": 3e-2, "log": True},
}


def _labels(n: int = 30) -> dict[str, str]:
    fs = synthetic_feature_set(clips=n, frames=2, dim=4)
    return {c: LABELS[int(y)] for c, y in zip(fs.clip_ids, fs.labels, strict=True)}


# --- inner splits ------------------------------------------------------------------------------


def test_inner_split_partitions_exactly_the_outer_training_clips():
    labels = _labels(30)
    ids = sorted(labels)
    outer_test = ids[::5]
    outer_train = [c for c in ids if c not in outer_test]
    inner = inner_split(outer_train, labels, k=3, seed=0, outer=2)
    assert inner.name == "inner-2" and len(inner.folds) == 3
    tested = [c for fold in inner.folds for c in fold.test]
    assert sorted(tested) == sorted(outer_train)  # every training clip tested exactly once
    for fold in inner.folds:
        assert set(fold.train) | set(fold.test) == set(outer_train)
        assert not set(fold.train) & set(fold.test)
        assert not (set(fold.train) | set(fold.test)) & set(outer_test)
    # stratified: each inner test fold holds ⌊n_c / k⌋ or more clips of every class
    per_class = Counter(labels[c] for c in outer_train)
    for fold in inner.folds:
        got = Counter(labels[c] for c in fold.test)
        assert all(got[c] >= per_class[c] // 3 for c in per_class)


def test_inner_split_is_seeded_per_outer_fold():
    labels = _labels(31)
    train = sorted(labels)[:25]
    a = inner_split(train, labels, k=3, seed=4, outer=0)
    assert a == inner_split(train, labels, k=3, seed=4, outer=0)  # deterministic
    # leftover clips go to folds drawn from (seed, outer): some seed/outer pair differs
    others = [inner_split(train, labels, k=3, seed=s, outer=o) for s in range(3) for o in range(3)]
    assert any(o.folds != a.folds for o in others)


def test_inner_split_errors_name_the_outer_fold():
    labels = _labels(12)
    with pytest.raises(ValueError, match="outer fold 1: no label for 1 clip"):
        inner_split([*sorted(labels)[:6], "Cov-unknown.mp4"], labels, k=2, seed=0, outer=1)
    with pytest.raises(ValueError, match="outer fold 0: 2 training clips cannot make 3"):
        inner_split(sorted(labels)[:2], labels, k=3, seed=0)


def test_a_leaked_outer_test_clip_is_refused():
    leaky = Split("inner-0", (Fold(("a", "b"), ("c",)), Fold(("a", "c"), ("b",))))
    with pytest.raises(NestedLeakError, match="outer fold 0: 1 outer test clip"):
        _check_no_leak(0, ["c", "z"], leaky)
    _check_no_leak(0, ["z"], leaky)


def test_outer_config_names_the_inner_study_and_its_run_dir(tmp_path):
    cfg = from_dict(
        {"name": "s", "split": {"kind": "stratified"}, "storage": {"storage_path": str(tmp_path)}},
        source="test",
    )
    inner = outer_config(cfg, 3)
    assert inner.name == "s-outer-3"
    assert inner.run_path == f"{tmp_path}/s/nested/s-outer-3"
    assert inner.storage.optuna_storage == cfg.storage.optuna_storage  # one Optuna DB
    assert inner.budget == cfg.budget and inner.space == cfg.space


def test_card_entry_drops_clip_lists_but_keeps_the_numbers():
    record = {
        "accuracy": {"mean": 0.5, "std": 0.1},
        "outer_folds": [
            {
                "outer_fold": 0,
                "inner_split": {"folds": [{"train": ["a"], "test": ["b"]}]},
                "inner_split_digest": "d",
                "test": {"accuracy": 0.5, "probabilities": [[1, 0, 0]], "y_pred": [0]},
            }
        ],
    }
    entry = card_entry(record)
    assert entry["accuracy"] == record["accuracy"]
    fold = entry["outer_folds"][0]
    assert "inner_split" not in fold and fold["inner_split_digest"] == "d"
    assert fold["test"] == {"accuracy": 0.5, "y_pred": [0]}


def test_refit_scores_once_on_the_held_out_clips():
    fs = synthetic_feature_set(clips=36, frames=3, dim=8, signal=3.0)
    x, y = fs.features, fs.labels
    params = {**{k: v[0] if isinstance(v, list) else v for k, v in NESTED_SPACE.items()}}
    params.update(learning_rate=0.02, lstm_dropout=0.0, recurrent_dropout=0.0, dense_dropout_1=0.0)
    metrics = refit_and_score(x[:27], y[:27], x[27:], y[27:], params, epochs=15, seed=1)
    assert metrics["n"] == 9 and len(metrics["y_pred"]) == 9
    assert metrics["y_true"] == y[27:].tolist()
    assert np.allclose(np.sum(metrics["probabilities"], axis=1), 1.0, atol=1e-5)
    assert metrics["accuracy"] > 1 / 3 + 0.2  # learnable data: clearly above chance


# --- a real tiny nested run ----------------------------------------------------------------------


def _config(tmp_path: Path, uri: str) -> dict:
    return tiny_study(
        tmp_path, uri, "nest", split={"k": 2}, space=NESTED_SPACE, budget={"trials": 2},
        searcher={"seed": 3},
    )  # fmt: skip


@pytest.mark.slow
def test_nested_run_keeps_outer_tests_out_and_reaches_the_report(tmp_path, capsys):
    import ray

    from hpo.cli import main
    from hpo.results import evaluate, export_best, read_card
    from hpo.search import run_nested, run_study

    uri, _key, fs = put_synthetic(tmp_path / "store", clips=24, frames=4, dim=8, signal=2.0)
    data = _config(tmp_path, uri)
    cfg = from_dict(data, source="test")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    lines: list[str] = []
    try:
        # the paper-style study (one trial suffices here) the export takes its model from
        run_study(cfg.replace(budget={"trials": 1}), log=lines.append)
        record = run_nested(cfg, inner_k=2, log=lines.append)

        # nested.json: per-outer-fold results and the summary, as returned
        on_disk = json.loads((Path(cfg.run_path) / NESTED_FILE).read_text())
        assert on_disk["outer_folds"] == json.loads(json.dumps(record["outer_folds"]))
        assert len(record["outer_folds"]) == 2 and record["inner_folds"] == 2
        labels = dict(zip(fs.clip_ids, fs.labels.tolist(), strict=True))
        all_test: list[str] = []
        for k, outer in enumerate(record["outer_folds"]):
            test_ids = set(outer["test"]["test_ids"])
            all_test += outer["test"]["test_ids"]
            train_ids = set(fs.clip_ids) - test_ids
            assert outer["train_clips"] == len(train_ids) and outer["test"]["n"] == len(test_ids)
            assert outer["test"]["y_true"] == [labels[c] for c in outer["test"]["test_ids"]]
            assert outer["study"] == f"nest-outer-{k}" and outer["trials_finished"] == 2
            assert outer["epochs"] >= 1 and set(outer["params"]) >= {"lstm_units"}
            # the splits the inner trials actually received (their own trial.json records, in
            # the one experiment that ran every outer fold's inner study)
            written = [
                json.loads(p.read_text())
                for p in (Path(cfg.run_path) / "nested").rglob("trial.json")
            ]
            received = [
                r for r in written
                if Split.from_dict(r["split"]).digest() == outer["inner_split_digest"]
            ]  # fmt: skip
            assert len({r["params"]["learning_rate"] for r in received}) == 2  # both trials
            for trial in received:
                split = Split.from_dict(trial["split"])
                assert split.digest() == outer["inner_split_digest"]
                seen = {c for f in split.folds for c in (*f.train, *f.test)}
                assert seen == train_ids and not seen & test_ids
                scored = {c for f in trial["folds"] for c in f["test_ids"]}
                assert scored == train_ids  # inner trials never scored an outer test clip
            study = optuna.load_study(
                study_name=f"nest-outer-{k}", storage=cfg.storage.optuna_storage
            )
            assert len(study.trials) == 2
        assert sorted(all_test) == sorted(fs.clip_ids)  # every clip tested once, by an outer fold
        accs = [o["test"]["accuracy"] for o in record["outer_folds"]]
        assert record["accuracy"]["mean"] == pytest.approx(np.mean(accs))
        assert record["summary"]["accuracy"]["std"] == pytest.approx(np.std(accs))
        assert any("outer test accuracy" in line for line in lines)

        # the CLI refuses to redo it, and --resume reuses the finished inner studies
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(data))
        assert main(["tune", "--config", str(path), "--nested", "--inner-folds", "2"]) == 1
        assert "--resume" in capsys.readouterr().err
        args = ["tune", "--config", str(path), "--nested", "--inner-folds", "2", "--resume"]
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "honest estimate: accuracy" in out and "nest-outer-1" in out
        again = json.loads((Path(cfg.run_path) / NESTED_FILE).read_text())
        assert [o["params"] for o in again["outer_folds"]] == [
            o["params"] for o in record["outer_folds"]
        ]
    finally:
        ray.shutdown()

    export_best(cfg.run_path, tmp_path / "model", store=uri)
    card = read_card(tmp_path / "model")
    assert card["nested"]["accuracy"] == again["accuracy"]
    assert "inner_split" not in card["nested"]["outer_folds"][0]

    report = evaluate(tmp_path / "model")
    md = (tmp_path / "model" / "report.md").read_text()
    nested_md = md.split("## Nested cross-validation (honest estimate)")[1].split("## Plots")[0]
    acc = again["accuracy"]
    assert f"{acc['mean']:.3f} ± {acc['std']:.3f}" in nested_md
    paper_style = report["ours"]["accuracy"]
    assert f"{paper_style['mean']:.3f} ± {paper_style['std']:.3f}" in nested_md
    assert "nested (honest)" in nested_md and "NOT AVAILABLE" not in md
    assert "dense_units_1=" in nested_md and "dense_units_2" not in nested_md
    for outer in again["outer_folds"]:
        assert f"{outer['test']['accuracy']:.3f}" in nested_md
    assert any("same folds" in n for n in report["notes"])
    # the nested estimate's interval: its outer folds' test predictions pooled and bootstrapped
    interval = report["nested_confidence"]["accuracy"]
    right = sum(t == p for o in again["outer_folds"]
                for t, p in zip(o["test"]["y_true"], o["test"]["y_pred"], strict=True))  # fmt: skip
    clips = sum(len(o["test"]["y_true"]) for o in again["outer_folds"])
    assert interval["estimate"] == pytest.approx(right / clips)
    assert interval["low"] <= interval["estimate"] <= interval["high"]
    assert f"[{interval['low']:.3f}, {interval['high']:.3f}]" in md


def test_nested_table_lists_every_outer_fold():
    fold = {
        "outer_fold": 0,
        "train_clips": 12,
        "test_clips": 12,
        "trials_finished": 2,
        "inner_accuracy": {"mean": 0.75, "std": 0.1},
        "epochs": 3,
        "params": {"lstm_units": 8, "dense_layers": 1, "dense_units_1": 16, "dense_units_2": 64},
        "test": {"accuracy": 0.5, "per_class": {"cov": {"recall": 0.25}}},
    }
    record = {
        "name": "s",
        "outer_split": {"name": "paper"},
        "outer_folds": [fold, {**fold, "outer_fold": 1}],
        "accuracy": {"mean": 0.5, "std": 0.0},
        "cov_recall": {"mean": 0.25, "std": 0.0},
        "inner_folds": 5,
        "budget": {"trials": 20},
    }
    text = nested_table(record)
    assert "0.750" in text and "lstm_units=8" in text and text.count("0.500") >= 2
    assert "dense_units_1=16" in text and "dense_units_2" not in text  # unused block hidden
    assert "honest estimate: accuracy 0.500 ± 0.000" in text and "5 inner folds" in text


def test_read_nested_and_overwrite_removal(tmp_path):
    from hpo.search._nested import _remove, read_nested

    cfg = from_dict(
        {"name": "s", "split": {"kind": "stratified"}, "storage": {"storage_path": str(tmp_path)}},
        source="test",
    )
    assert read_nested(cfg.run_path) is None
    Path(cfg.run_path).mkdir(parents=True)
    (Path(cfg.run_path) / NESTED_FILE).write_text('{"accuracy": {"mean": 0.5, "std": 0.0}}')
    assert read_nested(cfg.run_path) == {"accuracy": {"mean": 0.5, "std": 0.0}}
    _remove(cfg)
    assert read_nested(cfg.run_path) is None


def test_evaluate_warns_when_the_nested_outer_split_is_another_one():
    from hpo.results._evaluate import _nested_notes

    split = Split("stratified", (Fold(("a",), ("b",)), Fold(("b",), ("a",))))
    card = {"split": split.to_dict(), "nested": {"outer_split": {"name": "paper", "digest": "x"}}}
    assert "WARNING" in _nested_notes(card)[0] and "not on the same folds" in _nested_notes(card)[0]
    card["nested"]["outer_split"]["digest"] = split.digest()
    assert "same folds" in _nested_notes(card)[0]
    assert _nested_notes({"split": split.to_dict(), "nested": None}) == []


def test_nested_json_round_trip_on_s3(tmp_path, s3_endpoint):
    """nested.json on an s3:// run (moto on loopback): written, read back, removed on overwrite."""
    import boto3

    from hpo.search._nested import _remove, _write, read_nested

    boto3.client("s3", endpoint_url=s3_endpoint.url).create_bucket(Bucket="runs")
    cfg = from_dict(
        {
            "name": "s",
            "split": {"kind": "stratified"},
            "storage": {
                "storage_path": "s3://runs/studies",
                "optuna_storage": f"sqlite:///{tmp_path / 'optuna.db'}",
                "endpoint_url": s3_endpoint.url,
            },
        },
        source="test",
    )
    assert read_nested(cfg.run_path, s3_endpoint.url) is None
    record = {"accuracy": {"mean": 0.5, "std": float("nan")}, "outer_folds": []}
    assert _write(cfg, record) == "s3://runs/studies/s/nested.json"
    assert read_nested(cfg.run_path, s3_endpoint.url) == {
        "accuracy": {"mean": 0.5, "std": None},  # strict JSON: NaN becomes null
        "outer_folds": [],
    }
    _remove(cfg)
    assert read_nested(cfg.run_path, s3_endpoint.url) is None
