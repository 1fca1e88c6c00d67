"""Graph passes over a captured decoder-step graph (``ExportedProgram.graph_module``).

``PASSES`` is the order ``steerc compile`` applies them in. Each pass is
``pass(gm, settings) -> PassReport``; ``pass.settings_type.for_model(geometry,
architecture, attn_implementation)`` builds its settings, or returns None when the pass does
not apply to the model (it is then skipped and the manifest says so). A pass that runs and
finds nothing to rewrite raises :class:`steerc.errors.PassError`.

1. ``insert_steering_bias``: every attention site takes the ``steer_bias`` input.
2. ``use_native_gqa``: fused attention reads grouped K/V instead of per-head copies
   (GQA/MQA models captured with SDPA).
"""

from steerc.passes.attention_sites import AttentionSite, find_attention_sites
from steerc.passes.insert_steering_bias import SteeringBiasSettings, insert_steering_bias
from steerc.passes.report import PassReport, SiteReport
from steerc.passes.use_native_gqa import NativeGqaSettings, use_native_gqa

PASSES = (insert_steering_bias, use_native_gqa)

__all__ = [
    "PASSES",
    "AttentionSite",
    "NativeGqaSettings",
    "PassReport",
    "SiteReport",
    "SteeringBiasSettings",
    "find_attention_sites",
    "insert_steering_bias",
    "use_native_gqa",
]
