"""Classify new clips end to end with an exported model folder.

clip → `read_frames` (the card's N and sampling, the backbone's input size) → the backbone's own
`preprocess_input` → the card's backbone with weights whose sha256 must equal the card's (other
weights give other features, and the head would silently score garbage) → ``model.h5`` loaded with
Keras safe mode (no arbitrary code from the file) → probabilities for cov / pne / reg.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpo.results._card import CARD, read_card
from hpo.train import predict_proba
from pipeline.backbones import get_backbone, load_backbone, resolve_weights
from pipeline.extract import extract
from pipeline.files import sha256_file
from pipeline.frames import count_frames
from pipeline.manifest import LABELS, Clip, Manifest

__all__ = ["ClipPrediction", "WeightsMismatchError", "clip_features", "load_head", "predict"]


class WeightsMismatchError(ValueError):
    """The backbone weights given differ from those the model card's features were made with."""

    def __init__(self, card_path: Path, expected: str, got: str, source: str) -> None:
        self.expected, self.got = expected, got
        super().__init__(
            f"{card_path}: the model was trained on features from weights sha256 {expected}, but "
            f"the weights given ({source}) have sha256 {got}; pass the same weights file "
            "(--weights / LUSHPO_WEIGHTS)"
        )


@dataclass(frozen=True)
class ClipPrediction:
    clip: str
    probabilities: dict[str, float]  # {cov, pne, reg}: sums to 1
    label: str  # argmax

    def as_dict(self) -> dict[str, Any]:
        return {"clip": self.clip, "probabilities": self.probabilities, "label": self.label}


def clip_features(
    clips: Sequence[Path | str], backbone: Any, card: dict, resolved: Any
) -> np.ndarray:
    """Features ``[clips, N, D]`` by `pipeline.extract` itself, so a clip gets the same features
    here as in the store (same decoding, sampling, resize, preprocessing and batching)."""

    # New clips have no label; extract carries one per clip but never uses it.
    entries = tuple(
        Clip(id=f"{i}:{c}", label=LABELS[0], path=Path(c), frames=count_frames(c))
        for i, c in enumerate(clips)
    )
    fs = extract(
        Manifest(clips=entries),
        card["backbone"],
        resolved,
        int(card["frames"]),
        card["sampling"],
        progress=False,
        model=backbone,
    )
    order = {clip_id: row for row, clip_id in enumerate(fs.clip_ids)}
    return np.stack([fs.features[order[e.id]] for e in entries]).astype(np.float32)


def load_head(directory: Path | str) -> Any:
    """``model.h5`` of an exported folder, loaded with Keras safe mode."""
    import keras

    return keras.saving.load_model(Path(directory) / "model.h5", safe_mode=True, compile=False)


def predict(
    clips: Sequence[Path | str],
    model_dir: Path | str,
    weights: str | os.PathLike[str],
    *,
    cache_dir: Path | str | None = None,
) -> list[ClipPrediction]:
    """Class probabilities of each clip under the exported model in `model_dir`.

    Args:
        clips: clip files (any format OpenCV reads).
        model_dir: a finished `lushpo export` folder.
        weights: backbone weights: ``imagenet``, ``none``, a path or an s3:// URI.
        cache_dir: lushpo's cache root for downloaded weights.

    Raises:
        WeightsMismatchError: the weights' sha256 differs from the card's (checked before any
            model is built).
        FileNotFoundError: a clip or the model card is missing (checked before any model loads).
        pipeline.frames.BadClipError: a clip cannot be decoded or is too short.
        ValueError: ``model.h5``'s sha256 differs from the card's (checked first, before the
            backbone and the weights are resolved).
    """

    missing = [str(c) for c in clips if not Path(c).is_file()]
    if missing:
        raise FileNotFoundError(f"clip file(s) not found: {', '.join(missing)}")
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    # the folder's own integrity first: it needs no backbone, weights or network
    recorded = (card.get("final_model") or {}).get("sha256")
    if recorded is not None and sha256_file(model_dir / "model.h5") != recorded:
        raise ValueError(
            f"{model_dir / 'model.h5'}: its sha256 differs from the one {model_dir / CARD} "
            "records: the file was replaced since the export; export the run again"
        )
    get_backbone(card["backbone"])  # an unknown backbone fails before any file is read
    resolved = resolve_weights(card["backbone"], weights, cache_dir=cache_dir)
    if resolved.sha256 != card["weights_sha256"]:
        raise WeightsMismatchError(
            model_dir / "model_card.json", card["weights_sha256"], resolved.sha256, str(weights)
        )
    backbone, _ = load_backbone(card["backbone"], resolved)
    head = load_head(model_dir)
    feats = clip_features(clips, backbone, card, resolved)
    expected = (int(card["frames"]), int(card["feature_dim"]))
    if feats.shape[1:] != expected:
        raise ValueError(
            f"{card['backbone']} gives features {feats.shape[1:]}, the card expects {expected}"
        )
    probs = predict_proba(head, feats)
    return [
        ClipPrediction(
            clip=str(c),
            probabilities={name: float(p[i]) for i, name in enumerate(LABELS)},
            label=LABELS[int(np.argmax(p))],
        )
        for c, p in zip(clips, probs, strict=True)
    ]
