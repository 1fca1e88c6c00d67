"""TensorRT shape profiles (optimization profiles) of an engine's step graph, and the ``trtexec`` command line.

A TensorRT engine with dynamic dims needs, per profile, a min / opt / max shape for every
input. steerc's step graph has four dynamic dims (``batch_size``, ``sequence_length``,
``past_sequence_length``, ``total_sequence_length = past + new``), so two profiles cover it:

* ``prefill``: many new tokens, with or without a cache before them (the runtime prefills long
  prompts in chunks over the cache so far); ``S`` in ``[1, max_seq_len]``, ``P`` in ``[0, max_seq_len - 1]``.
* ``decode``: one new token over a cache; ``S = 1``, ``P`` in ``[1, max_seq_len - 1]``.

``steer_bias [B, L, H, P+S]`` follows ``total_sequence_length``. A profile is a box over dims;
TensorRT does not know that ``P + S <= max_seq_len``, which the runtime enforces
(``ContextTooLongError``).
"""

from __future__ import annotations

__all__ = ["shape_profiles", "trtexec_command", "PREFILL_OPT"]

PREFILL_OPT = 512  # the runtime's prefill chunk (runtime/generate.py DEFAULT_PREFILL_CHUNK): the shape kernels are tuned for


def _dims(max_batch: int, max_seq_len: int) -> dict[str, dict[str, list[int]]]:
    opt_s = min(PREFILL_OPT, max_seq_len)
    opt_p = max_seq_len // 4
    return {
        "prefill": {
            "batch_size": [1, 1, max_batch],
            "sequence_length": [1, opt_s, max_seq_len],
            "past_sequence_length": [0, 0, max_seq_len - 1],
            "total_sequence_length": [1, opt_s, max_seq_len],
        },
        "decode": {
            "batch_size": [1, 1, max_batch],
            "sequence_length": [1, 1, 1],
            "past_sequence_length": [1, opt_p, max_seq_len - 1],
            "total_sequence_length": [2, opt_p + 1, max_seq_len],
        },
    }


def shape_profiles(inputs, max_batch: int, max_seq_len: int) -> list[dict]:
    """``[{"name", "dims": {dim: [min, opt, max]}, "shapes": {input: {"min", "opt", "max"}}}]``
    for the contract ``inputs`` (TensorSpecs or their dicts)."""
    profiles = []
    for name, dims in _dims(max_batch, max_seq_len).items():
        shapes = {}
        for spec in inputs:
            spec_name, spec_dims = (spec["name"], spec["dims"]) if isinstance(spec, dict) else (spec.name, spec.dims)
            shapes[spec_name] = {
                which: [dims[d][k] if isinstance(d, str) else int(d) for d in spec_dims] for k, which in enumerate(("min", "opt", "max"))
            }
        profiles.append({"name": name, "dims": dims, "shapes": shapes})
    return profiles


def trtexec_command(onnx_file: str, profiles: list[dict], plan_file: str = "model.plan") -> str:
    """A ``trtexec`` line that builds ``plan_file`` with every profile (one ``--minShapes /
    --optShapes / --maxShapes`` triple per profile, in order). ``--stronglyTyped`` keeps the
    graph's own dtypes (fp16 weights, fp32 ``steer_bias`` cast inside), as exported."""
    parts = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={plan_file}", "--stronglyTyped"]
    for profile in profiles:
        for which, flag in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
            shapes = ",".join(f"{name}:{'x'.join(str(d) for d in s[which])}" for name, s in profile["shapes"].items())
            parts.append(f"{flag}={shapes}")
    return " \\\n  ".join(parts)
