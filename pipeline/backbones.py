"""Registry of the paper's keras.applications backbones, and resolution of their weights.

Why a registry: the paper's evaluation.csv names each feature extractor by a lower-case label
(`xception`, `vgg16`, ...) and records its feature length; one table here ties that label to the
keras.applications constructor, the input size it was trained at, its own `preprocess_input`,
the pooling that yields that feature length, and the URL Keras downloads its ImageNet weights from.

Weights are named by a string, resolved to a local file whose sha256 becomes part of the feature
set's key (same bytes, same key — whichever way the file arrived):

- ``"imagenet"``: Keras' official no-top download (``keras.utils.get_file``, the URL and md5
  that keras.applications itself uses), cached in ``~/.keras/models`` or
  ``<cache_dir>/weights/imagenet``.
- a local path (or ``file://`` URI) to an ``.h5`` / ``.weights.h5`` file.
- ``s3://bucket/key``: fetched with boto3 (endpoint and credentials from the standard ``AWS_*``
  variables) into ``<cache_dir>/weights/s3/``, checked against ``#sha256=<hex>`` or the
  ``<uri>.sha256`` sidecar object when either exists; for air-gapped clusters.
- ``"none"``: seeded random initialisation, for tests; its sha256 is reported as ``"none"``.

TensorFlow is imported only when a model is built, so resolving weights (and computing a feature
set's key) stays cheap.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np
from filelock import FileLock

from pipeline.files import sha256_file

if TYPE_CHECKING:
    import keras

__all__ = [
    "BACKBONES",
    "KERAS_WEIGHTS_BASE_URL",
    "Backbone",
    "ResolvedWeights",
    "UnknownBackboneError",
    "WeightsError",
    "get_backbone",
    "load_backbone",
    "resolve_weights",
]

KERAS_WEIGHTS_BASE_URL = "https://storage.googleapis.com/"
"""Where keras.applications downloads ImageNet weights from (paths below are relative to it)."""

RANDOM_INIT_SEED = 0
"""Seed for ``weights="none"``: random features must still be reproducible, because the store
keys them as ``weights_sha256="none"``."""

DEFAULT_CACHE_DIR = Path("~/.cache/lushpo")


@dataclass(frozen=True)
class Backbone:
    """One keras.applications feature extractor as the paper used it (no top, ImageNet size)."""

    name: str  # the paper's label, e.g. "xception"
    constructor: str  # keras.applications attribute, e.g. "Xception"
    module: str  # keras.applications submodule holding preprocess_input, e.g. "xception"
    input_size: int  # square input side in pixels
    dim: int  # feature length per frame
    pooling: str  # "avg" (global average pooling) or "flatten" (VGG: 7×7×512 → 25088)
    imagenet_file: str  # file name Keras caches the no-top ImageNet weights under
    imagenet_path: str  # URL path under KERAS_WEIGHTS_BASE_URL
    imagenet_md5: str | None  # the file_hash keras.applications checks (None: Keras checks none)

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` that frames are resized to."""
        return (self.input_size, self.input_size)

    def preprocess(self, frames: np.ndarray) -> np.ndarray:
        """The backbone's own ``preprocess_input`` on RGB frames ``[..., h, w, 3]`` → float32."""
        import keras

        module = getattr(keras.applications, self.module)
        return np.asarray(module.preprocess_input(np.array(frames, dtype=np.float32)), np.float32)

    def build(self, weights_path: Path | None) -> keras.Model:
        """The no-top model with our pooling, loading `weights_path` (``None``: seeded random)."""
        import keras

        if weights_path is None:
            keras.utils.set_random_seed(RANDOM_INIT_SEED)
        constructor = getattr(keras.applications, self.constructor)
        kwargs: dict = {
            "include_top": False,
            "weights": None if weights_path is None else str(weights_path),
            "input_shape": (self.input_size, self.input_size, 3),
        }
        try:
            if self.pooling == "avg":
                model = constructor(pooling="avg", **kwargs)
            else:
                base = constructor(**kwargs)
                flat = keras.layers.Flatten(name="flatten_features")(base.output)
                model = keras.Model(base.input, flat, name=f"{base.name}_flatten")
        except (ValueError, OSError, KeyError) as error:
            raise WeightsError(
                f"{weights_path}: cannot load these weights into {self.name} "
                f"({self.constructor}, include_top=False): {error}"
            ) from error
        if model.output_shape[-1] != self.dim:  # guards the registry itself
            raise AssertionError(f"{self.name} gives {model.output_shape}, expected dim {self.dim}")
        return model


def _entry(
    name: str,
    constructor: str,
    module: str,
    size: int,
    dim: int,
    file: str,
    path: str,
    md5: str | None,
    pooling: str = "avg",
) -> Backbone:
    return Backbone(name, constructor, module, size, dim, pooling, file, path, md5)


_KA = "tensorflow/keras-applications/"
_DN = "_weights_tf_dim_ordering_tf_kernels_notop.h5"
_MOBILENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"

BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        # URLs, file names and md5s as in keras.applications (Keras 3.15).
        _entry(
            "xception", "Xception", "xception", 299, 2048, f"xception{_DN}",
            f"{_KA}xception/xception{_DN}", "b0042744bf5b25fce3cb969f33bebb97",
        ),
        _entry(
            "vgg16", "VGG16", "vgg16", 224, 25088, f"vgg16{_DN}",
            f"{_KA}vgg16/vgg16{_DN}", "6d6bbae143d832006294945121d1f1fc", pooling="flatten",
        ),
        _entry(
            "vgg19", "VGG19", "vgg19", 224, 25088, f"vgg19{_DN}",
            f"{_KA}vgg19/vgg19{_DN}", "253f8cb515780f3b799900260a226db6", pooling="flatten",
        ),
        _entry(
            "resnet152v2", "ResNet152V2", "resnet_v2", 224, 2048, f"resnet152v2{_DN}",
            f"{_KA}resnet/resnet152v2{_DN}", "ed17cf2e0169df9d443503ef94b23b33",
        ),
        _entry(
            "inceptionresnetv2", "InceptionResNetV2", "inception_resnet_v2", 299, 1536,
            f"inception_resnet_v2{_DN}", f"{_KA}inception_resnet_v2/inception_resnet_v2{_DN}",
            "d19885ff4a710c122648d3b5c3b684e4",
        ),
        _entry(
            "densenet121", "DenseNet121", "densenet", 224, 1024, f"densenet121{_DN}",
            f"{_KA}densenet/densenet121{_DN}", "30ee3e1110167f948a6b9946edeeb738",
        ),
        _entry(
            "densenet169", "DenseNet169", "densenet", 224, 1664, f"densenet169{_DN}",
            f"{_KA}densenet/densenet169{_DN}", "b8c4d4c20dd625c148057b9ff1c1176b",
        ),
        _entry(
            "densenet201", "DenseNet201", "densenet", 224, 1920, f"densenet201{_DN}",
            f"{_KA}densenet/densenet201{_DN}", "c13680b51ded0fb44dff2d8f86ac8bb1",
        ),
        _entry(
            "mobilenetv2", "MobileNetV2", "mobilenet_v2", 224, 1280, _MOBILENET_FILE,
            f"{_KA}mobilenet_v2/{_MOBILENET_FILE}", None,
        ),
        _entry(
            "nasnetmobile", "NASNetMobile", "nasnet", 224, 1056, "nasnet_mobile_no_top.h5",
            f"{_KA}nasnet/NASNet-mobile-no-top.h5", "1ed92395b5b598bdda52abe5c0dbfd63",
        ),
        _entry(
            "nasnetlarge", "NASNetLarge", "nasnet", 331, 4032, "nasnet_large_no_top.h5",
            f"{_KA}nasnet/NASNet-large-no-top.h5", "d81d89dc07e6e56530c4e77faddd61b5",
        ),
        _entry(
            "efficientnetb0", "EfficientNetB0", "efficientnet", 224, 1280,
            "efficientnetb0_notop.h5", "keras-applications/efficientnetb0_notop.h5",
            "50bc09e76180e00e4465e1a485ddc09d",
        ),
    )
}  # fmt: skip
"""The paper's feature extractors by their evaluation.csv label."""


class UnknownBackboneError(KeyError):
    """A backbone name that is not in `BACKBONES`; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class WeightsError(ValueError):
    """Weights that cannot be found, fetched, verified or loaded; the message names the source."""


@dataclass(frozen=True)
class ResolvedWeights:
    """A weights choice turned into a local file and the sha256 that keys its features."""

    source: str  # what was asked for: "imagenet", a path, an s3:// URI, or "none"
    path: Path | None  # the local file Keras loads; None for random initialisation
    sha256: str  # hex digest of `path`, or "none"


def get_backbone(name: str) -> Backbone:
    """The registry entry for `name` (the paper's lower-case label)."""
    try:
        return BACKBONES[name]
    except KeyError:
        valid = ", ".join(BACKBONES)
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; choose one of: {valid} (flag --backbone)"
        ) from None


def resolve_weights(
    backbone: str,
    weights: str | os.PathLike[str],
    *,
    cache_dir: Path | str | None = None,
    imagenet_base_url: str = KERAS_WEIGHTS_BASE_URL,
) -> ResolvedWeights:
    """Turn a weights choice into a local, hashed file without building a model (no TensorFlow).

    Args:
        backbone: registry name; decides which ImageNet file ``"imagenet"`` means.
        weights: ``"imagenet"``, ``"none"``, a local path / ``file://`` URI, or ``s3://bucket/key``
            (optionally ``#sha256=<hex>``).
        cache_dir: lushpo's cache root (default ``~/.cache/lushpo``); weights go under
            ``weights/``. For ``"imagenet"`` the default is Keras' own cache, ``~/.keras``.
        imagenet_base_url: where the ImageNet files are served (a mirror, or a test server).

    Raises:
        UnknownBackboneError, WeightsError.
    """
    entry = get_backbone(backbone)
    source = os.fspath(weights)
    if source == "none":
        return ResolvedWeights(source, None, "none")
    if source == "imagenet":
        path = _fetch_imagenet(entry, cache_dir, imagenet_base_url)
        return ResolvedWeights(source, path, sha256_file(path))
    if source.startswith("s3://"):
        path, digest = _fetch_s3(source, _cache_root(cache_dir) / "weights" / "s3")
        return ResolvedWeights(source, path, digest)
    path = Path(source.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist; pass imagenet, none, an s3:// URI or an "
            "existing .h5 file (flag --weights, env LUSHPO_WEIGHTS)"
        )
    # The source recorded with the features and the model card: absolute, so `predict` run from
    # another folder finds the same file.
    return ResolvedWeights(str(path.resolve()), path.resolve(), sha256_file(path))


def load_backbone(
    name: str,
    weights: str | os.PathLike[str] | ResolvedWeights,
    *,
    cache_dir: Path | str | None = None,
    imagenet_base_url: str = KERAS_WEIGHTS_BASE_URL,
) -> tuple[keras.Model, str]:
    """Build backbone `name` with `weights`; returns ``(model, weights_sha256)``.

    The model maps preprocessed frames ``[batch, s, s, 3]`` to features ``[batch, dim]``.
    """
    entry = get_backbone(name)
    resolved = (
        weights
        if isinstance(weights, ResolvedWeights)
        else resolve_weights(
            name, weights, cache_dir=cache_dir, imagenet_base_url=imagenet_base_url
        )
    )
    return entry.build(resolved.path), resolved.sha256


def _cache_root(cache_dir: Path | str | None) -> Path:
    return Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()


def _fetch_imagenet(entry: Backbone, cache_dir: Path | str | None, base_url: str) -> Path:
    """Keras' own downloader and md5 check, so a user gets exactly keras.applications' file."""
    import keras

    origin = base_url.rstrip("/") + "/" + entry.imagenet_path
    kwargs: dict = {"cache_subdir": "models"}
    if cache_dir is not None:
        root = _cache_root(cache_dir) / "weights"
        root.mkdir(parents=True, exist_ok=True)  # else get_file silently falls back to /tmp
        kwargs = {"cache_dir": str(root), "cache_subdir": "imagenet"}
    try:
        path = keras.utils.get_file(
            entry.imagenet_file, origin, file_hash=entry.imagenet_md5, **kwargs
        )
    except Exception as error:  # get_file raises bare Exception/ValueError for fetch and hash
        raise WeightsError(
            f"{origin}: ImageNet weights for {entry.name}: {' '.join(str(error).split())}; "
            f"offline, give a copy of {entry.imagenet_file} with --weights PATH or LUSHPO_WEIGHTS"
        ) from error
    return Path(path)


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _fetch_s3(uri: str, root: Path) -> tuple[Path, str]:
    """Download ``s3://bucket/key`` into `root` (atomic, locked per file), verify, return it.

    With a known sha256 a cached copy that still matches is reused; without one the object is
    fetched again each time, since nothing else says whether it changed.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    parts = urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key:
        raise WeightsError(f"{uri}: expected s3://bucket/key")
    clean = f"s3://{bucket}/{key}"
    client = boto3.client("s3")
    expected = _expectedsha256_file(uri, parts.fragment, client, bucket, key)
    dest = root / bucket / key
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if expected and dest.is_file() and sha256_file(dest) == expected:
            return dest, expected
        handle, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        os.close(handle)
        try:
            client.download_file(bucket, key, tmp)
            actual = sha256_file(Path(tmp))
            if expected and actual != expected:
                raise WeightsError(
                    f"{clean}: sha256 mismatch: expected {expected}, downloaded {actual}"
                )
            os.replace(tmp, dest)
        except (BotoCoreError, ClientError) as error:
            raise WeightsError(f"{clean}: cannot download weights: {error}") from error
        finally:
            Path(tmp).unlink(missing_ok=True)
    return dest, actual


def _expectedsha256_file(uri: str, fragment: str, client, bucket: str, key: str) -> str | None:
    """The ``#sha256=<hex>`` fragment, else the ``<key>.sha256`` sidecar, else ``None``."""
    from botocore.exceptions import ClientError

    if fragment:
        value = fragment.removeprefix("sha256=").lower()
        if not fragment.startswith("sha256=") or not _SHA256.fullmatch(value):
            raise WeightsError(f"{uri}: fragment must be #sha256=<64 hex digits>, got #{fragment}")
        return value
    try:
        body = client.get_object(Bucket=bucket, Key=f"{key}.sha256")["Body"].read()
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
            return None
        raise WeightsError(f"s3://{bucket}/{key}.sha256: {error}") from error
    words = body.decode("utf-8", "replace").split()  # "<hex>" or sha256sum's "<hex>  <name>"
    if not words or not _SHA256.fullmatch(words[0].lower()):
        raise WeightsError(f"s3://{bucket}/{key}.sha256: expected a sha256 hex digest")
    return words[0].lower()
