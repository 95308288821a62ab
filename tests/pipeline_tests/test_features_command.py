"""`lushpo features` end to end on the synthetic clips (MobileNetV2, weights none, 2 frames)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import pipeline.extract
from hpo import project
from hpo.cli import main
from pipeline.manifest import build_manifest
from pipeline.store import open_store


@pytest.fixture
def env(synthetic_clips, tmp_path, monkeypatch):
    """A writable copy of the synthetic data dir; cache and env confined to tmp_path."""
    data_dir = tmp_path / "data"
    shutil.copytree(synthetic_clips.data_dir, data_dir)
    for name in ("LUSHPO_STORE", "LUSHPO_WEIGHTS", "LUSHPO_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LUSHPO_CACHE_DIR", str(tmp_path / "cache"))
    return data_dir


ARGS = ["features", "--backbone", "mobilenetv2", "--frames", "2", "--batch-size", "5"]


def test_extracts_once_then_finds_it_in_the_store(env, tmp_path, capsys, monkeypatch):
    store_uri = (tmp_path / "store").as_uri()
    argv = [*ARGS, "--weights", "none", "--data-dir", str(env), "--store", store_uri]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "stored mobilenetv2-f2-even-" in out and "(6, 2, 1280)" in out
    (key,) = open_store(store_uri).find("mobilenetv2", 2, "even")
    fs = open_store(store_uri).get(key)
    assert fs.clip_ids == build_manifest(env).ids and fs.features.shape == (6, 2, 1280)

    calls = []
    monkeypatch.setattr(pipeline.extract, "extract", lambda *a, **k: calls.append(a))
    assert main(argv) == 0
    assert f"found in store: {key}" in capsys.readouterr().out and calls == []


def test_environment_supplies_the_defaults_and_the_store_defaults_to_the_project_folder(
    env, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("LUSHPO_DATA_DIR", str(env))
    monkeypatch.setenv("LUSHPO_WEIGHTS", "none")
    monkeypatch.delenv("LUSHPO_STORE", raising=False)
    monkeypatch.delenv("LUSHPO_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main([*ARGS, "--sampling", "first"]) == 0
    store = open_store((tmp_path / ".lushpo" / "store").as_uri())
    (key,) = store.find("mobilenetv2", 2, "first")
    assert store.get(key).spec.weights_sha256 == "none"

    assert main(["features", "ls"]) == 0
    listing = capsys.readouterr().out
    assert key in listing and "6×2×1280" in listing and "mobilenetv2" in listing


def test_export_paper_writes_the_layout(env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LUSHPO_STORE", (tmp_path / "store").as_uri())
    assert main([*ARGS, "--weights", "none", "--data-dir", str(env)]) == 0
    (key,) = open_store((tmp_path / "store").as_uri()).find("mobilenetv2", 2, "even")
    assert main(["features", "export-paper", key, "--out", str(tmp_path / "paper")]) == 0
    directory = tmp_path / "paper" / "features_2" / "mobilenetv2"
    assert np.load(directory / "features-1280.npy").shape == (12, 1280)
    assert "DataSource(seq_length=2, features_length=1280" in capsys.readouterr().out


def test_missing_key_and_bad_weights_are_reported(env, tmp_path, capsys):
    store = (tmp_path / "store").as_uri()
    assert main(["features", "export-paper", "xception-f20-even-000000000000", "--out",
                 str(tmp_path / "x"), "--store", store]) == 1  # fmt: skip
    assert "not found in store" in capsys.readouterr().err
    missing = tmp_path / "absent.h5"
    assert main([*ARGS, "--weights", str(missing), "--data-dir", str(env), "--store", store]) == 1
    assert f"{missing} does not exist" in capsys.readouterr().err


def test_unknown_backbone_lists_the_valid_names(capsys):
    with pytest.raises(SystemExit):
        main(["features", "--backbone", "resnet50"])
    assert "xception" in capsys.readouterr().err


def test_the_project_folder_holds_every_default_and_moves_as_a_whole(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bare: dict[str, str] = {}
    assert project.home(bare) == tmp_path / ".lushpo"
    assert project.store_uri(bare) == (tmp_path / ".lushpo" / "store").as_uri()
    assert project.runs_dir(bare) == tmp_path / ".lushpo" / "runs"
    assert project.results_dir(bare) == tmp_path / ".lushpo" / "out"
    moved = {"LUSHPO_HOME": "elsewhere"}  # relative: made absolute against the working dir
    assert project.store_uri(moved) == (tmp_path / "elsewhere" / "store").as_uri()
    assert project.runs_dir(moved) == tmp_path / "elsewhere" / "runs"
    named = {**moved, "LUSHPO_STORE": "s3://bucket/store", "LUSHPO_RESULTS_DIR": "results"}
    assert project.store_uri(named) == "s3://bucket/store"
    assert project.results_dir(named) == tmp_path / "results"


def test_a_truncated_set_is_named_by_verify_and_rebuilt_by_features(env, tmp_path, capsys):
    """Issue 23, item 4: a corrupt set was trusted ("found in store") and nothing repaired it."""
    store_uri = (tmp_path / "store").as_uri()
    argv = [*ARGS, "--weights", "none", "--data-dir", str(env), "--store", store_uri]
    assert main(argv) == 0
    (key,) = open_store(store_uri).find("mobilenetv2", 2, "even")
    features = tmp_path / "store" / "featuresets" / key / "features.npy"
    features.write_bytes(features.read_bytes()[: features.stat().st_size // 2])
    capsys.readouterr()

    assert main(["features", "verify", "--store", store_uri]) == 1
    out = capsys.readouterr().out
    assert f"CORRUPT: feature set {key!r}" in out and "'features.npy' is corrupt" in out
    assert f"`lushpo features rm {key}`" in out and "0 of 1 feature set(s)" in out

    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "removing it and extracting it again" in captured.err
    assert f"stored {key}" in captured.out and "found in store" not in captured.out
    assert main(["features", "verify", key, "--store", store_uri]) == 0
    assert f"ok: {key}" in capsys.readouterr().out

    assert main(["features", "rm", key, "--store", store_uri]) == 0
    assert open_store(store_uri).list() == []
    assert main(["features", "rm", key, "--store", store_uri]) == 1
    assert "not found in store" in capsys.readouterr().err


def test_the_clip_manifest_cache_notices_a_clip_replaced_with_the_same_size_and_mtime(env):
    from hpo.cli._commands.features import _stamp

    clip = sorted((env / "pocus" / "convex").iterdir())[0]
    before = _stamp(env, "fail")
    stat = clip.stat()
    data = bytearray(clip.read_bytes())
    data[len(data) // 2] ^= 0xFF  # another clip of the same size, in the middle
    replacement = clip.with_name("replacement.tmp")
    replacement.write_bytes(bytes(data))
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, clip)
    assert clip.stat().st_size == stat.st_size and clip.stat().st_mtime_ns == stat.st_mtime_ns
    assert _stamp(env, "fail") != before
