"""ONNX pass ``quantize_weights`` (``--weights int8|int4``): weight-only quantization of an exported ONNX graph.

``--weights int4|int8`` rewrites every ``MatMul`` whose right operand is a constant weight into
ONNX Runtime's ``com.microsoft::MatMulNBits`` (4 or 8 bits, blocks of ``block_size`` input
channels, one scale per block), by one of two methods:

* ``minmax`` (default for int4, :mod:`steerc.passes.onnx.nbits_minmax`): each block spans its own
  minimum to maximum and keeps its minimum exactly (an integer zero point plus a float
  correction); weights from a Q4_1 GGUF file come back bit for bit. The LM head (also a tied
  one, read through a Transpose of the embedding table) is quantized at 8 bits, symmetrically
  (llama.cpp's Q8_0, exact for a GGUF's Q8_0 token table; no correction ops).
* ``rtn`` (default for int8): ``onnxruntime.quantization.matmul_nbits_quantizer``'s
  round-to-nearest, symmetric or with an integer zero point per block.

Activations, the KV cache, attention, the
steering bias and the analysis outputs stay in the engine's dtype; only the weight bytes shrink,
which is what a memory-bound decode step reads. Matmuls without a constant weight (attention's
own) are left alone.

The step graph and the analysis graph are quantized separately with the same settings; the
quantizer is deterministic, so their quantized weights are byte-identical and
:func:`steerc.backends.onnx.share_weights` still keeps one copy on disk.
"""

from __future__ import annotations

import logging
from pathlib import Path

from steerc.errors import require
from steerc.passes.onnx.contract import OnnxGraph, OnnxPassReport, onnx_pass, save_with_weights

__all__ = ["WEIGHT_METHODS", "WEIGHT_SCHEMES", "quantize_file", "quantize_weights"]

log = logging.getLogger(__name__)

WEIGHT_SCHEMES = {"int8": 8, "int4": 4}
WEIGHT_METHODS = ("minmax", "rtn")
ACCURACY_LEVEL = 4  # int8 activations inside the kernel (MLAS's fast path on CPU)
# minmax int4 keeps the LM head (the largest matrix of a small model, and the one whose errors
# reach the logits directly) at 8 bits, as llama.cpp's Q4 files do; tied to the embedding table,
# it was left in full precision before, 113 MB read per decode step on SmolLM2-135M.
HEAD_BITS = 8


def _rtn(model, bits: int, block_size: int, symmetric: bool):
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, accuracy_level=ACCURACY_LEVEL, bits=bits)
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer.process()
    quantized = quantizer.model.model
    count = sum(1 for n in quantized.graph.node if n.op_type == "MatMulNBits")
    return quantized, {"matmuls": count, "kernels": count}


def quantize_file(path: Path, scheme: str, block_size: int = 32, symmetric: bool = True, method: str = "rtn") -> dict:
    """Rewrite ``path`` (and its external data file ``path.name + '.data'``) in place with
    MatMulNBits weights; returns the manifest entry (scheme, method, bits, block size, matmuls
    quantized, MatMulNBits kernels, weight bytes before and after)."""
    require("onnxruntime", "weight quantization")
    import onnx

    if scheme not in WEIGHT_SCHEMES:
        raise ValueError(f"weight scheme must be one of {sorted(WEIGHT_SCHEMES)}, got {scheme!r}")
    if method not in WEIGHT_METHODS:
        raise ValueError(f"weight method must be one of {list(WEIGHT_METHODS)}, got {method!r}")
    path = Path(path)
    data = path.with_name(path.name + ".data")
    before = data.stat().st_size if data.is_file() else 0
    model = onnx.load(str(path))  # with its weights
    if method == "minmax":
        from steerc.passes.onnx.nbits_minmax import quantize_matmuls_minmax

        bits = WEIGHT_SCHEMES[scheme]
        counts = quantize_matmuls_minmax(model, bits, block_size, ACCURACY_LEVEL, head_bits=HEAD_BITS if bits < HEAD_BITS else None)
        for name, why in counts.pop("skipped").items():
            log.warning("%s: %s stays in full precision: %s", path.name, name, why)
        quantized = model
    else:
        quantized, counts = _rtn(model, WEIGHT_SCHEMES[scheme], block_size, symmetric)
    if counts["matmuls"] == 0:
        raise RuntimeError(f"{path.name}: no MatMul with a constant weight to quantize")
    after = save_with_weights(quantized, path, "quant")
    symmetric = symmetric and method == "rtn"
    log.info("%s: %d MatMul weights quantized to %s by %s (block %d, %s): %.1f -> %.1f MiB", path.name, counts["matmuls"], scheme, method, block_size,
             "symmetric" if symmetric else "asymmetric", before / 2**20, after / 2**20)
    return {"scheme": scheme, "method": method, "bits": WEIGHT_SCHEMES[scheme], "block_size": block_size, "symmetric": symmetric,
            "op": "com.microsoft::MatMulNBits", **counts, "data_bytes_before": before, "data_bytes_after": after}


@onnx_pass(wanted=lambda settings: settings.weights != "full")
def quantize_weights(graph: OnnxGraph, settings) -> OnnxPassReport:
    """The pass: :func:`quantize_file` with the settings' scheme, block and method; the entry is the manifest's ``weights``."""
    return OnnxPassReport("quantize_weights", quantize_file(graph.path, settings.weights, settings.weight_block, settings.weight_symmetric,
                                                            settings.resolved_weight_method))
