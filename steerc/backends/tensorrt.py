"""TensorRT backend: the rewritten ExportedProgram compiled into a serialized TensorRT plan.

``torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine`` converts the same
program the ONNX backend exports (every attention site already takes ``steer_bias``) into
``model.plan``: plain TensorRT bytes that ``tensorrt.Runtime`` (and Triton's ``tensorrt_plan``
backend) load without torch or torch-tensorrt.

Two choices matter:

* ``attn_bias_is_causal=False``. torch-tensorrt's default (``True``, the
  ``force_causal_efficient_attention`` lowering) replaces an attention bias by ``is_causal``
  whenever the query and key lengths agree, i.e. in every fresh prefill (``P = 0``), which
  would silently drop ``steer_bias`` there.
* One optimization profile. torch-tensorrt builds a single profile (one min / opt / max range
  per input), so the plan's range is the union of steerc's ``prefill`` and ``decode`` profiles
  (:func:`plan_profile`), with the decode shape (``S = 1``) as the one kernels are tuned for:
  per-token decode is what a generation spends its time in.

torch-tensorrt 2.13 builds strongly typed networks: the plan computes in the program's own
dtypes (the model was loaded in ``--dtype``; ``steer_bias`` stays float32 and is cast inside),
so there is no separate precision flag; an fp32 plan is built with TF32 off (``disable_tf32``).

The runtime side (:class:`TensorRTStep`) needs only the ``tensorrt`` package and CUDA PyTorch:
it binds torch CUDA tensors to the plan's I/O tensors and runs it on torch's current stream,
so :func:`~steerc.backends.torch_session.greedy_decode_on_device` keeps the KV cache on the
GPU between steps. Everything that imports ``tensorrt`` or ``torch_tensorrt`` does so inside a
function: steerc imports and runs without them.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path

from steerc.errors import EngineError, MissingDependencyError

__all__ = ["PLAN_FILE", "require_tensorrt", "plan_profile", "build_tensorrt_plan", "TensorRTStep", "tensorrt_session"]

log = logging.getLogger(__name__)

PLAN_FILE = "model.plan"

INSTALL_HINT = ("--backend torch-tensorrt needs torch-tensorrt 2.13 and TensorRT 11 on a machine with an NVIDIA GPU and driver: "
                "pip install 'steerc[tensorrt]' there; on this machine use --backend aoti or --target tensorrt (an ONNX graph + trtexec command)")

_TORCH_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "int64": "int64", "int32": "int32", "bool": "bool"}
_SETTINGS_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _unavailable(modules: tuple[str, ...]) -> str | None:
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
    reason = _unavailable(("torch_tensorrt", "tensorrt"))
    if reason:
        raise MissingDependencyError(f"{INSTALL_HINT} (here {reason})")
    return importlib.import_module("torch_tensorrt"), importlib.import_module("tensorrt")


def _require_runtime():
    """The ``tensorrt`` module for running a plan (torch-tensorrt is not needed to run one)."""
    reason = _unavailable(("tensorrt",))
    if reason:
        raise MissingDependencyError("running a TensorRT plan needs the 'tensorrt' package (TensorRT 11) and CUDA PyTorch on a machine with an NVIDIA GPU: "
                                     f"pip install 'steerc[tensorrt]' there, or run this engine with --backend onnx (here {reason})")
    return importlib.import_module("tensorrt")


def plan_profile(inputs, max_batch: int, max_seq_len: int) -> dict:
    """The one optimization profile of a plan: per dimension the smallest min and the largest
    max over steerc's ``prefill`` and ``decode`` profiles (:mod:`steerc.tensorrt.profiles`), and
    the decode profile's opt. Same layout as those profiles (``name``, ``dims``, ``shapes``)."""
    from steerc.tensorrt.profiles import optimization_profiles

    profiles = {p["name"]: p for p in optimization_profiles(inputs, max_batch, max_seq_len)}
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
    profile = plan_profile(inputs, settings.max_batch, settings.max_seq_len)
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


def _bind(engine_names: list[str], contract: list[str], what: str) -> list[str]:
    """The plan's tensor name for each contract name, in contract order: by name when the plan
    uses the contract's names (``.`` may read ``_``), else by position (torch-tensorrt names
    inputs after the program's placeholders, ``past_key_values_0``.., and outputs ``output0``..)."""
    if sorted(engine_names) == sorted(contract):
        return list(contract)
    normal = {n.replace(".", "_"): n for n in engine_names}
    if all(c.replace(".", "_") in normal for c in contract) and len(normal) == len(contract):
        return [normal[c.replace(".", "_")] for c in contract]
    if len(engine_names) != len(contract):
        raise EngineError(f"the TensorRT plan has {len(engine_names)} {what} ({engine_names[:6]}...), the engine contract {len(contract)}; "
                          "the plan does not belong to this engine: recompile it with --backend torch-tensorrt --force")
    if what == "outputs":  # output0, output1, ..: numeric order
        def key(name: str):
            digits = "".join(ch for ch in name if ch.isdigit())
            return int(digits) if digits else -1
        return sorted(engine_names, key=key)
    return list(engine_names)


class TensorRTStep:
    """A plan as a step function ``(ids, positions, mask, kv, bias) -> (logits, *present)`` over
    torch CUDA tensors (see :mod:`steerc.backends.torch_session`).

    ``input_names`` / ``input_dtypes`` / ``output_names`` are the engine contract's, in order.
    One execution context; calls run on torch's current CUDA stream and return without
    synchronizing (torch orders later work on the same stream after them)."""

    def __init__(self, plan_path: Path, input_names, input_dtypes, output_names):
        trt = _require_runtime()
        import torch

        self._torch = torch
        self._trt = trt
        self.plan_path = Path(plan_path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        try:
            data = self.plan_path.read_bytes()
        except OSError as exc:
            raise EngineError(f"cannot read the TensorRT plan {self.plan_path} ({exc}); recompile the engine with --backend torch-tensorrt --force") from None
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise EngineError(f"{self.plan_path} is not a TensorRT plan this TensorRT ({getattr(trt, '__version__', '?')}) on this GPU can load "
                              "(plans are tied to the TensorRT version and GPU they were built with); recompile the engine here with --backend torch-tensorrt --force")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError(f"TensorRT could not create an execution context for {self.plan_path} (out of GPU memory?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        trt_in = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        trt_out = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self._inputs = _bind(trt_in, self.input_names, "inputs")
        self._outputs = _bind(trt_out, self.output_names, "outputs")
        self._in_dtypes = [self._torch_dtype(self.engine.get_tensor_dtype(n)) for n in self._inputs]
        self._out_dtypes = [self._torch_dtype(self.engine.get_tensor_dtype(n)) for n in self._outputs]
        for name, want, got in zip(self.input_names, input_dtypes, self._in_dtypes):
            if (want, got) == ("int64", torch.int32):  # a plan may take token ids as int32: cast per call
                continue
            if str(got).removeprefix("torch.") != want:
                raise EngineError(f"the TensorRT plan takes {name} as {got}, the engine contract says {want}; recompile the plan with --backend torch-tensorrt --force")
        if self.engine.num_optimization_profiles > 1:
            self.context.set_optimization_profile_async(0, torch.cuda.current_stream().cuda_stream)
        self._scratch = torch.empty(16, dtype=torch.uint8, device="cuda")  # a valid address for empty tensors (P = 0)

    def _torch_dtype(self, trt_dtype):
        trt, torch = self._trt, self._torch
        table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8, trt.bool: torch.bool}
        for name, dtype in (("bfloat16", torch.bfloat16), ("int64", torch.int64), ("uint8", torch.uint8)):
            if hasattr(trt, name):
                table[getattr(trt, name)] = dtype
        if trt_dtype not in table:
            raise EngineError(f"the TensorRT plan uses tensor type {trt_dtype}, which steerc cannot bind")
        return table[trt_dtype]

    def _address(self, tensor) -> int:
        return tensor.data_ptr() if tensor.numel() else self._scratch.data_ptr()

    def __call__(self, ids, positions, mask, kv, bias):
        torch = self._torch
        tensors = [ids, positions, mask, *kv, bias]
        if len(tensors) != len(self._inputs):
            raise ValueError(f"TensorRT plan {self.plan_path.name}: {len(tensors)} inputs given, it takes {len(self._inputs)} ({self.input_names[0]} .. {self.input_names[-1]})")
        keep = []
        for name, trt_name, want, t in zip(self.input_names, self._inputs, self._in_dtypes, tensors):
            if not isinstance(t, torch.Tensor) or t.device.type != "cuda":
                raise ValueError(f"TensorRT plan input {name} must be a torch CUDA tensor, got {type(t).__name__} on {getattr(t, 'device', 'the host')}")
            if t.dtype == torch.int64 and want == torch.int32:
                t = t.to(torch.int32)
            if t.dtype != want:
                raise TypeError(f"TensorRT plan input {name} must be {want}, got {t.dtype}" + (" (the KV cache is in the engine's --dtype)" if name.startswith("past_key_values.") else ""))
            t = t.contiguous()
            keep.append(t)
            if not self.context.set_input_shape(trt_name, tuple(t.shape)):
                raise ValueError(f"TensorRT plan input {name}: shape {tuple(t.shape)} is outside the plan's profile (see the manifest's backends.tensorrt.profiles)")
            self.context.set_tensor_address(trt_name, self._address(t))
        outputs = []
        for name, trt_name, dtype in zip(self.output_names, self._outputs, self._out_dtypes):
            shape = tuple(self.context.get_tensor_shape(trt_name))
            if any(d < 0 for d in shape):
                raise EngineError(f"TensorRT plan output {name} has an unresolved shape {shape} for these inputs")
            out = torch.empty(shape, dtype=dtype, device=keep[0].device)
            self.context.set_tensor_address(trt_name, self._address(out))
            outputs.append(out)
        stream = torch.cuda.current_stream(keep[0].device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineError(f"TensorRT failed to run {self.plan_path.name} (see the TensorRT log above)")
        return tuple(outputs)


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


def tensorrt_session(folder: Path, manifest: dict, device: str):
    """A :class:`~steerc.backends.torch_session.TorchStepSession` over the engine's TensorRT plan."""
    from steerc.backends.torch_session import TorchStepSession

    folder = Path(folder)
    entry = (manifest.get("backends") or {}).get("tensorrt")
    if not entry:
        raise EngineError(f"engine {folder} has no TensorRT plan; build one on a machine with an NVIDIA GPU and torch-tensorrt "
                          f"(pip install 'steerc[tensorrt]'): `steerc compile MODEL -o {folder} --backend torch-tensorrt --device cuda --force`, "
                          "or run this engine with --backend onnx")
    if device != "cuda":
        raise EngineError(f"engine {folder}'s TensorRT plan runs on an NVIDIA GPU only: run with --device cuda (or --backend onnx on {device})")
    path = folder / entry.get("plan", PLAN_FILE)
    if not path.is_file():
        raise EngineError(f"engine {folder} lists a TensorRT plan but {path.name} is missing; recompile it with --backend torch-tensorrt --device cuda --force")
    step = TensorRTStep(path, [s["name"] for s in manifest["inputs"]], [s["dtype"] for s in manifest["inputs"]], [s["name"] for s in manifest["outputs"]])
    return TorchStepSession(step, step.input_names, step.output_names, device="cuda", name=f"TensorRT plan {path.name}")
