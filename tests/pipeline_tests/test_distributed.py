"""`lushpo features` with several backbones × frame counts: Ray actors on the embedded local
instance give the same features as the in-process path, each set is stored once, and a rerun
plans nothing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from hpo.cli import main
from pipeline.distributed import parse_backbones, parse_weights
from pipeline.extract import extract
from pipeline.manifest import build_manifest
from pipeline.store import open_store

pytestmark = [pytest.mark.slow]


@pytest.fixture
def env(synthetic_clips, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    shutil.copytree(synthetic_clips.data_dir, data_dir)
    for name in ("LUSHPO_STORE", "LUSHPO_WEIGHTS", "LUSHPO_DATA_DIR", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LUSHPO_CACHE_DIR", str(tmp_path / "cache"))
    return data_dir


def test_grid_on_local_ray_matches_in_process_and_reruns_do_nothing(env, tmp_path, capsys):
    store_uri = (tmp_path / "store").as_uri()
    argv = [
        "features", "--backbone", "mobilenetv2,nasnetmobile", "--frames", "2,3",
        "--weights", "none", "--data-dir", str(env), "--store", store_uri, "--batch-size", "4",
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("stored ") == 4, out
    store = open_store(store_uri)
    manifest = build_manifest(env)
    for backbone in ("mobilenetv2", "nasnetmobile"):
        for frames in (2, 3):
            (key,) = store.find(backbone, frames, "even")
            got = store.get(key)
            assert got.meta["computed_on"]["via"] == "ray"
            here = extract(manifest, backbone, "none", frames, batch_size=4, progress=False)
            assert here.spec.key() == key
            assert got.clip_ids == here.clip_ids
            np.testing.assert_allclose(got.features, here.features, rtol=1e-4, atol=1e-4)

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "stored " not in out and out.count("found in store: ") == 4


def test_backbone_and_weights_lists():
    assert parse_backbones("all")[0] == "xception" and len(parse_backbones("all")) == 12
    assert parse_backbones("vgg16, xception,vgg16") == ["vgg16", "xception"]
    with pytest.raises(KeyError, match="xception"):
        parse_backbones("resnet50")
    weights = parse_weights("xception=/w/x.h5,none", ["xception", "vgg16"])
    assert weights == {"xception": "/w/x.h5", "vgg16": "none"}
    assert parse_weights("s3://b/k#sha256=" + "0" * 64, ["vgg16"])["vgg16"].startswith("s3://")
    with pytest.raises(ValueError, match="no weights for vgg16"):
        parse_weights("xception=/w/x.h5", ["xception", "vgg16"])
