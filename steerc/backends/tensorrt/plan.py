"""The TensorRT plan builder: the rewritten ExportedProgram compiled into a serialized TensorRT plan.

``torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine`` converts the same
program the ONNX backend exports (every attention site already takes ``steer_bias``) into
``model.plan``: plain TensorRT bytes that ``tensorrt.Runtime`` (and Triton's ``tensorrt_plan``
backend) load without torch or torch-tensorrt.

Two choices matter:

* ``attn_bias_is_causal=False``. torch-tensorrt's default (``True``, the
  ``force_causal_efficient_attention`` lowering) replaces an attention bias by ``is_causal``
  whenever the query and key lengths agree, i.e. in every fresh prefill (``P = 0``), which
  would silently drop ``steer_bias`` there.
* One shape profile. torch-tensorrt builds a single optimization profile (one min / opt / max range
  per input), so the plan's range is the union of steerc's ``prefill`` and ``decode`` profiles
  (:func:`plan_shape_profile`), with the decode shape (``S = 1``) as the one kernels are tuned for:
  per-token decode is what a generation spends its time in.

torch-tensorrt 2.13 builds strongly typed networks: the plan computes in the program's own
dtypes (the model was loaded in ``--dtype``; ``steer_bias`` stays float32 and is cast inside),
so there is no separate precision flag; an fp32 plan is built with TF32 off (``disable_tf32``).

The plan runs on :mod:`steerc.backends.tensorrt.runner`. ``torch_tensorrt`` and ``tensorrt`` are imported
inside functions: steerc imports and runs without them.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path

from steerc.errors import EngineError, MissingDependencyError

__all__ = ["PLAN_FILE", "INSTALL_HINT", "unavailable", "require_tensorrt", "plan_shape_profile", "build_tensorrt_plan"]

log = logging.getLogger(__name__)

PLAN_FILE = "model.plan"

INSTALL_HINT = ("--backend tensorrt needs torch-tensorrt 2.13 and TensorRT 11 on a machine with an NVIDIA GPU and driver: "
                "pip install 'steerc[tensorrt]' there; on this machine use --backend aoti or --target tensorrt (an ONNX graph + trtexec command)")

_TORCH_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "int64": "int64", "int32": "int32", "bool": "bool"}
_SETTINGS_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def unavailable(modules: tuple[str, ...]) -> str | None:
    """Why ``modules`` cannot be used with CUDA here, or None. Never raises."""
    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                return f"the '{module}' package is not installed"
        except (ImportError, ValueError):  # a broken install, or a module blocked in sys.modules
            return f"the '{module}' package is not importable"
    try:
        import torch

        if not torch.cuda.is_available():
            return f"this torch ({torch.__version__}) sees no CUDA device"
    except Exception as exc:  # pragma: no cover - a broken torch
        return f"torch cannot query CUDA ({type(exc).__name__})"
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, OSError (libnvinfer), RuntimeError (driver): all mean "not usable here"
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            return f"'{module}' does not load ({type(exc).__name__}: {first})"
    return None


def require_tensorrt():
    """``(torch_tensorrt, tensorrt)`` if both import and CUDA is available, else
    :class:`MissingDependencyError` with one line saying what to install and where."""
    reason = unavailable(("torch_tensorrt", "tensorrt"))
    if reason:
        raise MissingDependencyError(f"{INSTALL_HINT} (here {reason})")
    return importlib.import_module("torch_tensorrt"), importlib.import_module("tensorrt")


def plan_shape_profile(inputs, max_batch: int, max_seq_len: int) -> dict:
    """The one shape profile (TensorRT optimization profile) of a plan: per dimension the smallest min and the largest
    max over steerc's ``prefill`` and ``decode`` profiles (:func:`~steerc.backends.tensorrt.shape_profiles.shape_profiles`), and
    the decode profile's opt. Same layout as those profiles (``name``, ``dims``, ``shapes``)."""
    from steerc.backends.tensorrt.shape_profiles import shape_profiles

    profiles = {p["name"]: p for p in shape_profiles(inputs, max_batch, max_seq_len)}
    decode = profiles["decode"]
    dims = {}
    for dim, (_, opt, _) in decode["dims"].items():
        ranges = [p["dims"][dim] for p in profiles.values()]
        dims[dim] = [min(r[0] for r in ranges), opt, max(r[2] for r in ranges)]
    shapes = {}
    for spec in inputs:
        name, spec_dims = (spec["name"], spec["dims"]) if isinstance(spec, dict) else (spec.name, spec.dims)
        shapes[name] = {which: [dims[d][k] if isinstance(d, str) else int(d) for d in spec_dims] for k, which in enumerate(("min", "opt", "max"))}
    return {"name": "prefill+decode", "dims": dims, "shapes": shapes}


def _trt_inputs(inputs, profile: dict, torch_tensorrt):
    """``torch_tensorrt.Input``s in the program's argument structure: ``(ids, positions, mask,
    [kv...], steer_bias)``."""
    import torch

    specs = []
    for spec in inputs:
        shape = profile["shapes"][spec.name]
        dtype = getattr(torch, _TORCH_DTYPES[spec.dtype])
        specs.append(torch_tensorrt.Input(min_shape=shape["min"], opt_shape=shape["opt"], max_shape=shape["max"], dtype=dtype, name=spec.name))
    ids, positions, mask, *kv, bias = specs
    return [ids, positions, mask, kv, bias]


def build_tensorrt_plan(program, folder: Path, geometry, inputs, settings, outputs=None) -> dict:
    """Convert ``program`` (user inputs as the contract ``inputs``) into ``folder/model.plan``
    with one profile over ``settings.max_batch`` / ``settings.max_seq_len``; returns the
    manifest entry. The program's weights are moved to CUDA (in place, as
    ``torch.export.passes.move_to_device_pass`` does)."""
    import time

    torch_tensorrt, trt = require_tensorrt()
    import torch
    from torch.export.passes import move_to_device_pass

    kv_dtype = next((s.dtype for s in inputs if s.name.startswith("past_key_values.")), None)
    want = _SETTINGS_DTYPE[settings.dtype]
    if kv_dtype is not None and kv_dtype != want:
        raise EngineError(f"the captured program is {kv_dtype} but the settings ask for {settings.dtype}: TensorRT plans compute in the program's dtypes; "
                          "load the model in --dtype before capture")
    if not inputs or inputs[-1].name != "steer_bias" or inputs[-1].dtype != "float32":
        raise EngineError("the program's last input must be steer_bias (float32); was it captured with capture_steerable?")
    profile = plan_shape_profile(inputs, settings.max_batch, settings.max_seq_len)
    program = move_to_device_pass(program, "cuda")
    args = _trt_inputs(inputs, profile, torch_tensorrt)
    start = time.perf_counter()
    try:
        plan = torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine(
            program,
            arg_inputs=args,
            device=torch.device("cuda", torch.cuda.current_device()),
            attn_bias_is_causal=False,  # the default turns a prefill's bias (steer_bias included) into is_causal
            disable_tf32=settings.dtype == "fp32",  # an fp32 engine computes in fp32, as its ONNX twin and the reference do
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise EngineError(f"torch-tensorrt could not convert the step program ({type(exc).__name__}: {first}); rerun with --debug for details, "
                          "or compile with --backend aoti (AOTInductor) or --target tensorrt (ONNX + trtexec)") from exc
    seconds = time.perf_counter() - start
    path = Path(folder) / PLAN_FILE
    path.write_bytes(bytes(plan))
    log.info("TensorRT plan %s (%.1f MiB) built in %.1f s", path, path.stat().st_size / 2**20, seconds)
    entry = {
        "plan": PLAN_FILE,
        "device": "cuda",
        "precision": settings.dtype,
        "profiles": [profile],
        "torch_tensorrt": getattr(torch_tensorrt, "__version__", "unknown"),
        "tensorrt": getattr(trt, "__version__", "unknown"),
        "compile_seconds": round(seconds, 1),
        "attn_bias_is_causal": False,
    }
    try:  # the plan's own I/O names (torch-tensorrt names them after the program's placeholders / output0..), for Triton configs
        engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(bytes(plan))
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        entry["bindings"] = {"inputs": ins, "outputs": outs}
        entry.update(_plan_contract(inputs, outputs, ins, outs))
        del engine
    except Exception as exc:  # informative only
        log.warning("could not read the plan's I/O names back (%s)", exc)
    return entry


def _plan_contract(inputs, outputs, plan_inputs: list[str], plan_outputs: list[str]) -> dict:
    """The engine contract under the plan's own tensor names (``inputs`` / ``outputs`` spec
    dicts, what a Triton ``tensorrt_plan`` config must list), matched by position: inputs in
    the program's order, outputs ``output0, output1, ...`` in numeric order. Empty when the
    counts disagree (the Triton export then falls back to the contract's names)."""
    import re

    if outputs is None or len(plan_inputs) != len(inputs) or len(plan_outputs) != len(outputs):
        return {}
    ordered = sorted(plan_outputs, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])
    spec = lambda s, name: {**(s if isinstance(s, dict) else s.to_dict()), "name": name}  # noqa: E731
    return {"inputs": [spec(s, n) for s, n in zip(inputs, plan_inputs)], "outputs": [spec(s, n) for s, n in zip(outputs, ordered)]}
