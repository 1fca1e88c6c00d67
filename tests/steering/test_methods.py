"""Every steering method through the one interface, on the tiny text engine: where each bias
lands, which store entries methods share and where their keys differ, and the query method
against its reference (the evidence functions on the question's attention from a full prefill)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from steerc.runtime import Engine
from steerc.runtime.generate import generate, prefill
from steerc.runtime.steer_bias import SteerBias
from steerc.steering.answer import Steerer
from steerc.steering.config import SteerConfig
from steerc.steering.evidence import Units, choose_units, evidence_bias, fused_scores, hedge, hedged_bias, token_scores, token_strength, unit_scores
from steerc.steering.keys import plain_key
from steerc.steering.methods import METHODS, SteeringMethod, get_method
from steerc.steering.methods import query as query_module
from steerc.steering.methods.query import backs_off, lexical_scores, question_attention
from steerc.steering.registry import method_names
from steerc.steering.selection import importance_prefill
from steerc.stores import MemoryStore

CONTEXT = Path(__file__).parents[2].joinpath("examples", "super_bowl_50.txt").read_text()[:700]
QUESTION = "Which team won Super Bowl 50?"
SELECTOR = ((1, 0), (1, 3))


@pytest.fixture(scope="module")
def engine(tiny_text_engine):
    return Engine.load(tiny_text_engine, threads=1)


def _steerer(engine, store=None, **fields) -> Steerer:
    return Steerer(engine, SteerConfig(**fields), store if store is not None else MemoryStore(1 << 30))


def test_methods_are_objects_behind_one_interface():
    assert tuple(METHODS) == method_names() == ("none", "query", "qllm", "llmsteer", "pasta", "autopasta")  # one registry: the config has no list of its own
    assert all(isinstance(m, SteeringMethod) and m.name == name for name, m in METHODS.items())
    with pytest.raises(ValueError, match="unknown steering method 'bogus': choose from none, query"):
        get_method("bogus")
    with pytest.raises(ValueError, match="method must be one of"):
        SteerConfig(method="bogus")
    with pytest.raises(ValueError, match="evidence .* must be a whole number >= 1"):
        SteerConfig(method="query", evidence=0)
    with pytest.raises(ValueError, match="steer_at must be 'decode'"):
        SteerConfig(method="query", steer_at="both")


@pytest.mark.parametrize("method, fields", [("none", {}), ("llmsteer", {"top_k": 0.3}), ("pasta", {"highlights": ((0, 60),)}),
                                            ("query", {"selector": SELECTOR, "hedge": "off", "rank_by": "attention"})])
def test_bias_lands_on_the_documented_keys(engine, method, fields):
    s = _steerer(engine, method=method, layers=(1,), heads=(0, 2), alpha=0.25, **fields)
    answer = s.answer(CONTEXT, QUESTION, max_new_tokens=2)
    prepared, plan = s.last_context[0], s.last_plan
    Nh, N = len(prepared.head_ids), len(prepared.context_ids)
    if method == "none":
        assert plan.steering is None and answer.selected_tokens == N
        return
    bias = plan.steering.bias  # [L, H, Nh + N]
    assert bias.shape == (engine.geometry.num_layers, engine.geometry.num_heads, Nh + N)
    steered = np.zeros(bias.shape[:2], bool)
    steered[1, [0, 2]] = True
    assert not bias[~steered].any() and not bias[..., :Nh].any()  # other heads and the instruction head: untouched
    keep = plan.selected[1]  # [N] the emphasised context tokens
    np.testing.assert_allclose(bias[1, 0, Nh:], np.where(keep, 0.0, np.log(0.25)), rtol=1e-6)
    np.testing.assert_array_equal(bias[1, 0], bias[1, 2])
    assert 0 < keep.sum() < N
    if method == "pasta":
        offsets = s.layout.context_ids(CONTEXT)[1]
        assert all(keep[i] == (o[0] < 60) for i, o in enumerate(offsets) if o[1] > o[0])


def test_methods_share_one_plain_kv_and_keys_differ_where_they_must(engine):
    store = MemoryStore(1 << 30)
    for method, fields in [("none", {}), ("query", {"selector": SELECTOR}), ("pasta", {"highlights": ((0, 60),)})]:
        _steerer(engine, store, method=method, **fields).answer(CONTEXT, QUESTION, max_new_tokens=1)
    s = _steerer(engine, store, method="query")
    ids, _ = s.layout.context_ids(CONTEXT)
    head = s.layout.head_ids(SteerConfig().prefixes[0])
    entries = {k: store.get(k) for k in list(store._entries)}  # noqa: SLF001 (the test looks inside)
    with_kv = [k for k, e in entries.items() if any(n.startswith("kv.") for n in e.tensors)]
    assert len(with_kv) == 1 and entries[with_kv[0]].meta["kind"] == "kv"  # none, query and pasta (steer_at decode): one KV, stored once
    assert entries[plain_key(s.engine, head, ids)].meta["kv_key"] == with_kv[0]
    assert sum(e.meta.get("kv_key") == with_kv[0] for e in entries.values()) == 2  # the plain entry and pasta's name it
    query_entries = [e for e in entries.values() if e.meta.get("kind") == "evidence-index"]
    assert len(query_entries) == 1  # query stores its index only
    key = lambda **f: get_method(f.get("method", "query")).key_fields(SteerConfig(**f))  # noqa: E731
    assert key(method="query", alpha=0.5, selector=SELECTOR, evidence=3) == key(method="query")  # applied per query, never stored
    assert key(method="query", unit="sentence") != key(method="query") != key(method="none")
    assert key(method="llmsteer", profile=((1, 0),)) != key(method="llmsteer")  # a profile changes a stored bias's key
    assert key(method="llmsteer", steer_at="both") != key(method="llmsteer")


def test_question_attention_equals_the_last_rows_of_a_full_prefill(engine):
    s = _steerer(engine, method="query", selector=SELECTOR)
    prepared, _ = s.prepare(CONTEXT)
    query_ids = s.layout.query_ids(s.config.prefixes[0], QUESTION)
    got = question_attention(engine, prepared.kv, query_ids)  # [L, H, K], mean per row
    full = np.concatenate([prepared.head_ids, prepared.context_ids, query_ids])
    reference, _ = importance_prefill(engine, full, window=len(query_ids))  # summed over the last rows
    np.testing.assert_allclose(got, reference / len(query_ids), atol=2e-6)


COVERED = ((0, 0), (0, 3))  # layer 0: within the tiny engine's selector graph (its fallback selector's layers)


def test_question_attention_on_the_selector_graph_equals_the_analysis_graph(engine):
    assert engine.selector_layers == 1 and engine.selector_score_layers == (0,)
    s = _steerer(engine, method="query", selector=COVERED)
    prepared, _ = s.prepare(CONTEXT)
    query_ids = s.layout.query_ids(s.config.prefixes[0], QUESTION)
    full = question_attention(engine, prepared.kv, query_ids)  # the analysis graph, every layer
    got = question_attention(engine, prepared.kv, query_ids, selector=COVERED)  # the selector graph
    assert got.shape == full.shape and np.isnan(got[1]).all()  # the layer it does not cover
    np.testing.assert_allclose(got[0], full[0], rtol=1e-5, atol=1e-5)
    beyond = question_attention(engine, prepared.kv, query_ids, selector=SELECTOR)  # reaches layer 1: the analysis graph
    np.testing.assert_array_equal(beyond, full)


def test_query_plan_reads_the_selector_graph_and_picks_the_same(engine, monkeypatch):
    config = SteerConfig(method="query", selector=COVERED, layers=(0, 1), alpha=0.2, evidence=2)
    s = Steerer(engine, config, MemoryStore(1 << 30))
    s.prepare(CONTEXT)  # the calibration: one analysis call
    calls = []
    monkeypatch.setattr(engine, "analyze", lambda *a, **k: calls.append(a) or Engine.analyze(engine, *a, **k))
    answer = s.answer(CONTEXT, QUESTION, max_new_tokens=3)
    plan = s.last_plan
    assert not calls  # the question ran on the selector graph
    monkeypatch.setattr(type(engine), "selector_score_layers", property(lambda self: ()))  # as an engine without one
    again = s.answer(CONTEXT, QUESTION, max_new_tokens=3)
    assert len(calls) == 1
    assert [e.unit for e in answer.evidence] == [e.unit for e in again.evidence] and answer.text == again.text
    np.testing.assert_array_equal(plan.steering.bias, s.last_plan.steering.bias)


def test_an_engine_without_the_selector_graph_selects_on_the_analysis_graph(tiny_text_engine, tmp_path, caplog):
    import shutil

    from steerc.engine_format import read_manifest, write_manifest

    old = tmp_path / "old"
    shutil.copytree(tiny_text_engine, old)
    (old / "selector.onnx").unlink()
    manifest = read_manifest(old, check_files=False)
    del manifest["selector"], manifest["verify"]["selector"]
    write_manifest(old, {k: v for k, v in manifest.items() if k not in ("files", "checksum")})
    engine = Engine.load(old, threads=1)
    s = _steerer(engine, method="query", selector=COVERED)
    prepared, _ = s.prepare(CONTEXT)
    query_ids = s.layout.query_ids(s.config.prefixes[0], QUESTION)
    with caplog.at_level("INFO", logger="steerc.steering.methods.query"):
        got = question_attention(engine, prepared.kv, query_ids, selector=COVERED)
    assert "has no selector graph" in caplog.text and np.isfinite(got).all()
    np.testing.assert_array_equal(got, question_attention(engine, prepared.kv, query_ids))


@pytest.mark.parametrize("extra", [{}, {"evidence": 2}, {"target_share": 0.6, "alpha": 0.05}])
def test_query_plan_and_answer_match_the_reference(engine, extra):
    config = SteerConfig(method="query", selector=SELECTOR, layers=(0, 1), hedge="off", rank_by="attention", **{"alpha": 0.2, **extra})
    s = Steerer(engine, config, MemoryStore(1 << 30))
    answer = s.answer(CONTEXT, QUESTION, max_new_tokens=6)
    prepared = s.last_context[0]
    Nh, N = len(prepared.head_ids), len(prepared.context_ids)
    query_ids = s.layout.query_ids(config.prefixes[0], QUESTION)
    attention = question_attention(engine, prepared.kv, query_ids)
    units = Units(prepared.meta["unit_kind"], prepared.extras["unit_chars"], prepared.extras["unit_tokens"])
    assert units.kind == "sentence" and len(units) >= 3
    scores = unit_scores(token_scores(attention[..., Nh : Nh + N], prepared.extras["calibration"], SELECTOR), units)
    chosen = choose_units(scores, config.options.evidence)
    assert [e.unit for e in answer.evidence] == chosen and answer.evidence[0].preview.split()[0] in CONTEXT
    keep = units.token_mask(chosen, N)
    pairs = config.steered_pairs(engine.geometry.num_layers, engine.geometry.num_heads)
    if config.options.target_share:
        per_head = s.last_plan.steering.bias[:, :, Nh:][:, :, ~keep][..., 0]  # [L, H]
        assert (per_head <= 0).all() and (per_head >= np.log(0.05) - 1e-6).all()
        log_alpha = per_head
    else:
        log_alpha = np.log(0.2)
    want = evidence_bias(keep, Nh, Nh + N, engine.geometry.num_layers, engine.geometry.num_heads, log_alpha, pairs)
    np.testing.assert_allclose(s.last_plan.steering.bias, want, atol=1e-6)
    # The answer is the question prefilled over the stored KV with that bias, then decoded with it.
    tokens = [int(t[0]) for t in generate(engine, query_ids[None], cache=prepared.kv, steering=SteerBias(want), max_new_tokens=6)]
    assert answer.token_ids == tokens[: len(answer.token_ids)]


def test_query_without_confidence_answers_unsteered(engine):
    store = MemoryStore(1 << 30)
    plain = _steerer(engine, store, method="none").answer(CONTEXT, QUESTION, max_new_tokens=6)
    unsure = _steerer(engine, store, method="query", selector=SELECTOR, min_share=0.99).answer(CONTEXT, QUESTION, max_new_tokens=6)
    assert unsure.evidence == () and unsure.token_ids == plain.token_ids and unsure.cache == "miss"  # the evidence index was new


def test_reused_query_context_needs_no_context_prefill(engine):
    store, stages = MemoryStore(1 << 30), []
    s = _steerer(engine, store, method="query", selector=SELECTOR)
    first = s.answer(CONTEXT, QUESTION, max_new_tokens=2, progress=lambda stage, done, total: stages.append(stage))
    assert first.cache == "miss" and "prefill" in stages
    stages.clear()
    again = s.answer(CONTEXT, "When was the game played?", max_new_tokens=2, progress=lambda stage, done, total: stages.append(stage))
    assert again.cache == "memory" and stages == [] and again.evidence
    # Another alpha, selector or N on the same context reuses the same entries.
    s.config = replace(s.config, alpha=0.5, evidence=2, selector=((0, 1),))
    assert s.answer(CONTEXT, QUESTION, max_new_tokens=2).cache == "memory"


def test_query_refuses_heads_outside_the_engine(engine):
    with pytest.raises(ValueError, match=r"selector head \[5, 0\] is outside the engine \(2 layers x 4 heads\)"):
        _steerer(engine, method="query", selector=((5, 0),)).answer(CONTEXT, QUESTION, max_new_tokens=1)
    with pytest.raises(ValueError, match="outside the engine"):
        _steerer(engine, method="query", layers=(9,)).answer(CONTEXT, QUESTION, max_new_tokens=1)


@pytest.mark.parametrize("extra", [{"hedge": "soft"}, {"hedge": "soft", "sharpness": 3.0}, {"hedge": "margin"}, {"hedge": "entropy"},
                                   {"rank_by": "fused", "hedge": "margin"}])
def test_hedged_query_plan_matches_the_reference(engine, extra):
    config = SteerConfig(method="query", selector=SELECTOR, layers=(0, 1), alpha=0.2, **extra)
    s = Steerer(engine, config, MemoryStore(1 << 30))
    answer = s.answer(CONTEXT, QUESTION, max_new_tokens=4)
    prepared = s.last_context[0]
    Nh, N = len(prepared.head_ids), len(prepared.context_ids)
    query_ids = s.layout.query_ids(config.prefixes[0], QUESTION)
    units = Units(prepared.meta["unit_kind"], prepared.extras["unit_chars"], prepared.extras["unit_tokens"])
    scores = unit_scores(token_scores(question_attention(engine, prepared.kv, query_ids)[..., Nh : Nh + N], prepared.extras["calibration"], SELECTOR), units)
    if config.options.rank_by == "fused":
        scores = fused_scores(scores, lexical_scores(CONTEXT, units, QUESTION))
    hedged = hedge(scores, choose_units(scores, 1), config.options.hedge, config.options.sharpness)
    pairs = config.steered_pairs(engine.geometry.num_layers, engine.geometry.num_heads)
    want = hedged_bias(token_strength(units, hedged, N), Nh, Nh + N, engine.geometry.num_layers, engine.geometry.num_heads, np.log(0.2), pairs)
    dist = answer.distribution
    assert dist.hedge == config.options.hedge and sum(dist.shares) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(dist.strength, hedged.strength, atol=1e-6)
    assert dist.alpha_applied == pytest.approx(0.2 ** hedged.confidence, rel=1e-5)
    if hedged.confidence == 0:
        assert s.last_plan.steering is None
    else:
        np.testing.assert_allclose(s.last_plan.steering.bias, want, atol=1e-6)
        assert 0 < hedged.confidence <= 1 and want.min() >= np.log(0.2) - 1e-6


def test_self_check_rule_by_hand():
    plain, other = np.log([0.7, 0.2, 0.1]), np.log([0.2, 0.7, 0.1])
    assert backs_off(plain, other, 0.6) and not backs_off(plain, other, 0.75)  # disagree; plain sure enough (0.7) or not
    assert not backs_off(plain, plain + 1.0, 1e-9)  # same first token: never


@pytest.mark.parametrize("fires", [False, True])
def test_self_check_reuses_its_prefill_and_answers_plain_when_it_backs_off(engine, monkeypatch, fires):
    store = MemoryStore(1 << 30)
    a_steered = _steerer(engine, store, method="query", selector=SELECTOR, alpha=0.01).answer(CONTEXT, QUESTION, max_new_tokens=4)
    a_plain = _steerer(engine, store, method="none").answer(CONTEXT, QUESTION, max_new_tokens=4)
    seen = []
    monkeypatch.setattr(query_module, "backs_off", lambda plain, steered, sure: seen.append((plain.argmax(), steered.argmax(), sure)) or fires)
    checked = _steerer(engine, store, method="query", selector=SELECTOR, alpha=0.01, self_check=0.5)
    a = checked.answer(CONTEXT, QUESTION, max_new_tokens=4)
    # The rule saw the plain and the steered first tokens (the ones each answer starts with) ...
    assert seen == [(a_plain.token_ids[0], a_steered.token_ids[0], 0.5)]
    # ... and the answer decodes from the chosen prefill: the plain answer when it backs off, else the steered one.
    assert checked.last_plan.prefilled is not None and a.distribution.backed_off == fires
    assert a.token_ids == (a_plain.token_ids if fires else a_steered.token_ids)
    assert (checked.last_plan.steering is None) == fires and (a.distribution.alpha_applied == 1.0) == fires


def test_generate_from_a_prefill_equals_generate(engine):
    s = _steerer(engine, method="none")
    prepared, _ = s.prepare(CONTEXT)
    ids = s.layout.query_ids(s.config.prefixes[0], QUESTION)[None]
    mask = np.ones((1, prepared.kv.length + ids.shape[1]), np.int64)
    bias = SteerBias(np.full((engine.geometry.num_layers, engine.geometry.num_heads, prepared.kv.length), -1.0, np.float32))
    want = [int(t[0]) for t in generate(engine, ids, cache=prepared.kv, steering=bias, max_new_tokens=6)]
    done = prefill(engine, ids, mask, prepared.kv, bias)
    got = [int(t[0]) for t in generate(engine, ids, cache=prepared.kv, steering=bias, max_new_tokens=6, prefilled=done)]
    assert got == want
    with pytest.raises(ValueError, match="prefilled cache holds"):
        next(generate(engine, ids[:, :-1], cache=prepared.kv, max_new_tokens=2, prefilled=done))
