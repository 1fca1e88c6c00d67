"""ONNX pass ``quantize_kv_cache`` (``--kv-cache int8``): the KV buffers of a GroupQueryAttention
step graph in int8, with static per-channel scales.

At 2K tokens a decode step of SmolLM2-135M reads about as many KV bytes (fp32: 93 MB over 30
layers) as int4 weight bytes. ONNX Runtime's ``GroupQueryAttention`` keeps its cache in int8
(``kv_cache_bit_width=8``, ``k_quant_type``/``v_quant_type`` ``PER_CHANNEL``) given a scale per
KV head and channel for keys (``k_scale``) and values (``v_scale``): it quantizes the new
positions as it writes them (``round(x / scale)``, saturated to [-128, 127]) and attends over the
dequantized cache. This pass, after :mod:`~steerc.passes.onnx.fuse_group_query_attention`:

* **calibrates** the scales on the graph itself: one prefill of :data:`CALIBRATION_FILE` (a
  short mixed text shipped with steerc: prose, a question and answer, code, numbers, several
  languages; tokenized by the model's tokenizer, or random tokens without one), reading every
  layer's keys (after rotary) and values; ``scale = absmax x margin / 127`` per (layer, KV head,
  channel), ``margin`` :data:`MARGIN`. Random tokens under-reach real text's absmax by up to 4x in
  some key channels of SmolLM2 (measured), hence the shipped text;
* **rewrites** each ``GroupQueryAttention``: the past/present buffers become int8, the scales
  constant inputs, the three quantization attributes set;
* writes the scales to :data:`SCALES_FILE` beside the graph (safetensors: ``k.{layer}`` and
  ``v.{layer}``, ``[Hkv, D]`` float32), which the runtime's :class:`~steerc.runtime.kv_buffers.KVBuffers`
  quantize and dequantize with: the KV the rest of steerc sees (stores, the analysis graph,
  :class:`~steerc.runtime.kv_cache.KVCache`) stays float32, and a value that went through int8
  once comes back to the same int8 (``round(q * s / s) = q``).

It is lossy by design (the error is the int8 rounding of the cache, about ``scale / 2`` per
element; docs/BENCHMARKS.md, "A leaner int4 decode step", has its speed and quality). Steering
stays an exact additive term of ``attention_bias``, as in the fp32-cache graph. Raises when the
graph has no ``GroupQueryAttention`` (compile with ``--attention-op group-query``).
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import numpy as np

from steerc.errors import EngineError
from steerc.passes.onnx.contract import OnnxGraph, OnnxPassReport, onnx_pass

__all__ = ["quantize_kv_cache", "calibration_ids", "calibrate", "rewrite_int8_cache", "load_kv_scales", "CALIBRATION_FILE", "SCALES_FILE", "MARGIN"]

log = logging.getLogger(__name__)

CALIBRATION_FILE = "kv_calibration.txt"
SCALES_FILE = "kv_scales.safetensors"
MARGIN = 1.25  # scales reach 1.25x the calibration absmax: values a little beyond it are not clipped
_PAST, _PRESENT = "past_key_values.", "present."


def calibration_ids(tokenizer, vocab_size: int, length: int = 1024) -> tuple[int, ...]:
    """The calibration prompt's token ids: the shipped text through ``tokenizer`` (at most
    ``length`` tokens), or seeded random ids below ``vocab_size`` without a tokenizer."""
    if tokenizer is None:
        log.warning("int8 KV cache: no tokenizer, so the scales are calibrated on random tokens (real text may be clipped)")
        return tuple(int(t) for t in np.random.default_rng(0).integers(0, vocab_size, length))
    text = resources.files("steerc.passes.onnx").joinpath(CALIBRATION_FILE).read_text(encoding="utf-8")
    return tuple(int(t) for t in tokenizer(text)["input_ids"][:length])


def calibrate(path: Path, ids: tuple[int, ...]) -> list[np.ndarray]:
    """Per layer, keys then values: the per-channel absmax ``[Hkv, D]`` over one unsteered prefill
    of ``ids`` through the in-place graph at ``path`` (run as the runtime runs it:
    :class:`~steerc.runtime.kv_buffers.InPlaceSession`, float buffers)."""
    from steerc.backends.onnx import create_session
    from steerc.runtime.kv_buffers import InPlaceSession

    session = InPlaceSession(create_session(path))
    specs = {i.name: i.shape for i in session.get_inputs()}
    S = len(ids)
    _, layers, heads, _ = specs["steer_bias"]
    feed = {"input_ids": np.array([ids], np.int64), "position_ids": np.arange(S, dtype=np.int64)[None], "attention_mask": np.ones((1, S), np.int64),
            "steer_bias": np.zeros((1, layers, heads, S), np.float32),
            **{name: np.zeros((1, specs[name][1], 0, specs[name][3]), np.float32) for name in session.past_names}}  # an empty past
    return [np.abs(present[0]).max(axis=1) for present in session.run(session.present_names, feed)]  # [Hkv, D]


def _sites(model) -> list:
    """The graph's GroupQueryAttention nodes; EngineError when it has none."""
    sites = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    if not sites:
        raise EngineError("int8 KV cache: the step graph has no GroupQueryAttention (compile with --kv in-place --attention-op group-query)")
    return sites


def rewrite_int8_cache(model, scales: list[np.ndarray]) -> int:
    """Rewrite ``model`` (a GroupQueryAttention step graph) in place: int8 buffers, ``scales``
    (per layer, keys then values, ``[Hkv, D]``) as constant inputs. Returns the layers rewritten."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    sites = _sites(model)
    if len(scales) != 2 * len(sites):
        raise EngineError(f"int8 KV cache: {len(scales)} scale tensors for {len(sites)} attention layers")
    if any(a.name == "kv_cache_bit_width" for n in sites for a in n.attribute):
        raise EngineError("int8 KV cache: the step graph's cache is quantized already")
    for v in (*graph.input, *graph.output):
        if v.name.startswith((_PAST, _PRESENT)):
            v.type.tensor_type.elem_type = TensorProto.INT8
    for layer, node in enumerate(sites):
        names = (f"kv_cache/{layer}/k_scale", f"kv_cache/{layer}/v_scale")
        for name, scale in zip(names, scales[2 * layer: 2 * layer + 2]):
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(scale, np.float32).reshape(-1), name))
        while len(node.input) < 12:  # up to head_sink; k_scale and v_scale are inputs 12 and 13
            node.input.append("")
        node.input.extend(names)
        node.attribute.extend([helper.make_attribute("kv_cache_bit_width", 8), helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                               helper.make_attribute("v_quant_type", "PER_CHANNEL")])
    keep = [v for v in graph.value_info if not v.name.startswith(_PRESENT)]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    return len(sites)


def load_kv_scales(folder: Path, num_layers: int) -> list[np.ndarray]:
    """The scales :data:`SCALES_FILE` in ``folder`` holds, keys then values per layer (flat KV order)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(folder) / SCALES_FILE
    try:
        tensors = load_file(str(path))
        return [np.ascontiguousarray(tensors[f"{kind}.{layer}"], np.float32) for layer in range(num_layers) for kind in ("k", "v")]
    except (OSError, KeyError, ValueError, SafetensorError) as exc:
        raise EngineError(f"engine {folder}: its int8 KV cache scales ({SCALES_FILE}) are missing or unreadable ({exc}); recompile the engine with --force") from None


@onnx_pass(wanted=lambda settings: settings.kv_cache == "int8")
def quantize_kv_cache(graph: OnnxGraph, settings) -> OnnxPassReport:
    """The pass: calibrate on the graph, rewrite it, write :data:`SCALES_FILE` beside it."""
    import onnx
    from safetensors.numpy import save_file

    if not graph.calibration_ids:
        raise EngineError("int8 KV cache: no calibration tokens were given to the pass")
    proto = onnx.load(str(graph.path), load_external_data=False)
    _sites(proto)  # before calibrating: a graph this pass cannot rewrite is refused with why
    absmax = calibrate(graph.path, graph.calibration_ids)
    scales = [np.maximum(a * MARGIN, 1e-6).astype(np.float32) / 127 for a in absmax]
    layers = rewrite_int8_cache(proto, scales)
    onnx.save_model(proto, str(graph.path))
    onnx.checker.check_model(str(graph.path))
    tmp = graph.path.with_name(f".{SCALES_FILE}.tmp")
    save_file({f"{kind}.{layer}": scales[2 * layer + i] for layer in range(layers) for i, kind in enumerate(("k", "v"))}, str(tmp))
    tmp.replace(graph.path.with_name(SCALES_FILE))
    log.info("int8 KV cache: %d layers, scales calibrated on %d tokens (margin %.2f)", layers, len(graph.calibration_ids), MARGIN)
    return OnnxPassReport("quantize_kv_cache", {"dtype": "int8", "per": "channel", "scales": SCALES_FILE, "margin": MARGIN,
                                                "calibration_tokens": len(graph.calibration_ids), "layers": layers,
                                                "meaning": "past_key_values.* / present.* buffers are int8; x = q * scale with scale [Hkv, D] per layer "
                                                "(kv_scales.safetensors: k.{layer}, v.{layer}); the runtime quantizes a float KV cache into them "
                                                "and dequantizes out of them"})

