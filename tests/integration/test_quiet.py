"""Quiet by default: `lushpo predict` on one shared clip and `lushpo evaluate` on an export print
no TensorFlow, absl, Keras or Ray line on stderr; `-v` brings them back. Predict defaults to the
weights recorded in the model card."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hpo.results import export_checkpoint
from pipeline.extract import extract
from pipeline.frames import count_frames
from pipeline.manifest import Clip, Manifest
from pipeline.store import open_store
from tests.support.featuresets import synthetic_split
from tests.support.trial_checkpoint import make_checkpoint

pytestmark = [pytest.mark.slow]

LUSHPO = str(Path(sys.executable).with_name("lushpo"))
NOISE = re.compile(
    r"I0000|W0000|E0000|absl|InitializeLog|oneDNN|cuda|tensorflow|TensorFlow|retracing|"
    r"No training configuration|compile_metrics|\(raylet\)|Ray |UserWarning|DeprecationWarning"
)


@pytest.fixture(scope="module")
def export(shared_data_dir, xception_weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("quiet")
    convex = shared_data_dir / "pocus" / "convex"
    clips = [
        Clip(id=p.name, label=label, path=p, frames=count_frames(p))
        for prefix, label in (("Cov", "cov"), ("Pneu", "pne"), ("Reg", "reg"))
        for p in sorted(convex.glob(f"{prefix}*"))[:3]
    ]
    fs = extract(Manifest(clips=tuple(clips)), "xception", str(xception_weights), 2, progress=False)
    uri = (root / "store").resolve().as_uri()
    key = open_store(uri).put(fs)
    checkpoint, _ = make_checkpoint(root / "ckpt", uri, key, synthetic_split(fs, k=3), max_epochs=2)
    out = root / "model"
    export_checkpoint(checkpoint, out, store=uri)
    return out, uri, clips[4].path


def _lushpo(*args: str, env: dict[str, str | None]) -> subprocess.CompletedProcess:
    merged = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run([LUSHPO, *args], capture_output=True, text=True, timeout=600, env=merged)


def test_predict_and_evaluate_print_no_library_line(export, xception_weights, shared_data_dir):
    out, uri, clip = export
    env = {"LUSHPO_DATA_DIR": str(shared_data_dir), "LUSHPO_STORE": uri}
    runs = {
        "predict": _lushpo(
            "predict", str(clip), "--model", str(out), "--weights", str(xception_weights), env=env
        ),
        "evaluate": _lushpo("evaluate", str(out), env=env),
    }
    for verb, done in runs.items():
        assert done.returncode == 0, (verb, done.stderr[-3000:])
        noise = [line for line in done.stderr.splitlines() if NOISE.search(line)]
        assert noise == [], (verb, noise)
        assert len(done.stderr.splitlines()) <= 2, (verb, done.stderr)
        assert not NOISE.search(done.stdout), (verb, done.stdout)
    assert clip.name in runs["predict"].stdout
    # Without --weights or LUSHPO_WEIGHTS, predict uses the weights the card's features came from.
    card_weights = _lushpo("predict", str(clip), "--model", str(out),
                           env={**env, "LUSHPO_WEIGHTS": None})  # fmt: skip
    assert card_weights.returncode == 0, card_weights.stderr[-2000:]
    assert card_weights.stdout == runs["predict"].stdout
    loud = _lushpo("-v", "predict", str(clip), "--model", str(out), "--weights",
                   str(xception_weights), env=env)  # fmt: skip
    assert loud.returncode == 0 and NOISE.search(loud.stderr), loud.stderr[-2000:]


def test_version():
    done = _lushpo("--version", env={})
    assert done.returncode == 0 and re.fullmatch(r"lushpo \d+\.\d+\.\d+\n", done.stdout)
