"""TensorFlow's process-wide set-up for a trial: threads, determinism, mixed precision."""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

from hpo.train._settings import TrialSettings

__all__ = [
    "configure_tensorflow",
]

log = logging.getLogger(__name__)


def configure_tensorflow(settings: TrialSettings) -> None:
    """Threads, GPU memory, op determinism and precision; call before any TensorFlow op in the
    process.

    Op determinism makes a trial's numbers repeat exactly; it costs nothing measurable on CPU,
    and on a GPU it rules out the fastest non-deterministic kernels, so ``deterministic=None``
    turns it on only when the process sees no GPU (docs/performance.md). Mixed precision
    computes in bfloat16, which needs no loss scaling (unlike float16), keeping float32 weights.

    Without ``gpu_memory_limit_mb`` each GPU grows its memory on demand; with it, the first GPU
    becomes one logical device capped at that many MiB, so trials sharing a GPU (fractional
    ``num_gpus``) fit side by side. Settings the runtime no longer accepts (it was initialised
    earlier in this worker) are logged, not fatal; a setting equal to the one in force is not
    set again, so the later trials of a reused worker (the same study's settings) log nothing.
    """
    threading = tf.config.threading
    for wanted, get, set_ in (
        (settings.intra_op_threads, threading.get_intra_op_parallelism_threads,
         threading.set_intra_op_parallelism_threads),
        (settings.inter_op_threads, threading.get_inter_op_parallelism_threads,
         threading.set_inter_op_parallelism_threads),
    ):  # fmt: skip
        if wanted is None or get() == wanted:
            continue
        try:
            set_(wanted)
        except RuntimeError as exc:
            log.warning("TensorFlow threads already fixed in this process; keeping them: %s", exc)
    for i, gpu in enumerate(tf.config.list_physical_devices("GPU")):
        try:
            if settings.gpu_memory_limit_mb is not None and i == 0:
                config = tf.config.LogicalDeviceConfiguration(
                    memory_limit=settings.gpu_memory_limit_mb
                )
                if tf.config.get_logical_device_configuration(gpu) != [config]:
                    tf.config.set_logical_device_configuration(gpu, [config])
            elif not tf.config.experimental.get_memory_growth(gpu):
                tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError) as exc:
            log.warning("GPU %s already initialised; memory settings unchanged: %s", gpu, exc)
    deterministic = settings.deterministic
    if deterministic is None:
        deterministic = not tf.config.list_physical_devices("GPU")
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(
        "mixed_bfloat16" if settings.mixed_precision else "float32"
    )
