"""ONNX backend: the exported engine graph against the eager reference, through ONNX Runtime."""

import onnx
import pytest
import torch
from conftest import assert_step_close, step_inputs, steerable
from test_parity import SHAPES

from tiny_models import TINY_MODELS

from steerc.backends.onnx import create_session, op_counts
from steerc.reference import reference_step

CASES = [(arch, 23) for arch in TINY_MODELS] + [("llama", 20), ("gpt2", 20)]


@pytest.fixture(scope="module")
def engines(exported_onnx):
    return {(arch, opset): exported_onnx(arch, opset) for arch, opset in CASES}


@pytest.mark.parametrize("arch, opset", CASES)
def test_io_contract(engines, arch, opset):
    _, sp = steerable(arch)
    proto = onnx.load(str(engines[arch, opset]), load_external_data=False)
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert [(v.name, dims(v)) for v in proto.graph.input] == [(s.name, list(s.dims)) for s in sp.inputs]
    assert [(v.name, dims(v)) for v in proto.graph.output] == [(s.name, list(s.dims)) for s in sp.outputs]
    assert proto.graph.input[-1].name == "steer_bias"
    assert (engines[arch, opset].parent / "model.onnx.data").is_file()


def test_attention_op_kinds_by_opset(engines):
    assert op_counts(engines["llama", 23]).get("Attention") == 2  # fused, carries the merged mask
    assert "Softmax" not in op_counts(engines["llama", 23])
    assert op_counts(engines["gpt2", 23]).get("Softmax") == 2  # eager pattern stays explicit
    assert "Attention" not in op_counts(engines["llama", 20]) and op_counts(engines["llama", 20]).get("Softmax") == 2


@pytest.mark.parametrize("steered", [False, True])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("arch, opset", CASES)
def test_onnx_runtime_parity(engines, arch, opset, shape, steered):
    model, sp = steerable(arch)
    g = sp.geometry
    B, P, S, pad = SHAPES[shape]
    ids, pos, mask, kv = step_inputs(g, B, P, S, pad)
    bias = torch.zeros(B, g.num_layers, g.num_heads, P + S)
    if steered:
        bias = 2.0 * torch.randn(bias.shape, generator=torch.Generator().manual_seed(5))
    session = create_session(engines[arch, opset])
    feed = dict(zip([s.name for s in sp.inputs], [t.numpy() for t in (ids, pos, mask, *kv, bias)]))
    logits, *present = session.run(None, feed)
    ref = reference_step(model, ids, pos, mask, kv, bias if steered else None)
    assert_step_close((logits, present), ref, mask, S)


def test_unknown_device_is_refused(engines):
    with pytest.raises(ValueError, match="device must be"):
        create_session(engines["llama", 23], device="tpu")
