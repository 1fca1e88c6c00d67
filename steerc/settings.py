"""Compile settings: small frozen dataclasses, validated on construction, JSON round-trip."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from steerc.backends import canonical_name, get_backend
from steerc.settings_base import JsonDataclass, check_choice, check_int, setting

__all__ = ["CompileSettings", "DTYPES", "ATTN_IMPLEMENTATIONS", "TARGETS", "DEVICES", "WEIGHTS", "FULL_WEIGHT_DTYPES", "WEIGHT_METHODS", "KV_LAYOUTS", "ATTENTION_OPS", "KV_CACHE_DTYPES",
           "check_layer_groups"]

DTYPES = ("fp32", "fp16", "bf16")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
SUPPORTED_OPSETS = (20, 21, 22, 23)
# What the ONNX graph is written for: ONNX Runtime, or TensorRT's ONNX parser (its rules are
# checked and the manifest carries optimization profiles and a trtexec command line).
TARGETS = ("onnx", "tensorrt")
# Backends (compiled forms built beside the ONNX engine from the same rewritten ExportedProgram)
# are the registry's: steerc.backends.BACKENDS.
DEVICES = ("cpu", "cuda")
# Weights: "full" (in --dtype) or weight-only quantized to ONNX Runtime's MatMulNBits.
WEIGHTS = ("full", "int8", "int4")
# --weights also takes these dtypes: full-precision weights in that dtype (weights "full", dtype it).
FULL_WEIGHT_DTYPES = ("fp32", "fp16")
# How blocks are quantized: "minmax" (steerc: exact block minimum), "rtn" (ONNX Runtime's
# round-to-nearest quantizer), "auto" (minmax for int4, rtn for int8: what measured best).
WEIGHT_METHODS = ("auto", "minmax", "rtn")
# How the step graph extends the KV cache: "concat" returns present = past + new (a copy of the
# past per call); "in-place" takes preallocated buffers and writes the new positions into them
# (steerc/passes/onnx/kv_in_place.py; the runtime binds one buffer as past and present).
KV_LAYOUTS = ("concat", "in-place")
# The op each layer of the step graph attends with: "standard" (ONNX Attention), or "group-query"
# (ONNX Runtime's contrib GroupQueryAttention over the in-place buffers, one read of each KV head
# for its query heads: steerc/passes/onnx/fuse_group_query_attention.py).
ATTENTION_OPS = ("standard", "group-query")
# The KV buffers' element type: "fp32" (the activations' dtype), or "int8" (GroupQueryAttention's
# quantized cache, static per-channel scales calibrated at compile time:
# steerc/passes/onnx/quantize_kv_cache.py).
KV_CACHE_DTYPES = ("fp32", "int8")
# Which positions' logits the step graph returns: "last" (the LM head on the final position only:
# what generation reads; steerc/passes/onnx/keep_last_logits.py) or "all" (every position).
LOGITS = ("last", "all")

def check_layer_groups(groups: Any, num_layers: int | None = None) -> tuple[tuple[int, ...], ...]:
    """Validate layer groups (e.g. shared-attention groups) and return them as a tuple of tuples.

    Each group is a run of at least two contiguous, ascending layer indices; groups do not
    overlap; with ``num_layers`` every index must be in ``[0, num_layers)``. Lists (from JSON)
    are accepted. Raises ValueError with a message naming the offending group."""
    if not isinstance(groups, (tuple, list)):
        raise ValueError(f"layer groups must be a list of groups of layer indices, got {groups!r}")
    out = []
    for group in groups:
        if not isinstance(group, (tuple, list)) or any(isinstance(i, bool) or not isinstance(i, int) for i in group):
            raise ValueError(f"a layer group must be a list of integer layer indices, got {group!r}")
        group = tuple(group)
        if len(group) < 2:
            raise ValueError(f"layer group {list(group)} has a single layer; a shared group needs at least two layers (the first one's attention is reused by the others)")
        if any(i < 0 for i in group):
            raise ValueError(f"layer group {list(group)} has a negative layer index")
        if list(group) != list(range(group[0], group[0] + len(group))):
            raise ValueError(f"layer group {list(group)} must be contiguous and ascending (e.g. {list(range(min(group), min(group) + len(group)))})")
        if num_layers is not None and group[-1] >= num_layers:
            raise ValueError(f"layer group {group[0]}-{group[-1]} is outside the model: it has {num_layers} layers (0-{num_layers - 1})")
        out.append(group)
    for a, b in zip(sorted(out), sorted(out)[1:]):
        if b[0] <= a[-1]:
            raise ValueError(f"layer groups {a[0]}-{a[-1]} and {b[0]}-{b[-1]} overlap; a layer can belong to one group only")
    return tuple(out)


@dataclass(frozen=True)
class CompileSettings(JsonDataclass):
    """How ``steerc compile`` captures and exports a model.

    ``max_seq_len`` bounds past + new tokens of one call (the engine's context limit);
    ``max_batch`` bounds the batch dimension. Both become explicit ranges of the exported
    graph's dynamic dimensions.

    Each field's command-line flag is declared with it (:func:`~steerc.settings_base.setting`);
    ``steerc compile`` makes its flags from them (:mod:`steerc.cli.settings_flags`), the special
    cases (``--weights`` fp32/fp16, the ``--dtype`` default of ``--target tensorrt``,
    ``--share-attention``'s syntax, ``--backend``) in :func:`steerc.cli.compile.compile_settings`.
    """

    opset: int = setting(23, "ONNX opset (default 23: fused Attention; 20: decomposed)")
    dtype: str = setting("fp32", "weights and KV dtype (default fp32; fp16 with --target tensorrt)", choices=DTYPES)
    max_seq_len: int = setting(2048, "most tokens (past + new) one call may see")
    max_batch: int = setting(16, "most sequences one call may batch")
    attn_implementation: str = setting("sdpa", "attention implementation to capture", name="--attn", choices=ATTN_IMPLEMENTATIONS)
    verify: bool = setting(True, "skip the ONNX Runtime self-check", negate=True)
    # also build the analysis graph (attn_importance) that LLMSteer's selection needs
    importance: bool = setting(True, "do not build the analysis graph (attn_importance) LLMSteer selects tokens with", negate=True)
    # Shared Attention (arXiv 2407.12866): groups of contiguous layers, e.g. ((20, ..., 29),); the
    # later layers of a group reuse the first one's attention probabilities. () = no sharing.
    # The flag's text ("20-24,25-29") is parsed by steerc.cli.compile (parse_share_groups).
    share_attention: tuple[tuple[int, ...], ...] = setting(
        (), "Shared Attention: layer groups FIRST-LAST, comma-separated (e.g. 20-29 or 20-24,25-29); the later layers of a group "
            "reuse the first layer's attention probabilities and keep no key cache (default: none)", type=str, metavar="GROUPS")
    target: str = setting("onnx", "tensorrt: write the step graph to the TensorRT ONNX parser's rules (checked), with optimization "
                                  "profiles and a trtexec command", choices=TARGETS)
    # A name of steerc.backends.BACKENDS: "aoti": also an AOTInductor package (model.pt2) for
    # ``device``; "tensorrt" (formerly "torch-tensorrt", still accepted): also a serialized
    # TensorRT plan (model.plan; CUDA only). The ONNX engine is always written.
    # No declared flag: --backend's choices and help are the registry's when the parser is built (cli.common.add_backend_option).
    backend: str = "onnx"
    device: str = setting("cpu", "device the compiled backend is built for (default cpu; tensorrt: cuda)", choices=DEVICES)
    # Weight-only quantization of the ONNX graphs' MatMul weights (activations stay in dtype).
    weights: str = setting("full", "int8/int4: weight-only quantization of every MatMul weight to ONNX Runtime's MatMulNBits (activations "
                                   "stay in --dtype); fp32/fp16: full-precision weights in that dtype (default: full precision, in --dtype)",
                           choices=FULL_WEIGHT_DTYPES + tuple(w for w in WEIGHTS if w != "full"))
    weight_block: int = setting(32, "input channels per quantization block (power of two >= 16; default 32)")
    # rtn only: no zero point (minmax always keeps the block minimum)
    weight_symmetric: bool = setting(True, "rtn: quantize with an integer zero point per block (default: symmetric)", name="--weight-asymmetric",
                                     negate=True)
    weight_method: str = setting("auto", "minmax: each block from its minimum to its maximum, the minimum kept exactly (exact for weights "
                                         "from a Q4_1 GGUF); rtn: ONNX Runtime's round-to-nearest quantizer; auto (default): minmax for "
                                         "int4, rtn for int8", choices=WEIGHT_METHODS)
    kv: str = setting("concat", "KV update of the step graph: concat (present = past + new, a copy per call; default) or in-place "
                                "(preallocated buffers the graph writes into: no copy of the past per decode step)", choices=KV_LAYOUTS)
    attention_op: str = setting("standard", "the op each layer attends with: standard (ONNX Attention; default) or group-query (ONNX Runtime's "
                                            "GroupQueryAttention over the in-place KV buffers, needs --kv in-place: faster decode on long contexts)",
                                choices=ATTENTION_OPS)
    kv_cache: str = setting("fp32", "element type of the KV buffers: fp32 (default) or int8 (GroupQueryAttention's int8 cache, per-channel "
                                    "scales calibrated at compile time; lossy; needs --attention-op group-query: faster decode on long contexts)",
                            choices=KV_CACHE_DTYPES)
    logits: str = setting("last", "positions the step graph returns logits for: last (default; prefill runs the LM head on the final "
                                  "position only, 1.1-1.2x faster) or all (every position, for scoring whole sequences in one call)",
                          choices=LOGITS)

    def __post_init__(self) -> None:
        check_choice("opset", self.opset, SUPPORTED_OPSETS)
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        # The capture traces with 5 new tokens after 3 past ones (see capture/export.py).
        check_int("max_seq_len", self.max_seq_len, 16, 1 << 20)
        check_int("max_batch", self.max_batch, 2, 4096)
        for name in ("verify", "importance"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        object.__setattr__(self, "share_attention", check_layer_groups(self.share_attention))  # lists (JSON) -> tuples
        check_choice("target", self.target, TARGETS)
        object.__setattr__(self, "backend", canonical_name(self.backend))  # an old alias -> its name (one deprecation warning)
        check_choice("device", self.device, DEVICES)
        backend = get_backend(self.backend)
        backend.check_settings(self)
        check_choice("weights", self.weights, WEIGHTS)
        check_int("weight_block", self.weight_block, 16, 4096)
        if self.weight_block & (self.weight_block - 1):
            raise ValueError(f"weight_block must be a power of two (16, 32, 64, 128, ...), got {self.weight_block}")
        if not isinstance(self.weight_symmetric, bool):
            raise ValueError(f"weight_symmetric must be true or false, got {self.weight_symmetric!r}")
        check_choice("weight_method", self.weight_method, WEIGHT_METHODS)
        if self.weight_method == "minmax" and not self.weight_symmetric:
            raise ValueError("weight_symmetric=false (--weight-asymmetric) chooses rtn's integer zero points; minmax always keeps each block's minimum: drop one of them")
        if self.weights != "full":
            if self.target == "tensorrt":
                raise ValueError(f"weights {self.weights} use ONNX Runtime's MatMulNBits, which TensorRT's parser does not read; use --target onnx")
            if not backend.onnx_step_graph:
                raise ValueError(f"weights {self.weights} apply to the ONNX engine only; --backend {self.backend} would compile full-precision weights")
            if self.dtype == "bf16":
                raise ValueError(f"weights {self.weights} need --dtype fp32 or fp16 activations (ONNX Runtime's CPU provider has no bf16 MatMulNBits)")
        check_choice("kv", self.kv, KV_LAYOUTS)
        if self.kv == "in-place":
            if self.opset < 23:
                raise ValueError(f"kv in-place rewrites the fused Attention of opset 23 (raised to 24 for TensorScatter); got opset {self.opset}")
            if self.target != "onnx" or not backend.onnx_step_graph:
                raise ValueError("kv in-place is an ONNX Runtime step graph: use --target onnx and --backend onnx")
            if self.share_attention:
                raise ValueError("kv in-place does not support shared attention (shared layers read the values outside the fused Attention)")
        check_choice("attention_op", self.attention_op, ATTENTION_OPS)
        if self.attention_op == "group-query":
            if self.kv != "in-place":
                raise ValueError("attention_op group-query runs ONNX Runtime's GroupQueryAttention over the in-place KV buffers: add --kv in-place")
            if self.dtype != "fp32":
                raise ValueError(f"attention_op group-query is checked in fp32 only (ONNX Runtime's CPU kernel); got dtype {self.dtype}: use --dtype fp32 "
                                 "(int4/int8 weights keep fp32 activations)")
        check_choice("kv_cache", self.kv_cache, KV_CACHE_DTYPES)
        check_choice("logits", self.logits, LOGITS)
        if self.kv_cache == "int8" and self.attention_op != "group-query":
            raise ValueError("kv_cache int8 is GroupQueryAttention's quantized cache: add --kv in-place --attention-op group-query")
        if self.target == "tensorrt" and self.dtype == "bf16":
            raise ValueError("target 'tensorrt' is written in fp16 (default) or fp32; bf16 engines cannot be self-checked on CPU")

    def to_dict(self) -> dict[str, Any]:
        """JSON-native values (the groups as lists), so a manifest equals its JSON reading."""
        return {**super().to_dict(), "share_attention": [list(g) for g in self.share_attention]}

    @property
    def resolved_weight_method(self) -> str:
        """The method ``weights`` int8/int4 are quantized by: ``auto`` is minmax for int4 (rtn
        int4 loses 3 F1 on SQuAD on the default model, minmax keeps it) and rtn for int8
        (within noise of fp32 already, and faster); --weight-asymmetric means rtn."""
        if self.weight_method != "auto":
            return self.weight_method
        return "minmax" if self.weights == "int4" and self.weight_symmetric else "rtn"

    @property
    def torch_dtype(self):
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.dtype]
