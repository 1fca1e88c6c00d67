"""SteerConfig: validation with clear messages, JSON round trip, steered (layer, head) pairs."""


import pytest

from steerc.steering.config import DEFAULT_PREFIXES, SteerConfig, band_layers
from steerc.steering.methods import get_method


def test_json_round_trip_restores_tuples():
    config = SteerConfig(method="pasta", alpha=0.05, top_k=16, steer_at="both", layers=[3, 1], heads=[0], highlights=[(2, 9)], window=32)
    back = SteerConfig.from_json(config.to_json())
    assert back == config and back.layers == (1, 3) and back.highlights == ((2, 9),)


@pytest.mark.parametrize("field, value, message", [
    ("method", "magic", "method must be one of"),
    ("alpha", 0.0, "alpha must be a number in"),
    ("alpha", 1.5, "alpha must be a number in"),
    ("top_k", 0, "top_k must be a ratio"),
    ("top_k", 2.5, "whole number"),
    ("steer_at", "never", "steer_at must be one of"),
    ("layers", [], "non-empty list"),
    ("layers", [-1], "non-negative"),
    ("profile", [[1]], "pairs"),
    ("prefixes", ("only one",), "two non-empty strings"),
    ("window", -3, "window must be"),
    ("highlights", [(5, 2)], "character ranges"),
])
def test_invalid_values_raise_value_error(field, value, message):
    with pytest.raises(ValueError, match=message):
        SteerConfig(**{field: value})


def test_pasta_needs_highlights():
    with pytest.raises(ValueError, match="needs highlights"):
        SteerConfig(method="pasta")


def test_steered_pairs():
    assert SteerConfig(layers=None).steered_pairs(2, 2) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # layers "auto" (the default): each method's own dev-chosen band.
    assert SteerConfig(method="llmsteer").steered_pairs(2, 2) == [(1, 0), (1, 1)]  # LLMSteer: the last third of the layers
    assert SteerConfig(method="query").steered_pairs(2, 2) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # query: every layer
    assert SteerConfig().method == "query" and SteerConfig().layers == "auto" and SteerConfig(method="autopasta").band == "last-third"
    assert SteerConfig(layers=[1], heads=[0, 1]).steered_pairs(2, 3) == [(1, 0), (1, 1)]
    assert SteerConfig(profile=[[1, 2], [0, 0]], layers=[1]).steered_pairs(2, 3) == [(0, 0), (1, 2)]
    with pytest.raises(ValueError, match="outside the engine"):
        SteerConfig(layers=[5]).steered_pairs(2, 3)


def test_cache_fields_ignore_steering_for_none():
    key = lambda c: get_method(c.method).key_fields(c)  # noqa: E731
    assert key(SteerConfig(method="none", alpha=0.5)) == key(SteerConfig(method="none"))
    assert key(SteerConfig(method="llmsteer", alpha=0.5)) != key(SteerConfig(method="llmsteer"))
    assert "prefixes" not in key(SteerConfig(method="llmsteer")) and SteerConfig().prefixes == DEFAULT_PREFIXES


@pytest.mark.parametrize("band, depth, layers", [
    ("last-third", 30, tuple(range(20, 30))),
    ("first-third", 30, tuple(range(0, 10))),
    ("middle-third", 30, tuple(range(10, 20))),
    ("last-third", 18, tuple(range(12, 18))),
    ("last-third", 2, (1,)),
    ("first-third", 2, (0,)),  # never empty
    ("all", 3, (0, 1, 2)),
])
def test_layer_bands(band, depth, layers):
    assert band_layers(band, depth) == layers
    pairs = SteerConfig(layers=band).steered_pairs(depth, 1)
    assert [layer for layer, _ in pairs] == list(layers)


def test_layer_band_names_are_checked_and_round_trip():
    with pytest.raises(ValueError, match="one of"):
        SteerConfig(layers="late")
    config = SteerConfig(layers="middle-third")
    assert SteerConfig.from_json(config.to_json()) == config
