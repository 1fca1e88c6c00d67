"""ONNX pass ``make_tensorrt_ready`` (``--target tensorrt``): rewrite the exported step graph so that it
passes :func:`steerc.backends.tensorrt.check.check_tensorrt`.

Every rewrite keeps the graph's results (ONNX Runtime gives the same logits and present tensors
before and after); what cannot be rewritten that way is left for the checker to report:

* ``attention_softcap_dropped``: ``softcap=0`` (the default; TensorRT tolerates it, but a
  present attribute is dropped so that no importer has to).
* ``attention_qk_mode_dropped``: ``qk_matmul_output_mode`` when there is no qk_matmul_output
  (the mode only shapes that output).
* ``attention_slots_trimmed``: trailing empty input/output slots (``""``) of Attention.
* ``attention_past_kv_split``: ``Attention(Q, K, V, mask, past_key, past_value)`` becomes
  ``Concat(past_key, K)`` / ``Concat(past_value, V)`` on the sequence axis outside the op, whose
  results feed the op as K and V and are the old present_key / present_value outputs.
* ``attention_present_split``: present_key / present_value outputs without past inputs are K and V
  themselves (an Identity outside the op).
* ``attention_mask_cast``: a float attn_mask whose dtype differs from Q's is cast to Q's dtype;
  values are first clamped to Q's dtype's finite range, so a large negative "masked" value
  stays a finite large negative value rather than becoming -inf.
* ``rotary_position_ids_cast``: a non-int64 position_ids tensor of RotaryEmbedding is cast to
  int64 (exact for integer ids; a graph *input* of the wrong type is left: that is the engine's
  contract).

The weights are not touched: the proto is rewritten and saved beside its external data file.
"""

from __future__ import annotations

import logging
from pathlib import Path

from steerc.passes.onnx.contract import OnnxGraph, OnnxPassReport, onnx_pass, save_proto

__all__ = ["make_tensorrt_ready", "tensorrt_ready_file", "rewrite_for_tensorrt", "FIXES"]

log = logging.getLogger(__name__)

FIXES = (
    "attention_softcap_dropped",
    "attention_qk_mode_dropped",
    "attention_slots_trimmed",
    "attention_past_kv_split",
    "attention_present_split",
    "attention_mask_cast",
    "rotary_position_ids_cast",
)

_DEFAULT_DOMAINS = ("", "ai.onnx")
BOOL, INT64 = 9, 7
_FLOAT_RANGE = {1: 3.4028234663852886e38, 10: 65504.0, 16: 3.3895313892515355e38}  # finite max of float32/float16/bfloat16


def tensorrt_ready_file(path) -> dict[str, int]:
    """Rewrite the ONNX model at ``path`` in place (the proto only; the weights stay in their
    external data file) so that TensorRT's ONNX parser accepts it where a rewrite can do that,
    then run ``onnx.checker``. Returns ``{fix: count}`` for every fix in :data:`FIXES` (all zero,
    and the file untouched, when nothing needed changing); remaining violations are logged."""
    import onnx

    from steerc.backends.tensorrt.check import check_tensorrt

    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    report = rewrite_for_tensorrt(proto)
    if any(report.values()):
        save_proto(proto, path)
        log.info("%s: TensorRT rewrite %s", path.name, {k: v for k, v in report.items() if v})
    onnx.checker.check_model(str(path))
    left = check_tensorrt(path)
    if left:
        log.warning("%s: %d TensorRT violation(s) no rewrite can fix, e.g. %s", path.name, len(left), left[0])
    return report


@onnx_pass(wanted=lambda settings: settings.target == "tensorrt")
def make_tensorrt_ready(graph: OnnxGraph, settings) -> OnnxPassReport:
    """The pass: :func:`tensorrt_ready_file` on the step graph; the entry is ``{fix: count}`` (all
    zero when the graph already met the rules: not an error, the checker then runs on it as is)."""
    return OnnxPassReport("make_tensorrt_ready", tensorrt_ready_file(graph.path))


def rewrite_for_tensorrt(proto) -> dict[str, int]:
    """Apply the fixes to ``proto`` (a ModelProto, modified in place); returns the counts."""
    return _Rewriter(proto).run()


class _Rewriter:
    def __init__(self, proto):
        self.proto = proto
        self.graph = proto.graph
        self.report = dict.fromkeys(FIXES, 0)
        self.used = {n for node in self.graph.node for n in [*node.input, *node.output]}
        self.used |= {v.name for v in [*self.graph.input, *self.graph.output, *self.graph.value_info]}
        self.used |= {t.name for t in self.graph.initializer}
        self.used |= {node.name for node in self.graph.node}
        self._types: dict[str, int] | None = None

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name

    def types(self) -> dict[str, int]:
        """Name -> elem_type from shape inference on the current graph (recomputed after edits)."""
        import onnx

        if self._types is None:
            try:
                inferred = onnx.shape_inference.infer_shapes(self.proto, check_type=False, strict_mode=False)
            except Exception as exc:
                log.warning("shape inference failed (%s); dtype fixes are skipped", exc)
                inferred = self.proto
            g = inferred.graph
            types = {t.name: t.data_type for t in g.initializer}
            for v in [*g.input, *g.output, *g.value_info]:
                if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
                    types.setdefault(v.name, v.type.tensor_type.elem_type)
            for node in g.node:
                if node.op_type == "Constant":
                    for a in node.attribute:
                        if a.name == "value":
                            types.setdefault(node.output[0], a.t.data_type)
            self._types = types
        return self._types

    def run(self) -> dict[str, int]:
        new_nodes = []
        for node in self.graph.node:
            if node.domain in _DEFAULT_DOMAINS and node.op_type == "Attention":
                before = self.fix_attention(node)
                new_nodes.extend(before)
                new_nodes.append(node)
            else:
                new_nodes.append(node)
        if len(new_nodes) != len(self.graph.node):
            self._replace_nodes(new_nodes)
        # dtype fixes need shape inference on the rewritten graph
        self._types = None
        new_nodes = []
        for node in self.graph.node:
            before = []
            if node.domain in _DEFAULT_DOMAINS and node.op_type == "Attention":
                before = self.fix_mask_dtype(node)
            elif node.domain in _DEFAULT_DOMAINS and node.op_type == "RotaryEmbedding":
                before = self.fix_position_ids(node)
            new_nodes.extend(before)
            new_nodes.append(node)
        if len(new_nodes) != len(self.graph.node):
            self._replace_nodes(new_nodes)
        return self.report

    def _replace_nodes(self, nodes) -> None:
        import copy

        nodes = [copy.deepcopy(n) for n in nodes]
        del self.graph.node[:]
        self.graph.node.extend(nodes)

    # -- Attention ---------------------------------------------------------------------------------

    def fix_attention(self, node) -> list:
        from onnx import helper

        attrs = {a.name: a for a in node.attribute}
        drop = []
        if "softcap" in attrs and helper.get_attribute_value(attrs["softcap"]) == 0:
            drop.append("softcap")
            self.report["attention_softcap_dropped"] += 1
        has_qk_output = len(node.output) > 3 and node.output[3]
        if "qk_matmul_output_mode" in attrs and (helper.get_attribute_value(attrs["qk_matmul_output_mode"]) == 0 or not has_qk_output):
            drop.append("qk_matmul_output_mode")
            self.report["attention_qk_mode_dropped"] += 1
        if drop:
            kept = [a for a in node.attribute if a.name not in drop]
            del node.attribute[:]
            node.attribute.extend(kept)

        before = []
        inputs, outputs = list(node.input), list(node.output)
        past_k, past_v = (inputs[4] if len(inputs) > 4 else ""), (inputs[5] if len(inputs) > 5 else "")
        present_k, present_v = (outputs[1] if len(outputs) > 1 else ""), (outputs[2] if len(outputs) > 2 else "")
        label = node.name or outputs[0]
        rank4 = self._rank(inputs[1]) in (4, None) and self._rank(inputs[2]) in (4, None)
        if past_k and past_v and rank4 and not (len(inputs) > 6 and inputs[6]):
            # present = Concat(past, new) on the sequence axis (-2 of [B, H, T, D]), then attend over it
            for slot, past, present in ((1, past_k, present_k), (2, past_v, present_v)):
                out = present or self.fresh(f"{label}/trt_present_{'kv'[slot - 1]}")
                before.append(helper.make_node("Concat", [past, inputs[slot]], [out], name=self.fresh(f"{label}/trt_concat_{'kv'[slot - 1]}"), axis=-2))
                inputs[slot] = out
            inputs[4:6] = ["", ""]
            if len(outputs) > 1:
                outputs[1] = ""
            if len(outputs) > 2:
                outputs[2] = ""
            self.report["attention_past_kv_split"] += 1
        elif not past_k and not past_v and (present_k or present_v):
            for slot, present in ((1, present_k), (2, present_v)):
                if present:
                    before.append(helper.make_node("Identity", [inputs[slot]], [present], name=self.fresh(f"{label}/trt_present_{'kv'[slot - 1]}")))
                    outputs[slot] = ""
            self.report["attention_present_split"] += 1
        trimmed = False
        while len(inputs) > 3 and not inputs[-1]:
            inputs.pop()
            trimmed = True
        while len(outputs) > 1 and not outputs[-1]:
            outputs.pop()
            trimmed = True
        if trimmed:
            self.report["attention_slots_trimmed"] += 1
        if inputs != list(node.input) or outputs != list(node.output):
            del node.input[:]
            node.input.extend(inputs)
            del node.output[:]
            node.output.extend(outputs)
        return before

    def _rank(self, name: str) -> int | None:
        for v in [*self.graph.input, *self.graph.value_info, *self.graph.output]:
            if v.name == name and v.type.tensor_type.HasField("shape"):
                return len(v.type.tensor_type.shape.dim)
        return None

    def fix_mask_dtype(self, node) -> list:
        from onnx import TensorProto, helper

        if len(node.input) < 4 or not node.input[3]:
            return []
        types = self.types()
        mask, q = node.input[3], node.input[0]
        mask_t, q_t = types.get(mask), types.get(q)
        if mask_t is None or q_t is None or mask_t == BOOL or mask_t == q_t or q_t not in _FLOAT_RANGE:
            return []
        label = node.name or node.output[0]
        limit = _FLOAT_RANGE[q_t] if _FLOAT_RANGE.get(mask_t, 0) > _FLOAT_RANGE[q_t] else None
        nodes, src = [], mask
        if limit is not None:  # clamp to the target type's finite range: -3.4e38 must not become -inf in fp16
            lo, hi = self.fresh(f"{label}/trt_mask_min"), self.fresh(f"{label}/trt_mask_max")
            self.graph.initializer.extend([helper.make_tensor(lo, mask_t, [], [-limit]), helper.make_tensor(hi, mask_t, [], [limit])])
            clipped = self.fresh(f"{label}/trt_mask_clipped")
            nodes.append(helper.make_node("Clip", [src, lo, hi], [clipped], name=self.fresh(f"{label}/trt_mask_clip")))
            src = clipped
        cast = self.fresh(f"{label}/trt_mask_{TensorProto.DataType.Name(q_t).lower()}")
        nodes.append(helper.make_node("Cast", [src], [cast], name=self.fresh(f"{label}/trt_mask_cast"), to=q_t))
        node.input[3] = cast
        self.report["attention_mask_cast"] += 1
        return nodes

    def fix_position_ids(self, node) -> list:
        from onnx import helper

        if len(node.input) < 4 or not node.input[3]:
            return []
        pos = node.input[3]
        dtype = self.types().get(pos)
        if dtype is None or dtype == INT64 or dtype == BOOL:
            return []
        label = node.name or node.output[0]
        out = self.fresh(f"{label}/trt_position_ids_int64")
        node.input[3] = out
        self.report["rotary_position_ids_cast"] += 1
        return [helper.make_node("Cast", [pos], [out], name=self.fresh(f"{label}/trt_position_ids_cast"), to=INT64)]
