"""`lushpo predict CLIP... --model DIR`: class probabilities of new clips.

Reads `LUSHPO_WEIGHTS` (the backbone weights; their sha256 must equal the model card's) and
`LUSHPO_CACHE_DIR`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hpo import project
from pipeline.manifest import LABELS

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify clips with an exported model (cov / pne / reg probabilities)",
        description=(
            "Decode each clip with the model card's frame count and sampling, extract features "
            "with the card's backbone and weights, and print the head's class probabilities."
        ),
    )
    parser.add_argument("clips", nargs="+", type=Path, metavar="CLIP", help="clip files")
    parser.add_argument(
        "--model", required=True, type=Path, metavar="DIR", help="a `lushpo export` folder"
    )
    parser.add_argument(
        "--weights",
        metavar="W",
        help="backbone weights: imagenet | PATH | s3:// URI | none (default: $LUSHPO_WEIGHTS, "
        "else the weights the model card's features were extracted with, else imagenet)",
    )
    parser.add_argument("--cache-dir", metavar="DIR", help="default: $LUSHPO_CACHE_DIR")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=_run)


def _card_weights(model_dir: Path) -> str:
    """The weights source recorded with the card's features (their sha256 is checked anyway)."""
    try:
        card = json.loads((model_dir / "model_card.json").read_text())
    except (OSError, ValueError):
        return "imagenet"  # predict() then names the missing or broken card
    return str((card.get("feature_set_meta") or {}).get("weights_source") or "imagenet")


def _run(args: argparse.Namespace) -> int:
    from hpo.results import WeightsMismatchError, predict  # TensorFlow, when run
    from pipeline.backbones import UnknownBackboneError, WeightsError
    from pipeline.frames import BadClipError

    weights = project.flag_or_env(args.weights, project.WEIGHTS_ENV) or _card_weights(args.model)
    try:
        results = predict(
            args.clips,
            args.model,
            weights,
            cache_dir=project.flag_or_env(args.cache_dir, project.CACHE_ENV),
        )
    except (
        WeightsMismatchError,
        WeightsError,
        UnknownBackboneError,
        BadClipError,
        FileNotFoundError,
        ValueError,
    ) as exc:
        print(f"lushpo predict: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=1))
        return 0
    width = max(len("clip"), *(len(r.clip) for r in results))
    print(f"{'clip'.ljust(width)}  " + "  ".join(f"{c:>6}" for c in LABELS) + "  predicted")
    for r in results:
        probs = "  ".join(f"{r.probabilities[c]:6.3f}" for c in LABELS)
        print(f"{r.clip.ljust(width)}  {probs}  {r.label}")
    return 0
