"""pipeline.backbones: the registry, preprocessing, and every way of naming weights.

Models are MobileNetV2 (the smallest backbone at its 224 px input); weights files are written by
the test from a model whose weights differ from the seeded random init, so loading is observable.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import threading
from pathlib import Path

import boto3
import numpy as np
import pytest

from pipeline.backbones import (
    BACKBONES,
    ResolvedWeights,
    UnknownBackboneError,
    WeightsError,
    get_backbone,
    load_backbone,
    resolve_weights,
)

PAPER_TABLE = {  # name: (input size, feature length), as in the paper and keras.applications
    "xception": (299, 2048),
    "vgg16": (224, 25088),
    "vgg19": (224, 25088),
    "resnet152v2": (224, 2048),
    "inceptionresnetv2": (299, 1536),
    "densenet121": (224, 1024),
    "densenet169": (224, 1664),
    "densenet201": (224, 1920),
    "mobilenetv2": (224, 1280),
    "nasnetmobile": (224, 1056),
    "nasnetlarge": (331, 4032),
    "efficientnetb0": (224, 1280),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def same_weights(a, b) -> bool:
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb, strict=True))


@pytest.fixture(scope="module")
def trained_like():
    """A MobileNetV2 backbone whose weights differ from `weights="none"`'s seeded init."""
    model = get_backbone("mobilenetv2").build(None)
    model.set_weights([w + 0.25 for w in model.get_weights()])
    return model


@pytest.fixture(scope="module")
def weights_file(trained_like, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "mobilenetv2.weights.h5"
    trained_like.save_weights(path)  # Keras 3 native weights format
    return path


# --- registry ----------------------------------------------------------------------------------


def test_registry_matches_the_paper_table():
    assert {n: (b.input_size, b.dim) for n, b in BACKBONES.items()} == PAPER_TABLE
    assert {n for n, b in BACKBONES.items() if b.pooling == "flatten"} == {"vgg16", "vgg19"}


def test_registry_matches_the_papers_evaluation_csv(shared_data_dir):
    with open(shared_data_dir / "paper" / "evaluation.csv", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    lengths = {r[1].rsplit("-", 1)[0]: int(r[3]) for r in rows if not r[1].startswith("base_")}
    assert lengths == {n: b.dim for n, b in BACKBONES.items()}


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(UnknownBackboneError) as info:
        get_backbone("resnet50")
    message = str(info.value)
    assert "'resnet50'" in message and all(name in message for name in BACKBONES)


def test_each_backbone_uses_its_own_preprocess_input():
    red = np.zeros((1, 2, 2, 3), np.uint8)
    red[0, 0, 0, 0] = 255  # pixel (0, 0) = pure red; the rest black
    x = get_backbone("xception").preprocess(red)  # "tf" mode: [0, 255] → [-1, 1]
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x[0, 0, 0], [1.0, -1.0, -1.0])
    v = get_backbone("vgg16").preprocess(red)  # "caffe": RGB→BGR, minus ImageNet means
    np.testing.assert_allclose(v[0, 0, 0], [-103.939, -116.779, 255 - 123.68], rtol=1e-6)
    d = get_backbone("densenet121").preprocess(red)  # "torch": /255, mean/std normalised
    np.testing.assert_allclose(d[0, 0, 0, 0], (1 - 0.485) / 0.229, rtol=1e-5)
    e = get_backbone("efficientnetb0").preprocess(red)  # rescaling is inside the model
    np.testing.assert_array_equal(e, red.astype(np.float32))


def test_preprocess_leaves_its_input_untouched():
    frames = np.full((1, 4, 4, 3), 128, np.uint8)
    get_backbone("mobilenetv2").preprocess(frames)
    assert frames.dtype == np.uint8 and int(frames.max()) == 128


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PAPER_TABLE))
def test_every_backbone_builds_with_the_paper_feature_length(name):
    model = get_backbone(name).build(None)
    size, dim = PAPER_TABLE[name]
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, dim)


# --- weights: none and local files -------------------------------------------------------------


def test_none_is_seeded_random_init():
    first, digest = load_backbone("mobilenetv2", "none")
    second, _ = load_backbone("mobilenetv2", "none")
    assert digest == "none" and same_weights(first, second)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
    assert first.predict_on_batch(x).shape == (2, 1280)


def test_local_file_loads_and_reports_its_sha256(weights_file, trained_like):
    model, digest = load_backbone("mobilenetv2", str(weights_file))
    assert digest == sha256(weights_file)
    assert same_weights(model, trained_like)
    assert resolve_weights("mobilenetv2", f"file://{weights_file}").sha256 == digest


def test_a_relative_path_is_recorded_absolute(weights_file, monkeypatch):
    """Issue 23: the source the features and the model card record is absolute, so `predict`
    run from another folder finds the same file (a relative LUSHPO_WEIGHTS was kept verbatim)."""
    monkeypatch.chdir(weights_file.parent)
    resolved = resolve_weights("mobilenetv2", weights_file.name)
    assert resolved.source == str(weights_file.resolve()) and Path(resolved.source).is_absolute()
    assert resolved.sha256 == sha256(weights_file)


def test_missing_local_file_names_the_path(tmp_path):
    with pytest.raises(WeightsError, match=r"nope\.h5 does not exist.*--weights"):
        resolve_weights("xception", tmp_path / "nope.h5")


def test_weights_of_another_backbone_are_refused_naming_the_file(weights_file):
    match = r"mobilenetv2\.weights\.h5: cannot load .* nasnetmobile"
    with pytest.raises(WeightsError, match=match):
        load_backbone("nasnetmobile", weights_file)


def test_resolved_weights_are_used_as_given(weights_file, trained_like):
    resolved = ResolvedWeights(str(weights_file), weights_file, "abc")
    model, digest = load_backbone("mobilenetv2", resolved)
    assert digest == "abc" and same_weights(model, trained_like)


def test_shared_xception_weights_load(xception_weights):
    resolved = resolve_weights("xception", xception_weights)
    assert resolved.sha256 == "b8742fd329245cf27aafac0e0fd8de99305ccadb5b59382f3277c485ab11cf8a"


# --- weights: s3:// ----------------------------------------------------------------------------


@pytest.fixture
def bucket(s3_endpoint, weights_file):
    client = boto3.client("s3")
    client.create_bucket(Bucket="lushpo-weights")
    client.upload_file(str(weights_file), "lushpo-weights", "models/mobilenetv2.weights.h5")
    return client


def test_s3_with_sha256_fragment_downloads_once(bucket, s3_endpoint, weights_file, tmp_path):
    digest = sha256(weights_file)
    uri = f"s3://lushpo-weights/models/mobilenetv2.weights.h5#sha256={digest}"
    first = resolve_weights("mobilenetv2", uri, cache_dir=tmp_path)
    assert first.sha256 == digest and first.path.is_relative_to(tmp_path / "weights" / "s3")
    gets = s3_endpoint.count("GET", "mobilenetv2.weights.h5")
    second = resolve_weights("mobilenetv2", uri, cache_dir=tmp_path)
    assert second.path == first.path
    assert s3_endpoint.count("GET", "mobilenetv2.weights.h5") == gets  # served from the cache


def test_s3_weights_load_into_the_model(bucket, weights_file, trained_like, tmp_path):
    uri = "s3://lushpo-weights/models/mobilenetv2.weights.h5"
    model, digest = load_backbone("mobilenetv2", uri, cache_dir=tmp_path)
    assert digest == sha256(weights_file) and same_weights(model, trained_like)


def test_s3_sidecar_checksum_is_checked(bucket, weights_file, tmp_path):
    key = "models/mobilenetv2.weights.h5"
    bucket.put_object(
        Bucket="lushpo-weights", Key=f"{key}.sha256", Body=f"{sha256(weights_file)}  x.h5\n"
    )
    assert resolve_weights("mobilenetv2", f"s3://lushpo-weights/{key}", cache_dir=tmp_path)
    bucket.put_object(Bucket="lushpo-weights", Key=f"{key}.sha256", Body="0" * 64)
    with pytest.raises(WeightsError, match=r"sha256 mismatch: expected 0{64}, downloaded"):
        resolve_weights("mobilenetv2", f"s3://lushpo-weights/{key}", cache_dir=tmp_path / "b")
    partial = [p for p in (tmp_path / "b").rglob("*") if p.is_file() and "lock" not in p.name]
    assert partial == []  # nothing half-written or unverified is left in the cache


def test_s3_bad_fragment_and_missing_object_are_named(bucket, tmp_path):
    with pytest.raises(WeightsError, match="fragment must be #sha256="):
        resolve_weights("mobilenetv2", "s3://lushpo-weights/models/x.h5#md5=1", cache_dir=tmp_path)
    with pytest.raises(WeightsError, match=r"s3://lushpo-weights/models/absent\.h5: cannot down"):
        resolve_weights("mobilenetv2", "s3://lushpo-weights/models/absent.h5", cache_dir=tmp_path)


# --- weights: imagenet (Keras' download, served from loopback) ---------------------------------


class _Server:
    """A loopback HTTP server over a directory that counts the GETs it answers."""

    def __init__(self, root: Path) -> None:
        self.gets: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                server.gets.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def mirror(tmp_path, trained_like):
    """The keras-applications URL layout on loopback: MobileNetV2 (Keras checks no hash) holds
    a legacy-h5 file of `trained_like`; Xception holds bytes that fail Keras' md5 check."""
    root = tmp_path / "mirror"
    entry = get_backbone("mobilenetv2")
    target = root / entry.imagenet_path
    target.parent.mkdir(parents=True)
    trained_like.save(target.with_name("model.h5"))  # Keras' legacy h5 layout, as Keras serves
    target.with_name("model.h5").rename(target)
    bogus = root / get_backbone("xception").imagenet_path
    bogus.parent.mkdir(parents=True)
    bogus.write_bytes(b"not the xception weights")
    server = _Server(root)
    yield server, target
    server.close()


def test_imagenet_is_keras_download_then_cached(mirror, trained_like, tmp_path):
    server, served = mirror
    cache = tmp_path / "cache"
    model, digest = load_backbone(
        "mobilenetv2", "imagenet", cache_dir=cache, imagenet_base_url=server.url
    )
    assert digest == sha256(served) and same_weights(model, trained_like)
    assert server.gets == [f"/{get_backbone('mobilenetv2').imagenet_path}"]
    again = resolve_weights(
        "mobilenetv2", "imagenet", cache_dir=cache, imagenet_base_url=server.url
    )
    assert again.sha256 == digest and len(server.gets) == 1  # no second download
    assert again.path.is_relative_to(cache / "weights" / "imagenet")


def test_imagenet_file_failing_keras_hash_is_refused(mirror, tmp_path):
    server, _ = mirror
    with pytest.raises(WeightsError, match=r"xception_weights_tf_dim_ordering.*xception"):
        resolve_weights("xception", "imagenet", cache_dir=tmp_path, imagenet_base_url=server.url)
