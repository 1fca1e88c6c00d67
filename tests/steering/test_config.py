"""SteerConfig: validation with clear messages, JSON round trip (and the flat form of earlier
configs), store keys unchanged, per-method options, steered (layer, head) pairs."""

import json
from dataclasses import replace

import pytest

from steerc.steering.config import DEFAULT_PREFIXES, SteerConfig, band_layers
from steerc.steering.methods import get_method
from steerc.steering.methods.llmsteer import LLMSteerOptions
from steerc.steering.methods.pasta import PastaOptions
from steerc.steering.methods.query import QueryOptions
from steerc.steering.options import MethodOptions

# SteerConfig(method="query").to_dict() before methods had their own options: every method's fields, flat.
EARLIER_QUERY = json.loads("""{"method": "query", "alpha": 0.1, "top_k": 0.2, "steer_at": "decode", "layers": "auto", "heads": null, "profile": [],
 "prefixes": ["Answer the question based on the given passages. Only give me the answer and do not output any other words. The following are given passages.",
 "Respond to the query using only the provided texts. Only return the answer. DO NOT return any extra words. Below are the provided texts."], "window": 0,
 "highlights": [], "evidence": 1, "unit": "auto", "selector": [], "rank_by": "attention", "target_share": 0.0, "min_share": 0.0, "blocks": 4, "block_size": 64,
 "initial": 16, "local": 64, "block_mask": "hard", "retrieve_for": "question", "keep": 1.0, "keep_sinks": 4, "keep_recent": 0, "keep_unit": "token"}""")


def test_json_round_trip_restores_tuples():
    config = SteerConfig(method="pasta", alpha=0.05, steer_at="both", layers=[3, 1], heads=[0], highlights=[(2, 9)], window=32)
    back = SteerConfig.from_json(config.to_json())
    assert back == config and back.layers == (1, 3) and back.options.highlights == ((2, 9),)
    counted = SteerConfig(method="llmsteer", top_k=16)
    assert SteerConfig.from_json(counted.to_json()) == counted and counted.options == LLMSteerOptions(top_k=16)


def test_options_are_the_methods_own():
    config = SteerConfig(method="query", alpha=0.2, options=QueryOptions(evidence=2, unit="sentence"))
    assert config == SteerConfig(method="query", alpha=0.2, evidence=2, unit="sentence")  # the flat spelling
    assert config.to_dict()["evidence"] == 2 and "top_k" not in config.to_dict() and "highlights" not in config.to_dict()
    assert SteerConfig.from_dict({"method": "query", "options": {"evidence": 2, "unit": "sentence"}, "alpha": 0.2}) == config  # nested form
    assert type(SteerConfig(method="none").options) is MethodOptions and SteerConfig(method="pasta", highlights=[(0, 3)]).options == PastaOptions(((0, 3),))
    assert replace(config, evidence=3).options.evidence == 3 and replace(config, alpha=0.5).options == config.options


def test_earlier_flat_configs_still_load():
    """Configs written when one flat config held all 26 fields: other methods' fields at their defaults are accepted."""
    config = SteerConfig.from_dict(EARLIER_QUERY)
    assert config == SteerConfig(method="query", rank_by="attention")  # written before fused ranking: its explicit rank_by holds
    assert SteerConfig.from_dict({**EARLIER_QUERY, "method": "llmsteer", "top_k": 16}).options == LLMSteerOptions(top_k=16)
    assert SteerConfig.from_dict({**EARLIER_QUERY, "method": "pasta", "highlights": [[1, 4]]}).options == PastaOptions(((1, 4),))
    assert SteerConfig.from_dict({**EARLIER_QUERY, "method": "none"}).method == "none"


@pytest.mark.parametrize("data, message", [
    ({"method": "query", "top_k": 0.3}, "top_k is an option of method 'llmsteer', not of 'query'"),
    ({"method": "none", "evidence": 2}, "evidence is an option of method 'query', not of 'none'"),
    ({"method": "llmsteer", "selector": [[0, 1]]}, "selector is an option of method 'query' and 'qllm', not of 'llmsteer'"),
    ({"method": "query", "top_k": -1}, "top_k must be a ratio"),  # the owner's limits first
    ({"method": "query", "magic": 1}, "unknown field 'magic'"),
    ({"method": "query", "options": {"blocks": 2}}, "blocks is an option of method 'qllm'"),
])
def test_other_methods_options_are_refused_unless_default(data, message):
    with pytest.raises(ValueError, match=message):
        SteerConfig.from_dict(data)


def test_switching_methods_keeps_the_shared_settings():
    config = SteerConfig(method="query", alpha=0.3, layers="all", evidence=2, selector=((1, 0),))
    qllm = config.with_method("qllm")
    assert qllm.method == "qllm" and qllm.alpha == 0.3 and qllm.layers == "all" and qllm.options.selector == ((1, 0),)  # the options both have carry over
    assert config.with_method("llmsteer", presets={"top_k": 0.4, "evidence": 5}).options == LLMSteerOptions(top_k=0.4)
    assert config.merged({"evidence": 3}).options.evidence == 3 and config.merged({"method": "none"}).method == "none"
    with pytest.raises(ValueError, match="top_k is an option of method 'llmsteer'"):
        config.merged({"top_k": 0.4})  # an override the method lacks
    with pytest.raises(ValueError, match="evidence is an option of method 'query', not of 'none'"):
        replace(config, method="none")  # dataclasses.replace keeps the options; with_method converts them
    assert replace(SteerConfig(method="query"), method="none") == SteerConfig(method="none")


def test_store_keys_are_those_of_the_flat_config():
    """key_fields: the same dict as when one flat config held every option (stored entries keep their keys)."""
    key = lambda c: json.loads(json.dumps(get_method(c.method).key_fields(c)))  # noqa: E731
    base = {"heads": None, "profile": [], "steer_at": "decode", "window": 0}
    assert key(SteerConfig(method="llmsteer", top_k=16, alpha=0.3, layers=[1])) == {**base, "alpha": 0.3, "highlights": [], "layers": [1], "method": "llmsteer",
                                                                                    "top_k": 16}
    assert key(SteerConfig(method="pasta", highlights=((2, 9),))) == {**base, "alpha": 0.1, "highlights": [[2, 9]], "layers": "auto", "method": "pasta",
                                                                       "top_k": 0.2}
    assert key(SteerConfig(method="autopasta")) == {**base, "alpha": 0.1, "highlights": [], "layers": "auto", "method": "autopasta", "top_k": 0.2}
    assert key(SteerConfig(method="query", unit="sentence")) == {"calibration": "N/A", "method": "query-index", "unit": "sentence"}
    assert key(SteerConfig(method="qllm", block_size=32)) == {"block_size": 32, "method": "qllm-index", "representatives": 4}


@pytest.mark.parametrize("field, value, message", [
    ("method", "magic", "method must be one of"),
    ("alpha", 0.0, "alpha must be a number in"),
    ("alpha", 1.5, "alpha must be a number in"),
    ("top_k", 0, "top_k must be a ratio"),  # llmsteer's option, checked against its limits in any config
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
    owner = {"top_k": "llmsteer", "highlights": "pasta"}.get(field)
    if owner:
        with pytest.raises(ValueError, match=message):
            SteerConfig(method=owner, **{field: value})


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


def test_selector_pairs_on_the_command_line():
    from steerc.steering.options import parse_pairs

    assert parse_pairs("18:7, 7:7,18:7") == ((7, 7), (18, 7))  # sorted and deduplicated, as the JSON form
    for bad in ("18", "a:b", "1:2:3", ""):
        with pytest.raises(ValueError, match="LAYER:HEAD pairs"):
            parse_pairs(bad)
