"""`lushpo features` on ../shared/data with the real Xception ImageNet weights (issue 2's
acceptance run): a (121 or 119, 20, 2048) feature set lands in the store, and a second run finds
it there without building or calling a model. About 3-4 minutes on a 2-core machine."""

from __future__ import annotations

import numpy as np
import pytest

import pipeline.backbones
import pipeline.extract
from hpo.cli import main
from pipeline.store import open_store

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_xception_20_frames_then_found_in_store(
    shared_data_dir, xception_weights, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("LUSHPO_CACHE_DIR", str(tmp_path / "cache"))
    store_uri = (tmp_path / "store").as_uri()
    argv = [
        "features",
        "--backbone",
        "xception",
        "--frames",
        "20",
        "--weights",
        str(xception_weights),
        "--data-dir",
        str(shared_data_dir),
        "--store",
        store_uri,
    ]
    assert main(argv) == 0
    assert "stored xception-f20-even-" in capsys.readouterr().out
    store = open_store(store_uri)
    (key,) = store.find("xception", 20, "even")
    fs = store.get(key)
    assert fs.features.shape in {(121, 20, 2048), (119, 20, 2048)}
    assert fs.features.dtype == np.float32 and np.isfinite(fs.features).all()
    assert fs.features.min() >= 0 and fs.features.std() > 0.05  # ReLU features of real weights
    assert fs.spec.weights_sha256 == (
        "b8742fd329245cf27aafac0e0fd8de99305ccadb5b59382f3277c485ab11cf8a"
    )
    assert "Cov-Atlas+(44).gif" in fs.clip_ids and fs.meta["skipped"] == []

    def refuse(*args, **kwargs):
        raise AssertionError("the second run must not build or run a model")

    monkeypatch.setattr(pipeline.extract, "extract", refuse)
    monkeypatch.setattr(pipeline.backbones.Backbone, "build", refuse)
    assert main(argv) == 0  # found: nothing extracted (`refuse` above would fail it)
    assert f"found in store: {key}" in capsys.readouterr().out
