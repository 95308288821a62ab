"""Quiet by default: TensorFlow, absl, Keras and Ray noise off unless ``lushpo -v``.

TensorFlow's C++ side prints its start-up lines (oneDNN, CUDA stubs, "All log messages before
absl::InitializeLog()") straight to file descriptor 2 before any Python logging exists, so no
variable silences them all; `quiet` sets the variables that do work, then imports TensorFlow and
initialises its devices once with descriptor 2 pointed at /dev/null. Python-side warnings
(Keras, tf.function retracing, absl) go through `logging` and are raised to ERROR. Errors are
always shown: the real descriptor 2 is restored before any lushpo code runs, and an import
failure is re-raised after it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

__all__ = ["quiet", "quieted"]

_quieted = False

_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow C++ INFO/WARNING/ERROR after start-up
    "GRPC_VERBOSITY": "ERROR",
    "RAY_DEDUP_LOGS": "1",
    "OPENCV_FFMPEG_LOGLEVEL": "-8",  # FFmpeg's own lines about a broken clip (BadClipError says it)
    "OPENCV_LOG_LEVEL": "ERROR",
    # Read by `import ray` (ray.init's default logging_level): the token-auth notice and "Started a
    # local Ray instance". Ray's own later errors are still shown.
    "RAY_LOGGER_LEVEL": "error",
    # Ray Tune's console output engine prints a configuration box and a TensorBoard hint even at
    # verbose=0; the legacy one prints nothing at verbose=0. lushpo shows its own progress view.
    "RAY_AIR_NEW_OUTPUT": "0",
}


@contextlib.contextmanager
def _stderr_to_devnull() -> Iterator[None]:
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet(*, tensorflow: bool) -> None:
    """Silence library noise for this process and the processes it starts; with `tensorflow`,
    also import it now so its native start-up lines go nowhere."""
    global _quieted
    _quieted = True
    for key, value in _ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("tensorflow", "keras", "absl", "h5py", "ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if not tensorflow:
        return
    error: Exception | None = None
    with _stderr_to_devnull():
        try:
            import tensorflow as tf

            tf.constant(0.0) + 1.0  # device initialisation prints its own lines
        except Exception as exc:  # re-raised below, with the real stderr back
            error = exc
    if error is not None:
        raise error
    tf.get_logger().setLevel(logging.ERROR)
    tf.autograph.set_verbosity(0)
    with contextlib.suppress(ImportError):
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)


def quieted() -> bool:
    """Whether `quiet` ran in this process: libraries configured later (Optuna sets its own
    logger to INFO when imported) ask before they speak."""
    return _quieted
