"""make_tensorrt_ready on the tiny architectures (fp32 and fp16): the checker passes afterwards,
ONNX Runtime gives the same results, and a second run changes nothing."""

import shutil

import numpy as np
import onnx
import pytest
from onnx_steps import CALLS, assert_outputs_equal, run, step_feed

from tiny_models import TINY_MODELS

from steerc.backends.onnx import create_session
from steerc.backends.tensorrt import check_tensorrt
from steerc.passes.onnx.make_tensorrt_ready import FIXES, tensorrt_ready_file

DTYPES = ("fp32", "fp16")
# Gemma2/Gemma3 in fp16: the exported graph itself does not load in ONNX Runtime (CPU): "Type parameter
# (T) of Optype (Mul) bound to different types (tensor(float16) and tensor(float))" (the fused
# RMSNormalization takes fp16 X with an fp32 scale, from Gemma's `1 + weight.float()`). Not caused by the
# rewrite; their ORT comparison runs in fp32 only, the checker and the rewrite still run in fp16.
ORT_FP16_BROKEN = {"gemma2", "gemma3"}


def fresh_copy(arch: str, dtype: str, exported_onnx, dest):
    """A private copy of the exported folder (the original stays unmodified for other tests)."""
    src = exported_onnx(arch, dtype=dtype)
    shutil.copytree(src.parent, dest)
    return dest / src.name


def _external_weights(path) -> dict:
    proto = onnx.load(str(path), load_external_data=False)
    return {t.name: tuple((e.key, e.value) for e in t.external_data) for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", list(TINY_MODELS))
def test_rewrite_passes_checker_and_keeps_results(arch, dtype, exported_onnx, tmp_path):
    path = fresh_copy(arch, dtype, exported_onnx, tmp_path / "engine")
    compare = not (dtype == "fp16" and arch in ORT_FP16_BROKEN)
    feeds = {call: step_feed(arch, dtype, call) for call in CALLS} if compare else {}
    before = {call: run(path, feed) for call, feed in feeds.items()}
    if compare:
        assert np.isfinite(before["decode"][0]).all(), "the reference run itself must be meaningful"

    weights = _external_weights(path)
    assert weights, "the tiny export keeps its weights in model.onnx.data"
    report = tensorrt_ready_file(path)
    assert set(report) == set(FIXES)
    assert check_tensorrt(path) == [], [str(v) for v in check_tensorrt(path)]
    onnx.checker.check_model(str(path))
    proto = onnx.load(str(path), load_external_data=False)
    for node in proto.graph.node:
        if node.op_type == "Attention":
            assert "softcap" not in {a.name for a in node.attribute}
            assert len(node.output) == 1 and len(node.input) <= 4
    assert _external_weights(path) == weights  # the weights stay where they were, untouched

    for call, feed in feeds.items():
        assert_outputs_equal(run(path, feed), before[call], dtype)

    # idempotent: a second run finds nothing to change and leaves the file as it is
    data = path.read_bytes()
    assert tensorrt_ready_file(path) == dict.fromkeys(FIXES, 0)
    assert path.read_bytes() == data


def test_fp16_attention_mask_matches_q(exported_onnx):
    """The fp16 exporter already casts the merged mask to fp16 (no mask cast is needed)."""
    path = exported_onnx("llama", dtype="fp16")
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    types = {v.name: v.type.tensor_type.elem_type for v in [*proto.graph.value_info, *proto.graph.input]}
    attention = [n for n in proto.graph.node if n.op_type == "Attention"]
    assert attention
    for node in attention:
        assert types[node.input[0]] == onnx.TensorProto.FLOAT16
        assert types[node.input[3]] == onnx.TensorProto.FLOAT16


@pytest.mark.xfail(strict=True, reason="exporter: Gemma fp16 graphs mix fp16/fp32 in one op; ONNX Runtime refuses them")
@pytest.mark.parametrize("arch", sorted(ORT_FP16_BROKEN))
def test_gemma_fp16_loads_in_onnx_runtime(arch, exported_onnx):
    """Passes (and so fails as strict xfail) once the export is fixed: then drop ORT_FP16_BROKEN."""
    create_session(exported_onnx(arch, dtype="fp16"))
