"""Graph passes over a captured decoder-step graph (``ExportedProgram.graph_module``).

``PASSES`` is the order ``steerc compile`` applies them in. Each pass is
``pass(gm, settings) -> PassReport``; ``pass.settings_type.for_model(geometry,
architecture, attn_implementation)`` builds its settings, or returns None when the pass does
not apply to the model (it is then skipped and the manifest says so). A pass that runs and
finds nothing to rewrite raises :class:`steerc.errors.PassError`.

1. ``insert_steering_bias``: every attention site takes the ``steer_bias`` input.
2. ``use_native_gqa``: fused attention reads grouped K/V instead of per-head copies
   (GQA/MQA models captured with SDPA).

``ANALYSIS_PASSES`` then turn a copy of that graph into the engine's second, analysis
graph (used only while preparing a context, so decode never pays for it):

3. ``capture_attention_importance``: also output the attention each key receives.
"""

from steerc.passes.attention_sites import AttentionSite, find_attention_sites
from steerc.passes.capture_attention_importance import IMPORTANCE_OUTPUT, ImportanceSettings, capture_attention_importance
from steerc.passes.insert_steering_bias import SteeringBiasSettings, insert_steering_bias
from steerc.passes.report import PassReport, SiteReport
from steerc.passes.use_native_gqa import NativeGqaSettings, use_native_gqa

PASSES = (insert_steering_bias, use_native_gqa)
ANALYSIS_PASSES = (capture_attention_importance,)

__all__ = [
    "ANALYSIS_PASSES",
    "IMPORTANCE_OUTPUT",
    "ImportanceSettings",
    "PASSES",
    "AttentionSite",
    "NativeGqaSettings",
    "PassReport",
    "SiteReport",
    "SteeringBiasSettings",
    "capture_attention_importance",
    "find_attention_sites",
    "insert_steering_bias",
    "use_native_gqa",
]
