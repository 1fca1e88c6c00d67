"""What the TensorRT parser-rules checker reports: one :class:`Violation` per refused node or
attribute, and the :class:`CheckResult` of a whole graph. The rule ids (``Violation.rule``):

* ``opset``: the default domain's opset must be in :data:`~steerc.backends.tensorrt.supported_ops.OPSET_RANGE`.
* ``domain``: a node outside the default domain needs a TensorRT plugin (model-local functions
  are fine: the parser inlines them, and their bodies are checked).
* ``unsupported-op``: the op is not in :data:`~steerc.backends.tensorrt.supported_ops.SUPPORTED_OPS`.
* ``dtype``: the op's main input has a data type the parser does not accept for it, or a graph
  tensor has a type TensorRT cannot hold at all.
* ``constant-input``: an input the parser reads at import time (Squeeze/Unsqueeze/Slice/Pad/Reduce*
  axes, CumSum axis, TopK K, Range's floating-point bounds, OneHot depth, Dropout training_mode) is
  not an initializer or Constant; Squeeze without axes needs a static input shape.
* ``attribute``: unsupported attribute values (TopK sorted=0, ScatterND reduction, LSTM layout,
  Resize antialias, pooling dilations, Constant string/sparse values, ...), extra outputs (MaxPool
  indices, LayerNormalization mean/inv_std_dev).
* ``attention.*``: ONNX ``Attention`` as TensorRT imports it: Q, K, V and an optional mask only
  (no past_key/past_value, no nonpad_kv_seqlen), exactly one output (no present_key/present_value,
  no qk_matmul_output), Q/K/V of equal rank 4 (or 3 with q_num_heads/kv_num_heads), a mask of rank
  at most 4 and of Q's dtype (or bool), no nonzero ``softcap``, no ``softmax_precision``, a
  ``qk_matmul_output_mode`` of 0, and ``is_causal`` not combined with a mask.
* ``rotary.position_ids``: ``RotaryEmbedding``'s position_ids must be int64; so must a graph
  input named ``position_ids``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Violation", "CheckResult", "Report"]

Report = Callable[[str, str, str, str], None]
"""How a rule reports a violation: ``report(node, op, rule, message)``."""


@dataclass(frozen=True)
class Violation:
    """One thing TensorRT's ONNX parser would refuse. ``node`` names the node (or ``graph`` /
    ``input NAME``), ``op`` its op type, ``rule`` the rule id (see the module docstring)."""

    node: str
    op: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"node {self.node} ({self.op}): {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"node": self.node, "op": self.op, "rule": self.rule, "message": self.message}


@dataclass(frozen=True)
class CheckResult:
    """Violations plus what was looked at (for the CLI summary)."""

    violations: list[Violation]
    nodes_checked: int
    ops_seen: dict[str, int]
