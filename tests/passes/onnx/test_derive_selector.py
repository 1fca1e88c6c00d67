"""The selector graph derived from the step graph: only the covered layers' attention per key
(``selector_scores``), the same values as the analysis graph's ``attn_importance`` on those
layers (prefill with left padding, decode over a past, architectures other than Llama), the
truncation (no later layers, logits or KV), and the errors where it cannot be derived."""

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx_steps import run, step_feed, steerable_in

from steerc.passes.onnx import NotDerivableError, OnnxGraph, derive_selector
from steerc.passes.onnx.derive_analysis import derive_analysis_graph
from steerc.passes.onnx.derive_selector import SELECTOR_OUTPUT, derive_selector_graph
from steerc.settings import CompileSettings


def _copy(exported, tmp_path):
    folder = tmp_path / "g"
    shutil.copytree(exported.parent, folder)
    return folder / exported.name


def _proto(path):
    return onnx.load(str(path), load_external_data=False)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("layers", [1, 2])
def test_same_scores_as_the_analysis_graph(exported_onnx, tmp_path, arch, layers):
    step = _copy(exported_onnx(arch), tmp_path)
    sp = steerable_in(arch, "fp32")
    L = sp.geometry.num_layers
    assert derive_analysis_graph(step, step.parent / "analysis.onnx", L, sp.analysis_outputs) is None
    assert derive_selector_graph(step, step.parent / "selector.onnx", L, layers) is None
    for call in ("prefill", "decode"):  # batch 2, a left-padded row; past 0 and 6 (not the traced shapes); unsteered, as selection runs
        feed = step_feed(arch, "fp32", call)
        feed["steer_bias"] = np.zeros_like(feed["steer_bias"])
        (got,) = run(step.parent / "selector.onnx", feed)
        want = run(step.parent / "analysis.onnx", feed)[[o.name for o in _proto(step.parent / "analysis.onnx").graph.output].index("attn_importance")]
        assert got.shape == (*want.shape[:1], layers, *want.shape[2:])
        np.testing.assert_allclose(got, want[:, :layers], rtol=1e-5, atol=1e-5)
        assert got[0, :, :, 0].max() == 0  # the left-padded key of row 0 gets no attention


def test_the_graph_is_cut_after_the_last_covered_attention(exported_onnx, tmp_path):
    step = _copy(exported_onnx("llama"), tmp_path)
    out = step.parent / "selector.onnx"
    assert derive_selector_graph(step, out, 2, 1) is None
    proto, full = _proto(out), _proto(step)
    assert [o.name for o in proto.graph.output] == [SELECTOR_OUTPUT]
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch_size", 1, 4, "total_sequence_length"]
    attention = [n for n in proto.graph.node if n.op_type == "Attention"]
    assert len(attention) == 1 and [a.i for a in attention[0].attribute if a.name == "qk_matmul_output_mode"] == [3]
    inputs = {i.name for i in proto.graph.input}
    assert {"input_ids", "position_ids", "attention_mask", "past_key_values.0.key"} <= inputs
    assert "past_key_values.1.key" not in inputs  # the later layer's keys are not read
    assert "steer_bias" not in inputs  # unsteered: the masks are one Where(allowed, 0, min) [B, 1, S, P+S]
    (mask,) = {n.input[3] for n in attention}
    assert [n.op_type for n in proto.graph.node if mask in n.output] == ["Where"]
    # Layer 0's q, k, v projections only: its output projection and MLP, layer 1 and the lm_head are gone.
    matmuls = lambda p: sum(n.op_type in ("MatMul", "Gemm") for n in p.graph.node)  # noqa: E731
    assert matmuls(full) == 2 * 7 + 1 and matmuls(proto) == 3
    assert len(proto.graph.initializer) < len(full.graph.initializer)
    assert not {o for n in proto.graph.node for o in n.output} & {"logits", "present.1.key", "present.1.value"}
    assert not (step.parent / "selector.onnx.data").exists()  # the weights stay in the step graph's file


def test_the_pass_records_its_entry_and_refuses_what_it_cannot_derive(exported_onnx, tmp_path):
    step = _copy(exported_onnx("llama"), tmp_path)
    report = derive_selector(OnnxGraph(step, 2, selector_layers=2, selector_path=step.parent / "selector.onnx"), CompileSettings())
    assert report.entry == {"graph": "selector.onnx", "from": step.name, "layers": 2, "score_layers": [0, 1]}
    report = derive_selector(OnnxGraph(step, 2, selector_layers=2, selector_path=step.parent / "selector.onnx", selector_score_layers=(1,)), CompileSettings())
    assert report.entry["score_layers"] == [1]
    with pytest.raises(ValueError, match="selector_score_layers must be layers below selector_layers"):
        OnnxGraph(step, 2, selector_layers=1, selector_score_layers=(1,))
    with pytest.raises(ValueError, match="must lie in the covered layers"):
        derive_selector_graph(step, step.parent / "x.onnx", 2, 1, (1,))
    with pytest.raises(ValueError, match="selector graph's path"):
        derive_selector(OnnxGraph(step, 2), CompileSettings())
    with pytest.raises(ValueError, match="selector_layers"):
        OnnxGraph(step, 2, selector_layers=3)
    with pytest.raises(ValueError, match="covers 1 to 2 layers"):
        derive_selector_graph(step, step.parent / "x.onnx", 2, 3)
    with pytest.raises(ValueError, match="beside the step graph"):
        derive_selector_graph(step, tmp_path / "elsewhere.onnx", 2, 1)


def test_only_the_score_layers_return_their_attention(exported_onnx, tmp_path):
    """Layers covered for their hidden states but holding no selector head run their attention
    without probabilities; the output holds the score layers' rows of attn_importance."""
    arch = "llama"
    step = _copy(exported_onnx(arch), tmp_path)
    sp = steerable_in(arch, "fp32")
    L = sp.geometry.num_layers
    assert derive_analysis_graph(step, step.parent / "analysis.onnx", L, sp.analysis_outputs) is None
    assert derive_selector_graph(step, step.parent / "selector.onnx", L, 2, (1,)) is None
    proto = _proto(step.parent / "selector.onnx")
    modes = [[a.i for a in n.attribute if a.name == "qk_matmul_output_mode"] for n in proto.graph.node if n.op_type == "Attention"]
    assert sorted(m or [0] for m in modes) == [[0], [3]]  # layer 0 returns no probabilities (mode 0), layer 1 does
    assert [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim][1] == 1
    feed = step_feed(arch, "fp32", "decode")
    feed["steer_bias"] = np.zeros_like(feed["steer_bias"])
    (got,) = run(step.parent / "selector.onnx", feed)
    want = run(step.parent / "analysis.onnx", feed)[[o.name for o in _proto(step.parent / "analysis.onnx").graph.output].index("attn_importance")]
    np.testing.assert_allclose(got, want[:, [1]], rtol=1e-5, atol=1e-5)


def test_eager_attention_is_not_derivable(exported_onnx, tmp_path):
    step = _copy(exported_onnx("llama-eager"), tmp_path)
    why = derive_selector_graph(step, step.parent / "selector.onnx", 2, 1)
    assert why is not None and "no fused Attention node" in why and not (step.parent / "selector.onnx").exists()
    with pytest.raises(NotDerivableError, match="no fused Attention node"):
        derive_selector(OnnxGraph(step, 2, selector_layers=1, selector_path=step.parent / "selector.onnx"), CompileSettings())


def test_a_compiled_engine_records_the_selector_graph(tiny_engine):
    manifest = json.loads((tiny_engine / "steerc.json").read_text())
    entry = manifest["selector"]
    # The tiny Llama has no shipped profile: the fallback selector (the middle half of 2 layers) is layer 0.
    assert entry["model"] == "selector.onnx" and entry["data"] == "model.onnx.data" and entry["layers"] == 1 and entry["score_layers"] == [0]
    assert entry["heads_from"].startswith("fallback")
    assert manifest["verify"]["selector"]["selector_scores_abs_err"] <= 1e-6
    assert manifest["compile_seconds"]["export_graphs"]["selector"] is not None
    assert "selector.onnx" in manifest["files"]
