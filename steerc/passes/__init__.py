"""Graph passes over a captured decoder-step graph (``ExportedProgram.graph_module``).

``PASSES`` is the order ``steerc compile`` applies them in. Each pass is
``pass(gm, settings) -> PassReport``; ``pass.settings_type.for_model(geometry,
architecture, attn_implementation)`` builds its settings, or returns None when the pass does
not apply to the model (it is then skipped and the manifest says so). A pass that runs and
finds nothing to rewrite raises :class:`steerc.errors.PassError`.

1. ``insert_steering_bias``: every attention site takes the ``steer_bias`` input.
2. ``use_native_gqa``: fused attention reads grouped K/V instead of per-head copies
   (GQA/MQA models captured with SDPA).
3. ``share_attention``: only when asked (``CompileSettings.share_attention`` groups, passed to
   ``for_model`` as ``groups``): later layers of a group reuse the first layer's attention
   probabilities and lose their Q/K projections and key cache (Shared Attention).

``for_model`` may take extra keyword arguments, given per pass name by the build (:mod:`steerc.build.steerable`).

``ANALYSIS_PASSES`` then turn a copy of that graph into the engine's second, analysis
graph (used only while preparing a context, so decode never pays for it):

4. ``capture_attention_importance``: also output the attention each key receives (a shared
   layer reports the probabilities it uses: its group's first layer's).
5. ``capture_query_vectors``: also output each layer's query vectors (summed over the call's
   rows), which Q-LLM block retrieval scores cached blocks with.

After ``torch.onnx.export``, the ONNX-level passes of :mod:`steerc.passes.onnx` rewrite the
exported graphs, in the order of ``steerc.passes.onnx.ONNX_PASSES`` (quantized weights, the
derived analysis graph, in-place KV, the TensorRT-ready graph).
"""

from steerc.passes.attention_sites import AttentionSite, find_attention_sites
from steerc.passes.capture_attention_importance import IMPORTANCE_OUTPUT, ImportanceSettings, capture_attention_importance
from steerc.passes.capture_query_vectors import QUERY_OUTPUT, QueryVectorSettings, capture_query_vectors
from steerc.passes.insert_steering_bias import SteeringBiasSettings, insert_steering_bias
from steerc.passes.report import PassReport, SiteReport
from steerc.passes.share_attention import ShareAttentionSettings, parse_share_groups, share_attention
from steerc.passes.use_native_gqa import NativeGqaSettings, use_native_gqa

PASSES = (insert_steering_bias, use_native_gqa, share_attention)
ANALYSIS_PASSES = (capture_attention_importance, capture_query_vectors)

__all__ = [
    "ANALYSIS_PASSES",
    "IMPORTANCE_OUTPUT",
    "ImportanceSettings",
    "PASSES",
    "QUERY_OUTPUT",
    "QueryVectorSettings",
    "AttentionSite",
    "NativeGqaSettings",
    "PassReport",
    "ShareAttentionSettings",
    "SiteReport",
    "SteeringBiasSettings",
    "capture_attention_importance",
    "capture_query_vectors",
    "find_attention_sites",
    "insert_steering_bias",
    "parse_share_groups",
    "share_attention",
    "use_native_gqa",
]
