"""hpo.train: the default space, overrides and their errors, the paper's point, OptunaSearch."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpo.train import (
    PAPER_BEST,
    InvalidSpaceError,
    build_model,
    is_paper_best,
    paper_best,
    search_space,
)

KEYS = {
    "head",
    "lstm_units",
    "lstm_dropout",
    "recurrent_dropout",
    "dense_layers",
    "dense_units_1",
    "dense_units_2",
    "dense_units_3",
    "dense_dropout_1",
    "dense_dropout_2",
    "dense_dropout_3",
    "learning_rate",
    "batch_size",
    "class_weight",
    "standardize",
}


def test_default_space_is_the_issue_superset():
    space = search_space()
    assert set(space) == KEYS
    units = (32, 64, 128, 256, 512, 1024)
    assert space["lstm_units"] == CategoricalDistribution(units)
    assert all(space[f"dense_units_{i}"] == CategoricalDistribution(units) for i in (1, 2, 3))
    assert space["dense_layers"] == IntDistribution(1, 3)
    for key in ("lstm_dropout", "dense_dropout_1", "dense_dropout_3"):
        assert space[key] == FloatDistribution(0.0, 0.6)
    # cuDNN's LSTM kernel needs recurrent_dropout 0; a study may still search it.
    assert space["recurrent_dropout"] == CategoricalDistribution((0.0,))
    searched = search_space({"recurrent_dropout": {"low": 0.0, "high": 0.6}})
    assert searched["recurrent_dropout"] == FloatDistribution(0.0, 0.6)
    assert space["learning_rate"] == FloatDistribution(1e-5, 1e-2, log=True)
    assert space["batch_size"] == CategoricalDistribution((8, 16, 32))
    # The paper's recipe (raw features, no class weights) unless a study searches them.
    assert space["class_weight"] == space["standardize"] == CategoricalDistribution((False,))
    assert space["head"] == CategoricalDistribution(("lstm",))


def test_head_takes_a_name_or_a_list_of_names():
    space = search_space({"head": ["lstm", "pooled", "gru"]})
    assert space["head"] == CategoricalDistribution(("lstm", "pooled", "gru"))
    assert paper_best(space)["head"] == "lstm"
    assert search_space({"head": "pooled"})["head"] == CategoricalDistribution(("pooled",))
    with pytest.raises(InvalidSpaceError, match=r"\[\"head='lstm'\"\]"):
        paper_best(search_space({"head": "pooled"}))
    for bad in ("cnn", [], ["lstm", "lstm"], 1, {"low": "lstm"}):
        with pytest.raises(InvalidSpaceError, match=r"'space.head' must be one of"):
            search_space({"head": bad})


def test_recipe_flags_take_true_false_or_both():
    space = search_space({"class_weight": True, "standardize": [False, True]})
    assert space["class_weight"] == CategoricalDistribution((True,))
    assert space["standardize"] == CategoricalDistribution((False, True))
    with pytest.raises(InvalidSpaceError, match=r"\['class_weight=False'\]"):
        paper_best(space)
    both = search_space({"class_weight": [True, False], "standardize": [True, False]})
    assert paper_best(both)["class_weight"] is paper_best(both)["standardize"] is False
    for bad in (1, "yes", [], [True, True], {"low": False, "high": True}):
        with pytest.raises(InvalidSpaceError, match=r"'space.standardize' must be true, false"):
            search_space({"standardize": bad})


def test_paper_best_is_a_full_point_of_the_default_space():
    assert set(PAPER_BEST) == KEYS
    assert paper_best(search_space()) == PAPER_BEST
    assert PAPER_BEST["lstm_units"] == 512 and PAPER_BEST["lstm_dropout"] == 0.4
    assert (PAPER_BEST["dense_layers"], PAPER_BEST["dense_units_1"]) == (2, 1024)
    assert PAPER_BEST["dense_units_2"] == 1024


def test_backbone_and_frames_dimensions():
    space = search_space(backbones=["xception", "vgg19"], frames=[5, 20])
    assert space["backbone"] == CategoricalDistribution(("xception", "vgg19"))
    assert space["frames"] == CategoricalDistribution((5, 20))
    point = paper_best(space)
    assert (point["backbone"], point["frames"]) == ("xception", 20)
    with pytest.raises(InvalidSpaceError, match=r"outside the search space: \['frames=20'\]"):
        paper_best(search_space(frames=[5, 10]))


@pytest.mark.parametrize(
    ("overrides", "key", "expected"),
    [
        ({"lstm_units": [64, 128]}, "lstm_units", CategoricalDistribution((64, 128))),
        ({"lstm_units": 256}, "lstm_units", CategoricalDistribution((256,))),
        ({"dense_layers": {"low": 2, "high": 3}}, "dense_layers", IntDistribution(2, 3)),
        (
            {"learning_rate": {"low": 1e-4, "high": 1e-3, "log": True}},
            "learning_rate",
            FloatDistribution(1e-4, 1e-3, log=True),
        ),
        ({"lstm_dropout": {"low": 0, "high": 0.5}}, "lstm_dropout", FloatDistribution(0.0, 0.5)),
        ({"batch_size": [16]}, "batch_size", CategoricalDistribution((16,))),
        (
            {"lstm_units": {"low": 32, "high": 96, "step": 32}},
            "lstm_units",
            IntDistribution(32, 96, step=32),
        ),
    ],
)
def test_overrides_replace_one_dimension(overrides, key, expected):
    space = search_space(overrides)
    assert space[key] == expected
    untouched = search_space()
    assert all(space[k] == untouched[k] for k in KEYS - {key})


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"lstm_size": [32]}, r"'space.lstm_size' is not a dimension; known: \['batch_size'"),
        ({"lstm_units": [0, 32]}, r"'space.lstm_units' must be a list of ints >= 1.*got 0"),
        ({"lstm_units": [32.5]}, r"'space.lstm_units' must be .*got 32.5"),
        ({"lstm_units": []}, "got an empty list"),
        ({"lstm_units": [32, 32]}, "repeats a choice"),
        ({"lstm_dropout": {"low": 0.0, "high": 1.0}}, r"lstm_dropout' high must be .*\[0, 1\)"),
        ({"lstm_dropout": {"low": 0.5, "high": 0.1}}, "needs low <= high"),
        ({"lstm_dropout": {"low": 0.1}}, r"must be .*mapping \{low, high\[, log\]\}"),
        ({"lstm_dropout": {"low": 0.0, "high": 0.5, "step": 0.1}}, "must be"),
        ({"learning_rate": {"low": 0.0, "high": 0.1}}, "'space.learning_rate' low must be .*> 0"),
        ({"dense_layers": [1, 4]}, r"'space.dense_layers' must be .*in \[1, 3\]; got 4"),
        ({"batch_size": "big"}, "'space.batch_size' must be .*got 'big'"),
        ({"batch_size": True}, "'space.batch_size' must be"),
        ({"dense_layers": {"low": 1, "high": 3, "log": "yes"}}, "log must be true/false"),
    ],
)
def test_bad_overrides_name_the_key_and_the_allowed_form(overrides, match):
    with pytest.raises(InvalidSpaceError, match=match) as info:
        search_space(overrides)
    assert isinstance(info.value, ValueError)


def test_bad_backbones_and_frames():
    with pytest.raises(InvalidSpaceError, match="'backbone' must be a non-empty list of strs"):
        search_space(backbones=[])
    with pytest.raises(InvalidSpaceError, match="'frames' must be a non-empty list of ints"):
        search_space(frames=["20"])


def test_paper_point_outside_a_narrowed_space_is_named():
    with pytest.raises(InvalidSpaceError, match=r"\['lstm_units=512', 'batch_size=32'\]"):
        paper_best(search_space({"lstm_units": [32, 64], "batch_size": [8]}))


def test_optuna_search_starts_from_the_paper_point_then_samples_buildable_points():
    from ray.tune.search.optuna import OptunaSearch

    space = search_space()
    searcher = OptunaSearch(
        space=space,
        metric="accuracy",
        mode="max",
        points_to_evaluate=[paper_best(space)],
        sampler=optuna.samplers.TPESampler(seed=3),
    )
    first = searcher.suggest("trial-0")
    assert first == PAPER_BEST
    for i in range(1, 6):
        point = searcher.suggest(f"trial-{i}")
        assert set(point) == KEYS
        assert point["lstm_units"] in (32, 64, 128, 256, 512, 1024)
        assert 1e-5 <= point["learning_rate"] <= 1e-2
        model = build_model(2, 3, point)  # every sampled point is a valid head
        assert model.output_shape == (None, 3)
        searcher.on_trial_complete(f"trial-{i}", {"accuracy": 0.5})


def test_is_paper_best_recognises_the_paper_point_only():
    assert is_paper_best(PAPER_BEST)
    assert is_paper_best({**PAPER_BEST, "backbone": "xception", "frames": 20})
    assert not is_paper_best({**PAPER_BEST, "frames": 5})
    assert not is_paper_best({**PAPER_BEST, "standardize": True})
    assert not is_paper_best({k: v for k, v in PAPER_BEST.items() if k != "class_weight"})
    # a trial of the conditional space holds the active keys only (no third dense block)
    drawn = {k: v for k, v in PAPER_BEST.items() if not k.endswith("_3")}
    assert is_paper_best(drawn) and not is_paper_best({**drawn, "dense_layers": 3})
