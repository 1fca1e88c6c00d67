"""The ONNX backend: every engine folder's own form (``model.onnx`` + ``analysis.onnx`` + ``selector.onnx``), run by ONNX Runtime.

* :mod:`~steerc.backends.onnx.export`: ``torch.onnx.export`` of a rewritten program, op counts,
  one weight file shared by both graphs;
* :mod:`~steerc.backends.onnx.graphs`: the export stage of a compile (step graph, analysis
  graph, the ONNX passes of :data:`steerc.passes.onnx.ONNX_PASSES`);
* :mod:`~steerc.backends.onnx.forked`: the analysis export in a forked child;
* :mod:`~steerc.backends.onnx.session`: ONNX Runtime sessions (shared arena, shared weights);
* :mod:`~steerc.backends.onnx.backend`: :class:`OnnxBackend`, its entry in the registry.

Importing this package pulls in neither torch nor onnx; the export and the backend class are
imported where used.
"""

from steerc.backends.onnx.export import ANALYSIS_FILE, DATA_FILE, MODEL_FILE, SELECTOR_FILE, export_onnx, op_counts, share_weights
from steerc.backends.onnx.session import PREPACK_ONLY_OPS, SharedWeights, create_session

__all__ = ["ANALYSIS_FILE", "DATA_FILE", "MODEL_FILE", "PREPACK_ONLY_OPS", "SELECTOR_FILE", "SharedWeights", "create_session", "export_onnx", "op_counts", "share_weights"]
