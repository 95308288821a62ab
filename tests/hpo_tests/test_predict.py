"""hpo.results end to end on synthetic clips with a tiny `weights="none"` MobileNetV2 export:
probabilities sum to 1 and equal the head's output on the clip's stored features; weights whose
sha256 differs from the card's are refused with both hashes named."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from hpo.cli import main
from hpo.results import WeightsMismatchError, export_checkpoint, load_head, predict
from hpo.train import predict_proba
from pipeline.extract import extract
from pipeline.frames import count_frames
from pipeline.manifest import LABELS, Clip, Manifest
from pipeline.store import open_store
from tests.support.clips import write_clip
from tests.support.featuresets import synthetic_split
from tests.support.trial_checkpoint import TINY_PARAMS, make_checkpoint

FRAMES = 3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    clips = []
    for i in range(9):
        label = LABELS[i % 3]
        prefix = {"cov": "Cov", "pne": "Pneu", "reg": "Reg"}[label]
        path = write_clip(root / "clips" / f"{prefix}-synthetic-{i}.avi", frames=4 + 3 * i)
        clips.append(Clip(id=path.name, label=label, path=path, frames=count_frames(path)))
    fs = extract(Manifest(clips=tuple(clips)), "mobilenetv2", "none", FRAMES, progress=False)
    uri = (root / "store").resolve().as_uri()
    key = open_store(uri).put(fs)
    # A standardised head: predict must feed raw backbone features to the Normalization layer.
    params = {**TINY_PARAMS, "standardize": True}
    checkpoint, _ = make_checkpoint(
        root / "checkpoint", uri, key, synthetic_split(fs, k=3), params=params, max_epochs=2
    )
    out = root / "model"
    export_checkpoint(checkpoint, out, store=uri, provenance={"run": "r", "trial_id": "t"})
    return out, fs, {c.id: c.path for c in clips}


def test_probabilities_sum_to_one_and_match_the_stored_features(model_dir):
    out, fs, paths = model_dir
    clip = fs.clip_ids[4]
    (result,) = predict([paths[clip]], out, "none")
    probs = np.array([result.probabilities[c] for c in LABELS])
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    head = load_head(out)
    row = fs.clip_ids.index(clip)
    expected = predict_proba(head, fs.features[row : row + 1])[0]
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert result.label == LABELS[int(np.argmax(expected))]


def test_mismatched_weights_are_refused_naming_both_hashes(model_dir, tmp_path):
    out, _fs, paths = model_dir
    other = tmp_path / "other_weights.h5"
    other.write_bytes(b"not the weights the features were made with")
    import hashlib

    digest = hashlib.sha256(other.read_bytes()).hexdigest()
    with pytest.raises(WeightsMismatchError) as info:
        predict([next(iter(paths.values()))], out, str(other))
    message = str(info.value)
    assert "sha256 none" in message and digest in message and "model_card.json" in message


def test_a_model_h5_swapped_after_the_export_is_refused(model_dir, tmp_path):
    out, _fs, paths = model_dir
    swapped = tmp_path / "swapped"
    shutil.copytree(out, swapped)
    with h5py.File(swapped / "model.h5", "a") as model:  # any change to the file
        model.attrs["lushpo_swapped"] = 1
    with pytest.raises(ValueError, match=r"model\.h5: its sha256 differs from the one"):
        predict([next(iter(paths.values()))], swapped, "none")


def test_cli_prints_json_and_a_table(model_dir, capsys, monkeypatch):
    out, _fs, paths = model_dir
    clip = next(iter(paths.values()))
    monkeypatch.setenv("LUSHPO_WEIGHTS", "none")
    assert main(["predict", str(clip), "--model", str(out), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert set(row["probabilities"]) == set(LABELS) and row["clip"] == str(clip)
    assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert main(["predict", str(clip), "--model", str(out)]) == 0
    table = capsys.readouterr().out
    assert "predicted" in table and str(clip) in table
    assert main(["predict", str(clip), "--model", str(out), "--weights", str(clip)]) == 2
    assert "sha256" in capsys.readouterr().err
    assert main(["predict", "no-such-clip.avi", "--model", str(out)]) == 2
    assert "no-such-clip.avi" in capsys.readouterr().err


@pytest.mark.integration
def test_predict_a_shared_clip_with_xception_weights(shared_data_dir, xception_weights, tmp_path):
    """The acceptance check on real data: a clip from ../shared/data, the real Xception weights;
    the printed probabilities sum to 1 and match the head on that clip's stored features."""
    convex = shared_data_dir / "pocus" / "convex"
    clips = []
    for prefix, label in (("Cov", "cov"), ("Pneu", "pne"), ("Reg", "reg")):
        for path in sorted(convex.glob(f"{prefix}*"))[:3]:
            clips.append(Clip(id=path.name, label=label, path=path, frames=count_frames(path)))
    fs = extract(Manifest(clips=tuple(clips)), "xception", str(xception_weights), 2, progress=False)
    uri = (tmp_path / "store").resolve().as_uri()
    key = open_store(uri).put(fs)
    checkpoint, _ = make_checkpoint(
        tmp_path / "checkpoint", uri, key, synthetic_split(fs, k=3), max_epochs=2
    )
    out = tmp_path / "model"
    card = export_checkpoint(checkpoint, out, store=uri).card
    assert card["weights_sha256"] == (
        "b8742fd329245cf27aafac0e0fd8de99305ccadb5b59382f3277c485ab11cf8a"
    )
    clip = clips[4]
    (result,) = predict([clip.path], out, str(xception_weights))
    probs = np.array([result.probabilities[c] for c in LABELS])
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    row = fs.clip_ids.index(clip.id)
    expected = predict_proba(load_head(out), fs.features[row : row + 1])[0]
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    with pytest.raises(WeightsMismatchError, match="b8742fd3"):
        predict([clip.path], out, "none")
