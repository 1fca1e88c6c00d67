"""Building engine folders: ``steerc compile``'s pipeline (running one is :mod:`steerc.runtime`).

* :mod:`~steerc.build.steerable`: model -> :class:`SteerableProgram` (capture, then the graph
  passes of :mod:`steerc.passes`);
* :mod:`~steerc.build.compile`: :func:`compile_engine`, model -> verified engine folder, atomically
  (the backends of :mod:`steerc.backends` write the graphs and compiled forms);
* :mod:`~steerc.build.verify`: the self-check against the eager reference;
* :mod:`~steerc.build.genai_config`: ``genai_config.json`` for onnxruntime-genai.

The folder's format (``steerc.json``) is :mod:`steerc.engine_format`, shared with the runtime.
"""

from steerc.build.compile import compile_engine
from steerc.engine_format import MANIFEST_FILE, read_manifest

__all__ = ["MANIFEST_FILE", "compile_engine", "read_manifest"]
