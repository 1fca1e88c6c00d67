"""TensorRT's restrictions on the fused transformer ops: ONNX ``Attention`` (the
``attention.*`` rules) and ``RotaryEmbedding`` (``rotary.position_ids``). Same shape as
:mod:`~steerc.backends.tensorrt.check.node_rules`: ``rule(report, node, name, g)``, mapped in
:data:`RULES`."""

from __future__ import annotations

from steerc.backends.tensorrt.check.graph import BOOL, INT64, attr, has_attr, input_name
from steerc.backends.tensorrt.supported_ops import dtype_name

__all__ = ["RULES", "attention", "rotary_embedding"]


def attention(report, node, name, g):
    def bad(rule, message):
        report(name, "Attention", rule, message)

    if input_name(node, 4) or input_name(node, 5):
        which = " and ".join(w for w, i in (("past_key", 4), ("past_value", 5)) if input_name(node, i))
        bad("attention.past_kv", f"{which} input present: TensorRT's Attention takes no KV cache inputs (inputs 4 and 5) — the KV concat must stay outside the op")
    if input_name(node, 6):
        bad("attention.nonpad_kv_seqlen", "nonpad_kv_seqlen input present: TensorRT's Attention does not take it — express padding in the mask")
    if len(node.output) != 1:
        extra = [w for w, i in (("present_key", 1), ("present_value", 2), ("qk_matmul_output", 3)) if len(node.output) > i and node.output[i]]
        detail = f"{', '.join(extra)} output present" if extra else f"{len(node.output)} output slots"
        bad("attention.outputs", f"{detail}: TensorRT's Attention has exactly one output (drop the unused output slots; compute the present KV outside the op)")
    ranks = [g.rank(input_name(node, i)) for i in range(3)]
    if None not in ranks:
        if len(set(ranks)) != 1:
            bad("attention.rank", f"Q, K, V have ranks {ranks}; TensorRT needs them equal (4-D, or 3-D with q_num_heads/kv_num_heads)")
        elif ranks[0] == 3 and not (attr(node, "q_num_heads") and attr(node, "kv_num_heads")):
            bad("attention.rank", "3-D Q/K/V without q_num_heads and kv_num_heads; TensorRT needs both attributes to reshape them")
        elif ranks[0] not in (3, 4):
            bad("attention.rank", f"Q, K, V have rank {ranks[0]}; TensorRT needs 4-D (or 3-D) inputs")
    mask = input_name(node, 3)
    if mask:
        mask_rank, mask_dtype, q_dtype = g.rank(mask), g.dtype(mask), g.dtype(node.input[0])
        if mask_rank is not None and mask_rank > 4:
            bad("attention.mask_rank", f"attn_mask {mask} has rank {mask_rank}; TensorRT needs at most 4 ([B or 1, H or 1, S, P+S])")
        if mask_dtype is not None and q_dtype is not None and mask_dtype != BOOL and mask_dtype != q_dtype:
            bad("attention.mask_dtype", f"attn_mask {mask} is {dtype_name(mask_dtype)} but Q is {dtype_name(q_dtype)}; TensorRT needs a float mask of Q's dtype (or bool)")
        if attr(node, "is_causal", 0):
            bad("attention.causal_with_mask", "is_causal=1 together with attn_mask; TensorRT cannot combine its causal flag with a mask (fold causality into the mask)")
    softcap = attr(node, "softcap")
    if softcap:  # TensorRT's op checker tolerates softcap=0 (the default)
        bad("attention.softcap", f"softcap={softcap}; TensorRT's Attention has no logit soft-capping")
    if has_attr(node, "softmax_precision"):
        bad("attention.softmax_precision", f"softmax_precision={attr(node, 'softmax_precision')} is set; TensorRT's Attention refuses the attribute")
    if attr(node, "qk_matmul_output_mode", 0):
        bad("attention.qk_matmul_output_mode", f"qk_matmul_output_mode={attr(node, 'qk_matmul_output_mode')}; TensorRT produces no qk_matmul_output (mode must be 0)")


def rotary_embedding(report, node, name, g):
    pos = input_name(node, 3)
    dtype = g.dtype(pos)
    if pos and dtype is not None and dtype != INT64:
        report(name, "RotaryEmbedding", "rotary.position_ids", f"position_ids {pos} is {dtype_name(dtype)}; TensorRT's RotaryEmbedding needs int64")


RULES = {"Attention": attention, "RotaryEmbedding": rotary_embedding}
