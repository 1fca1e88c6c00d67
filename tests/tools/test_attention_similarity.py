"""tools/attention_similarity.py: the layer-pair similarity of attention maps and the group scores
(a tiny random-weight Llama and hand-made distributions; no real model or dataset)."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import COMMON

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("attention_similarity", ROOT / "tools" / "attention_similarity.py")
attsim = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(attsim)


def llama(layers=4, attn="eager", seed=0, scale=8.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**(COMMON | {"num_hidden_layers": layers}), num_attention_heads=4, num_key_value_heads=2,
                                         attn_implementation=attn)).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # random init attends almost uniformly: sharpen it so layers differ
            layer.self_attn.q_proj.weight.mul_(scale)
            layer.self_attn.k_proj.weight.mul_(scale)
    return model


def ids(n=24, seed=1):
    return torch.randint(0, COMMON["vocab_size"], (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("metric", attsim.METRICS)
def test_matrix_properties_on_a_random_model(metric):
    model = llama()
    attn = attsim.attention_maps(model, ids())
    assert attn.shape == (4, 4, 24, 24)
    torch.testing.assert_close(attn.sum(-1), torch.ones(4, 4, 24))
    sim = attsim.layer_similarity(attn, metric).numpy()
    assert sim.shape == (4, 4)
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-5)
    np.testing.assert_allclose(sim, sim.T, atol=1e-6)
    assert (sim >= -1e-6).all() and (sim <= 1 + 1e-6).all()
    off = sim[~np.eye(4, dtype=bool)]
    assert off.max() < 0.9, "sharpened random layers must not look identical"


def test_identical_layers_have_similarity_one():
    model = llama(layers=3)
    layers = model.model.layers
    with torch.no_grad():
        # Layer 0 writes nothing to the residual stream, so layer 1 sees layer 0's input;
        # with layer 0's attention weights, it computes the same probabilities.
        layers[0].self_attn.o_proj.weight.zero_()
        layers[0].mlp.down_proj.weight.zero_()
        layers[1].self_attn.load_state_dict(layers[0].self_attn.state_dict())
        layers[1].input_layernorm.load_state_dict(layers[0].input_layernorm.state_dict())
    stats = {}
    mats = attsim.similarity_matrices(model, [ids(20, 1), ids(32, 2)], attsim.METRICS, stats=stats)
    assert len(stats["sink_mass"]) == 3 and all(0 <= x <= 1 for x in stats["sink_mass"])
    assert stats["sink_mass"][0] == pytest.approx(stats["sink_mass"][1], abs=1e-6)
    for metric, sim in mats.items():
        assert sim[0, 1] == pytest.approx(1.0, abs=1e-5), metric
        assert sim[0, 2] < 0.9 and sim[1, 2] < 0.9, metric
        assert sim[0, 2] == pytest.approx(sim[1, 2], abs=1e-5), metric  # layers 0 and 1 are interchangeable


def test_known_values():
    # 2 keys, 1 head. Row 0 is [1, 0] in both layers; row 1 is [1, 0] vs [0.5, 0.5].
    attn = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]], [[[1.0, 0.0], [0.5, 0.5]]]])
    cos = attsim.layer_similarity(attn, "cosine")
    assert cos[0, 1].item() == pytest.approx((1 + 1 / math.sqrt(2)) / 2, abs=1e-6)

    def h(*p):
        return -sum(x * math.log2(x) for x in p if x)

    jsd = h(0.75, 0.25) - (h(1.0) + h(0.5, 0.5)) / 2
    assert attsim.layer_similarity(attn, "jsd")[0, 1].item() == pytest.approx((1 + 1 - jsd) / 2, abs=1e-6)
    # Disjoint supports: cosine 0, JSD 1 bit.
    disjoint = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]], [[[1.0, 0.0], [0.0, 1.0]]]])
    assert attsim.layer_similarity(disjoint, "cosine")[0, 1].item() == pytest.approx(0.5, abs=1e-6)
    assert attsim.layer_similarity(disjoint, "jsd")[0, 1].item() == pytest.approx(0.5, abs=1e-6)
    # Head-averaged: two heads whose maps swap between layers average to the same map.
    swap = torch.stack([torch.stack([disjoint[0, 0], disjoint[1, 0]]), torch.stack([disjoint[1, 0], disjoint[0, 0]])])
    assert attsim.layer_similarity(swap, "cosine")[0, 1].item() < 0.6
    assert attsim.layer_similarity(swap, "cosine-headavg")[0, 1].item() == pytest.approx(1.0, abs=1e-6)
    # The sink variant ignores key 0: rows that differ only in their sink mass are identical.
    sink = torch.tensor([[[[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.4, 0.4]]], [[[1.0, 0, 0], [0.9, 0.1, 0], [0.8, 0.1, 0.1]]]])
    assert attsim.layer_similarity(sink, "cosine")[0, 1].item() < 0.95
    assert attsim.layer_similarity(sink, "cosine-nosink")[0, 1].item() == pytest.approx(1.0, abs=1e-6)


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="metric"):
        attsim.layer_similarity(torch.ones(2, 1, 3, 3) / 3, "l2")
    with pytest.raises(ValueError, match="layers, heads"):
        attsim.layer_similarity(torch.ones(2, 3, 3), "cosine")
    with pytest.raises(ValueError, match="eager"):
        attsim.attention_maps(llama(layers=2, attn="sdpa"), ids())


def test_groups():
    L = 8
    sim = np.full((L, L), 0.2)
    sim[4:, 4:] = 0.9
    np.fill_diagonal(sim, 1.0)
    assert attsim.group_score(sim, 4, 7) == pytest.approx(0.9)
    assert attsim.group_score(sim, 3, 5) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        attsim.group_score(sim, 5, 5)
    ranked = attsim.ranked_groups(sim, 4)
    assert len(ranked) == L - 3 and ranked[0]["layers"] == [4, 7]
    assert [r["mean_sim_to_first"] for r in ranked] == sorted((r["mean_sim_to_first"] for r in ranked), reverse=True)
    assert attsim.paper_late_group(32) == (27, 30)
    s, e = attsim.paper_late_group(18)
    assert s < e == 16
    sug = attsim.suggestions(sim, [2, 4], top=3)
    assert sug["by_size"]["4"][0]["layers"] == [4, 7]
    assert len(sug["two_disjoint"]["4"]) == 2
    assert sug["last_10_before_final"] is None


def test_plot_and_json(tmp_path):
    rng = np.random.default_rng(0)
    results = []
    for name, L, types in (("a", 6, None), ("b", 4, ["sliding_attention", "full_attention"] * 2)):
        m = rng.uniform(0.2, 0.9, (L, L))
        m = (m + m.T) / 2
        np.fill_diagonal(m, 1.0)
        results.append({"name": name, "heads": 2, "kv_heads": 1, "layer_types": types, "matrices": {"cosine": m.tolist()}})
    attsim.plot(results, "cosine", 3, tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_size > 1000
    text = attsim.dump_json({"m": results[0]["matrices"]["cosine"], "note": "sim[a, j] [1, 2]"})
    back = json.loads(text)
    assert back["note"] == "sim[a, j] [1, 2]" and np.allclose(back["m"], results[0]["matrices"]["cosine"])
    assert len(text.splitlines()) == 6 + 5  # one line per matrix row
