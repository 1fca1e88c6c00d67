"""Graph passes over a captured decoder-step graph (``ExportedProgram.graph_module``).

``PASSES`` is the order ``steerc compile`` applies them in. Each pass is
``pass(gm, settings) -> PassReport``; ``pass.settings_type.for_model(geometry,
architecture)`` builds its settings, and a pass raises :class:`steerc.errors.PassError`
when it finds nothing to rewrite.
"""

from steerc.passes.attention_sites import AttentionSite, find_attention_sites
from steerc.passes.insert_steering_bias import SteeringBiasSettings, insert_steering_bias
from steerc.passes.report import PassReport, SiteReport

PASSES = (insert_steering_bias,)

__all__ = ["PASSES", "AttentionSite", "PassReport", "SiteReport", "SteeringBiasSettings", "find_attention_sites", "insert_steering_bias"]
