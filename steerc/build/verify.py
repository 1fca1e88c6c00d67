"""Compile-time self-check: the ONNX engine against the eager reference.

Two steps on random tokens: a prefill (past length 0) with zero bias, and a decode step
(one token) on top of the reference's cache with a random non-zero bias over every key.
Logits are compared as ``max|onnx - ref| / max(1, max|ref|)``. An engine compiled with shared
attention (``groups``) is checked against :func:`steerc.reference.reference_shared_step`, its KV
in the shared layout (no keys for shared layers).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from steerc.capture.io_spec import DecoderGeometry, TensorSpec
from steerc.errors import VerificationError
from steerc.reference import reference_importance, reference_queries, reference_shared_step, reference_step

__all__ = ["self_check", "importance_check", "queries_check", "selector_check", "TOLERANCE", "WEIGHT_TOLERANCE", "KV_CACHE_TOLERANCE"]

log = logging.getLogger(__name__)

TOLERANCE = {"fp32": 1e-4, "fp16": 3e-2}  # bf16 is not self-checked on CPU (see engine/build.py)
# Weight-only quantized engines against the unquantized eager model (relative to the largest
# logit / query component; importance per query row): about twice the quantization error
# measured on SmolLM2-135M (int8: prefill 3.6e-2, steered decode 1.9e-2; int4 block 32: 3.4e-1,
# 1.6e-1; int4 minmax, whose blocks rebuild the GGUF's Q4_1 weights exactly: 3.1e-2, 2.0e-2). They
# catch a broken graph, not quality: steerc eval measures that.
WEIGHT_TOLERANCE = {"int8": 1e-1, "int4": 6e-1}
# An int8 KV cache (--kv-cache int8) adds its rounding (about scale / 2 per cached element, the
# scales calibrated on text while the check feeds random tokens): added to the tolerance above.
KV_CACHE_TOLERANCE = 2e-1


def _rel_err(got: np.ndarray, ref: torch.Tensor) -> float:
    ref_np = ref.float().numpy()
    return float(np.abs(got.astype(np.float32) - ref_np).max() / max(1.0, float(np.abs(ref_np).max())))


def _past(g: DecoderGeometry, groups, dtype=torch.float32) -> list[torch.Tensor]:
    """Empty past KV in the engine's layout (no key for a shared layer)."""
    shared = {l for grp in groups for l in grp[1:]}
    return [torch.zeros(1, g.num_kv_heads, 0, g.head_dim, dtype=dtype) for i in range(g.num_layers) for kind in ("key", "value") if not (kind == "key" and i in shared)]


def self_check(session, model, g: DecoderGeometry, inputs: list[TensorSpec], dtype: str, prompt_len: int = 8, seed: int = 0, groups=(), what: str = "the ONNX engine", tolerance: float | None = None) -> dict:
    tol = tolerance if tolerance is not None else TOLERANCE[dtype]
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    np_dtype = {"fp32": np.float32, "fp16": np.float16}[dtype]
    gen = torch.Generator().manual_seed(seed)
    names = [s.name for s in inputs]

    def run(ids, past, bias):
        P, S = past[0].shape[2], ids.shape[1]
        positions = torch.arange(P, P + S).unsqueeze(0)
        mask = torch.ones(1, P + S, dtype=torch.long)
        feed = [ids, positions, mask, *[t.to(torch_dtype) for t in past], bias]
        got = session.run(["logits"], {n: t.numpy().astype(np_dtype) if t.is_floating_point() and n != "steer_bias" else t.numpy() for n, t in zip(names, feed)})[0]
        if groups:
            ref_logits, ref_present = reference_shared_step(model, ids, positions, mask, [t.to(torch_dtype) for t in past], groups, bias)
        else:
            ref_logits, ref_present = reference_step(model, ids, positions, mask, [t.to(torch_dtype) for t in past], None if not bias.any() else bias)
        return got, ref_logits[:, -got.shape[1]:], ref_present  # a --logits last engine returns the final position only

    empty = _past(g, groups)
    ids = torch.randint(0, g.vocab_size, (1, prompt_len), generator=gen)
    got, ref, present = run(ids, empty, torch.zeros(1, g.num_layers, g.num_heads, prompt_len))
    prefill = _rel_err(got, ref)
    nxt = torch.randint(0, g.vocab_size, (1, 1), generator=gen)
    bias = torch.randn(1, g.num_layers, g.num_heads, prompt_len + 1, generator=gen)
    got, ref, _ = run(nxt, [t.float() for t in present], bias)
    decode = _rel_err(got, ref)
    result = {"prefill_zero_bias_rel_err": prefill, "decode_steered_rel_err": decode, "tolerance": tol, "prompt_len": prompt_len}
    if groups:
        result["reference"] = "reference_shared_step"
    log.info("self-check: prefill %.2e, steered decode %.2e (tolerance %.0e)", prefill, decode, tol)
    if not (prefill <= tol and decode <= tol):
        cause = ("the weight quantization error is beyond its tolerance: try int8 or a smaller --weight-block" if tolerance is not None
                 else "this is a steerc bug: rerun with --debug and report it")
        raise VerificationError(f"{what} disagrees with the eager model (prefill {prefill:.2e}, steered decode {decode:.2e}, tolerance {tol:.0e}); {cause}")
    return result


def _prefill_inputs(g: DecoderGeometry, dtype: str, prompt_len: int, seed: int, groups):
    """``(generator, ids, positions, mask, empty past)`` of a random one-row prefill; the generator
    continues the seeded stream (for a bias drawn after the ids)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, g.vocab_size, (1, prompt_len), generator=gen)
    positions = torch.arange(prompt_len).unsqueeze(0)
    mask = torch.ones(1, prompt_len, dtype=torch.long)
    return gen, ids, positions, mask, _past(g, groups, {"fp32": torch.float32, "fp16": torch.float16}[dtype])


def _feed(inputs: list[TensorSpec], dtype: str, ids, positions, mask, past, bias: np.ndarray) -> dict:
    """The session feed of those inputs (KV in the engine's dtype)."""
    np_dtype = {"fp32": np.float32, "fp16": np.float16}[dtype]
    values = [ids.numpy(), positions.numpy(), mask.numpy(), *[t.numpy().astype(np_dtype) for t in past], bias]
    return dict(zip([s.name for s in inputs], values))


def importance_check(session, model, g: DecoderGeometry, inputs: list[TensorSpec], dtype: str, prompt_len: int = 8, seed: int = 1, groups=(), tolerance: float | None = None) -> dict:
    """The analysis graph's ``attn_importance`` against :func:`steerc.reference.reference_importance`
    on a steered prefill (absolute error; each value is a sum of at most ``prompt_len`` probabilities)."""
    tol = tolerance if tolerance is not None else TOLERANCE[dtype]
    gen, ids, positions, mask, past = _prefill_inputs(g, dtype, prompt_len, seed, groups)
    bias = torch.randn(1, g.num_layers, g.num_heads, prompt_len, generator=gen)
    got = session.run(["attn_importance"], _feed(inputs, dtype, ids, positions, mask, past, bias.numpy()))[0]
    ref = reference_importance(model, ids, positions, mask, past, bias, groups=groups).float().numpy()
    err = float(np.abs(got - ref).max())
    log.info("self-check: attn_importance %.2e (tolerance %.0e)", err, tol)
    if not err <= tol * prompt_len:
        raise VerificationError(f"the analysis graph's attn_importance disagrees with the eager model (max abs error {err:.2e}); this is a steerc bug: rerun with --debug and report it")
    return {"attn_importance_abs_err": err, "tolerance": tol * prompt_len}


def queries_check(session, model, g: DecoderGeometry, inputs: list[TensorSpec], dtype: str, prompt_len: int = 8, seed: int = 2, groups=(), tolerance: float | None = None) -> dict:
    """The analysis graph's ``attn_queries`` against :func:`steerc.reference.reference_queries`
    on a prefill (error relative to the largest query component). Shared-attention engines are
    not checked here (their layers see shared probabilities; ``attn_importance`` is checked
    against the sharing reference)."""
    tol = tolerance if tolerance is not None else TOLERANCE[dtype]
    if groups:
        return {"skipped": "shared attention: attn_queries has no eager reference; attn_importance is checked against reference_shared_step's sharing"}
    _, ids, positions, mask, past = _prefill_inputs(g, dtype, prompt_len, seed, groups)
    bias = np.zeros((1, g.num_layers, g.num_heads, prompt_len), np.float32)
    got = session.run(["attn_queries"], _feed(inputs, dtype, ids, positions, mask, past, bias))[0]
    ref = reference_queries(model, ids, positions, mask, past).float().numpy()
    err = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-6))
    log.info("self-check: attn_queries %.2e (relative)", err)
    if not err <= tol:
        raise VerificationError(f"the analysis graph's attn_queries disagree with the eager model (relative error {err:.2e}); this is a steerc bug: rerun with --debug and report it")
    return {"attn_queries_rel_err": err, "tolerance": tol}


def selector_check(session, analysis_session, g: DecoderGeometry, inputs: list[TensorSpec], dtype: str, layers: list[int], prompt_len: int = 8,
                   query_len: int = 3, seed: int = 3) -> dict:
    """The selector graph's ``selector_scores`` against the analysis graph's ``attn_importance[:, layers]``
    (``layers``: the selector graph's score layers; the analysis graph was checked against the eager
    model just before): a prefill of ``prompt_len`` tokens through the
    analysis graph, then ``query_len`` more over its KV through both, unsteered as selection runs
    (absolute error; the two run the same layers on the same weights, so they agree to float rounding)."""
    tol = TOLERANCE[dtype]
    gen, ids, positions, mask, past = _prefill_inputs(g, dtype, prompt_len, seed, ())
    names = [s.name for s in inputs]
    zero = np.zeros((1, g.num_layers, g.num_heads, prompt_len), np.float32)
    present = analysis_session.run(_present_names(inputs), _feed(inputs, dtype, ids, positions, mask, past, zero))
    query = torch.randint(0, g.vocab_size, (1, query_len), generator=gen)
    total = prompt_len + query_len
    bias = np.zeros((1, g.num_layers, g.num_heads, total), np.float32)
    feed = dict(zip(names, [query.numpy(), np.arange(prompt_len, total)[None], np.ones((1, total), np.int64), *present, bias]))
    want = analysis_session.run(["attn_importance"], feed)[0][:, list(layers)]
    wanted_inputs = {i.name for i in session.get_inputs()}
    got = session.run(["selector_scores"], {k: v for k, v in feed.items() if k in wanted_inputs})[0]
    err = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    log.info("self-check: selector_scores %.2e against the analysis graph (tolerance %.0e)", err, tol)
    if not err <= tol:
        raise VerificationError(f"the selector graph's scores {list(got.shape)} disagree with the analysis graph's attn_importance[:, {list(layers)}] "
                                f"{list(want.shape)} (max abs error {err:.2e}); this is a steerc bug: rerun with --debug and report it")
    return {"selector_scores_abs_err": err, "tolerance": tol, "layers": list(layers)}


def _present_names(inputs: list[TensorSpec]) -> list[str]:
    """The present KV outputs matching the past KV inputs ``past_key_values.{i}.key|value`` -> ``present.{i}.key|value``."""
    return [s.name.replace("past_key_values.", "present.") for s in inputs if s.name.startswith("past_key_values.")]
