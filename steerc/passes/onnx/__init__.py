"""ONNX passes: rewrites of the exported ONNX graphs, after ``torch.onnx.export``.

Each pass is ``pass(graph: OnnxGraph, settings) -> OnnxPassReport`` with ``pass.wanted(settings)``
saying whether a compile runs it (:mod:`~steerc.passes.onnx.contract`). ``ONNX_PASSES`` is the
order the ONNX backend applies them in (:mod:`steerc.backends.onnx.graphs`):

1. ``quantize_weights``: ``--weights int8|int4``: MatMul weights to MatMulNBits (the step
   graph, and an analysis graph exported on its own; :mod:`~steerc.passes.onnx.nbits_minmax` is
   its block min/max method, not a pass);
2. ``quantize_embedding``: with minmax weights, the token table to an 8-bit
   GatherBlockQuantized (sharing a tied head's bytes);
3. ``keep_last_logits``: ``--logits last`` (the default): the LM head on the final position only
   (before the analysis and selector graphs are derived: the analysis graph's logits too);
4. ``derive_analysis``: the analysis graph written from the (quantized) step graph, where every
   layer has its own fused Attention (sdpa, no shared attention); raises
   :class:`~steerc.passes.onnx.derive_analysis.NotDerivableError` otherwise, and the
   compile exports the analysis program instead;
5. ``derive_selector``: the selector graph written from the (quantized) step graph: the layers
   up to the last one holding a selector head, cut after its attention, emitting only their
   attention per key (what the ``query`` method's selection reads); raises ``NotDerivableError``
   where the analysis graph cannot be derived either, and the engine has no selector graph;
6. ``kv_in_place``: ``--kv in-place``: the step graph writes into preallocated KV buffers
   (after the analysis and selector graphs are derived: they keep the concat layout);
7. ``fuse_group_query_attention``: ``--attention-op group-query``: each layer's attention of the
   in-place step graph as ONNX Runtime's contrib ``GroupQueryAttention`` (after ``kv_in_place``);
8. ``quantize_kv_cache``: ``--kv-cache int8``: the GroupQueryAttention buffers in int8, per-channel
   scales calibrated on the graph (``kv_scales.safetensors`` beside it);
9. ``make_tensorrt_ready``: ``--target tensorrt``: the step graph rewritten to TensorRT's ONNX
   parser rules (a no-op report when it already meets them).
"""

from steerc.passes.onnx.contract import OnnxGraph, OnnxPassReport, onnx_pass
from steerc.passes.onnx.derive_analysis import NotDerivableError, derive_analysis
from steerc.passes.onnx.derive_selector import derive_selector
from steerc.passes.onnx.fuse_group_query_attention import fuse_group_query_attention
from steerc.passes.onnx.keep_last_logits import keep_last_logits
from steerc.passes.onnx.kv_in_place import kv_in_place
from steerc.passes.onnx.make_tensorrt_ready import make_tensorrt_ready
from steerc.passes.onnx.quantize_embedding import quantize_embedding
from steerc.passes.onnx.quantize_kv_cache import quantize_kv_cache
from steerc.passes.onnx.quantize_weights import quantize_weights

ONNX_PASSES = (quantize_weights, quantize_embedding, keep_last_logits, derive_analysis, derive_selector, kv_in_place, fuse_group_query_attention, quantize_kv_cache,
               make_tensorrt_ready)


def onnx_passes(settings) -> tuple:
    """The ONNX passes a compile with ``settings`` runs, in :data:`ONNX_PASSES` order."""
    return tuple(p for p in ONNX_PASSES if p.wanted(settings))


__all__ = ["ONNX_PASSES", "NotDerivableError", "OnnxGraph", "OnnxPassReport", "derive_analysis", "derive_selector", "fuse_group_query_attention", "keep_last_logits", "kv_in_place", "make_tensorrt_ready",
           "onnx_pass", "onnx_passes", "quantize_embedding", "quantize_kv_cache", "quantize_weights"]
