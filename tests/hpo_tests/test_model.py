"""hpo.train: the paper's head, its parameter count, and .h5 files plain Keras can load."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hpo.train import PAPER_BEST, build_model

TINY = {
    "lstm_units": 8,
    "lstm_dropout": 0.1,
    "recurrent_dropout": 0.0,
    "dense_layers": 2,
    "dense_units_1": 6,
    "dense_dropout_1": 0.2,
    "dense_units_2": 5,
    "dense_dropout_2": 0.0,
    "learning_rate": 1e-3,
}


def test_paper_best_has_the_published_parameter_count():
    # model_params.txt / xception-lstm.ipynb: LSTM 512 → 1024 → 1024 → 3 on 20 × 2048 features.
    model = build_model(20, 2048, PAPER_BEST)
    assert model.count_params() == 6_822_915
    lstm = model.get_layer("lstm")
    assert (lstm.units, lstm.dropout, lstm.recurrent_dropout) == (512, 0.4, 0.0)
    assert [model.get_layer(f"dense_{i}").units for i in (1, 2)] == [1024, 1024]
    assert model.output_shape == (None, 3)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_dense_layers_picks_blocks_and_ignores_the_rest(layers):
    params = {**TINY, "dense_layers": layers, "dense_units_3": 4, "dense_dropout_3": 0.5}
    model = build_model(3, 7, params)
    dense = [layer.name for layer in model.layers if layer.name.startswith("dense_")]
    assert dense == [f"dense_{i}" for i in range(1, layers + 1)]
    widths = {1: 6, 2: 5, 3: 4}
    assert [model.get_layer(n).units for n in dense] == [widths[i] for i in range(1, layers + 1)]
    assert model.get_layer(f"dropout_{layers}").rate == params[f"dense_dropout_{layers}"]


def test_compiled_with_adam_learning_rate_and_softmax_output():
    model = build_model(4, 3, {**TINY, "learning_rate": 3e-4})
    assert type(model.optimizer).__name__ == "Adam"
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(3e-4)
    proba = model.predict(np.zeros((2, 4, 3), np.float32), verbose=0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    sparse = model.fit(np.zeros((2, 4, 3), np.float32), np.array([0, 2]), verbose=0)
    onehot = build_model(4, 3, TINY, sparse_labels=False)
    dense = onehot.fit(np.zeros((2, 4, 3), np.float32), np.eye(3)[[0, 2]], verbose=0)
    assert np.isfinite(sparse.history["loss"][0]) and np.isfinite(dense.history["loss"][0])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"dense_layers": 4}, "'dense_layers' must be an int in 1..3"),
        ({"dense_layers": 3}, r"lack \['dense_units_3', 'dense_dropout_3'\]"),
        ({"lstm_dropout": 1.0}, "'lstm_dropout' must be in"),
        ({"dense_units_2": 0}, "'dense_units_2' must be a positive int"),
        ({"learning_rate": 0.0}, "'learning_rate' must be > 0"),
        ({"head": "cnn"}, r"'head' must be one of \['lstm', 'gru', 'pooled'\]"),
    ],
)
def test_bad_params_name_the_key(change, match):
    with pytest.raises(ValueError, match=match):
        build_model(3, 4, {**TINY, **change})


@pytest.mark.parametrize("head", ["lstm", "gru", "pooled"])
def test_h5_loads_with_plain_tf_keras_in_a_fresh_process(tmp_path, head):
    model = build_model(4, 3, {**TINY, "head": head})
    x = np.random.default_rng(0).normal(size=(5, 4, 3)).astype(np.float32)
    model.fit(x, np.array([0, 1, 2, 0, 1]), verbose=0)
    path = tmp_path / "fold-0.h5"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", model.predict(x, verbose=0))
    script = textwrap.dedent(
        f"""
        import numpy as np, tensorflow as tf
        model = tf.keras.models.load_model({str(path)!r})
        got = model.predict(np.load({str(tmp_path / "x.npy")!r}), verbose=0)
        np.testing.assert_allclose(got, np.load({str(tmp_path / "expected.npy")!r}), atol=1e-6)
        print("LOADED", model.count_params())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"LOADED {model.count_params()}" in done.stdout


def test_pooled_head_ignores_frame_order_and_the_recurrent_keys():
    params = {k: v for k, v in TINY.items() if k not in ("lstm_units", "lstm_dropout")}
    model = build_model(5, 3, {**params, "head": "pooled"})
    assert model.name == "cnn_pooled_head" and "mean_over_frames" in [x.name for x in model.layers]
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(model(x[:, ::-1]).numpy(), model(x).numpy(), atol=1e-6)
    gru = build_model(5, 3, {**TINY, "head": "gru"}).get_layer("gru")
    assert (gru.units, gru.dropout) == (8, 0.1)
