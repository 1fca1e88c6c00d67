"""The ONNX pass contract: one visible order, each pass run only when the settings ask for it."""

import pytest

from steerc.passes.onnx import (ONNX_PASSES, OnnxGraph, OnnxPassReport, derive_analysis, derive_selector, fuse_group_query_attention, keep_last_logits, kv_in_place, make_tensorrt_ready, onnx_passes, quantize_embedding, quantize_kv_cache,
                              quantize_weights)
from steerc.settings import CompileSettings


def _names(**settings) -> list[str]:
    return [p.__name__ for p in onnx_passes(CompileSettings(**settings))]


def test_the_order_is_one_list():
    assert ONNX_PASSES == (quantize_weights, quantize_embedding, keep_last_logits, derive_analysis, derive_selector, kv_in_place, fuse_group_query_attention, quantize_kv_cache,
                           make_tensorrt_ready)
    assert all(callable(p.wanted) for p in ONNX_PASSES)


def test_only_the_passes_the_settings_ask_for():
    assert _names() == ["keep_last_logits", "derive_analysis", "derive_selector"]
    assert _names(importance=False) == ["keep_last_logits"]
    assert _names(importance=False, logits="all") == []
    assert _names(attn_implementation="eager") == ["keep_last_logits"]
    assert _names(share_attention=((0, 1),)) == ["keep_last_logits"]
    assert _names(weights="int4") == ["quantize_weights", "quantize_embedding", "keep_last_logits", "derive_analysis", "derive_selector"]
    # the head stays fp32 under rtn: so does the table
    assert _names(weights="int4", weight_method="rtn") == ["quantize_weights", "keep_last_logits", "derive_analysis", "derive_selector"]
    assert _names(weights="int8") == ["quantize_weights", "keep_last_logits", "derive_analysis", "derive_selector"]  # int8 is rtn by default
    assert _names(weights="int4", kv="in-place") == ["quantize_weights", "quantize_embedding", "keep_last_logits", "derive_analysis", "derive_selector", "kv_in_place"]
    assert _names(kv="in-place") == ["keep_last_logits", "derive_analysis", "derive_selector", "kv_in_place"]
    assert _names(weights="int4", kv="in-place", attention_op="group-query")[-2:] == ["kv_in_place", "fuse_group_query_attention"]
    assert _names(kv="in-place", attention_op="group-query", kv_cache="int8")[-3:] == ["kv_in_place", "fuse_group_query_attention", "quantize_kv_cache"]
    assert _names(target="tensorrt", dtype="fp16", importance=False) == ["keep_last_logits", "make_tensorrt_ready"]
    # TensorRT refuses Attention's probabilities output: the analysis program is exported instead, no selector graph.
    assert _names(target="tensorrt", dtype="fp16") == ["keep_last_logits", "make_tensorrt_ready"]


def test_contract_types_validate():
    with pytest.raises(ValueError, match="num_layers"):
        OnnxGraph("model.onnx", num_layers=-1)
    with pytest.raises(ValueError, match="name"):
        OnnxPassReport("")
    assert OnnxGraph("model.onnx").path.name == "model.onnx"


def test_derive_analysis_raises_when_it_cannot_derive(tmp_path):
    from steerc.passes.onnx.derive_analysis import NotDerivableError

    with pytest.raises(ValueError, match="analysis_path"):
        derive_analysis(OnnxGraph(tmp_path / "model.onnx"), CompileSettings())
    assert issubclass(NotDerivableError, Exception)
