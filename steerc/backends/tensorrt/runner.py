"""The TensorRT plan runner: a ``model.plan`` as a torch step function and a session.

The runtime side (:class:`TensorRTStep`) needs only the ``tensorrt`` package and CUDA PyTorch:
it binds torch CUDA tensors to the plan's I/O tensors and runs it on torch's current stream,
so :func:`~steerc.backends.torch_session.greedy_decode_on_device` keeps the KV cache on the
GPU between steps. Everything that imports ``tensorrt`` or ``torch_tensorrt`` does so inside a
function: steerc imports and runs without them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from steerc.backends.tensorrt.plan import PLAN_FILE, unavailable
from steerc.errors import EngineError, MissingDependencyError

__all__ = ["TensorRTStep", "tensorrt_session"]


def _require_runtime():
    """The ``tensorrt`` module for running a plan (torch-tensorrt is not needed to run one)."""
    reason = unavailable(("tensorrt",))
    if reason:
        raise MissingDependencyError("running a TensorRT plan needs the 'tensorrt' package (TensorRT 11) and CUDA PyTorch on a machine with an NVIDIA GPU: "
                                     f"pip install 'steerc[tensorrt]' there, or run this engine with --backend onnx (here {reason})")
    return importlib.import_module("tensorrt")


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
                          "the plan does not belong to this engine: recompile it with --backend tensorrt --force")
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
            raise EngineError(f"cannot read the TensorRT plan {self.plan_path} ({exc}); recompile the engine with --backend tensorrt --force") from None
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise EngineError(f"{self.plan_path} is not a TensorRT plan this TensorRT ({getattr(trt, '__version__', '?')}) on this GPU can load "
                              "(plans are tied to the TensorRT version and GPU they were built with); recompile the engine here with --backend tensorrt --force")
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
                raise EngineError(f"the TensorRT plan takes {name} as {got}, the engine contract says {want}; recompile the plan with --backend tensorrt --force")
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


def tensorrt_session(folder: Path, manifest: dict, device: str):
    """A :class:`~steerc.backends.torch_session.TorchStepSession` over the engine's TensorRT plan."""
    from steerc.backends.torch_session import TorchStepSession

    folder = Path(folder)
    entry = (manifest.get("backends") or {}).get("tensorrt")
    if not entry:
        raise EngineError(f"engine {folder} has no TensorRT plan; build one on a machine with an NVIDIA GPU and torch-tensorrt "
                          f"(pip install 'steerc[tensorrt]'): `steerc compile MODEL -o {folder} --backend tensorrt --device cuda --force`, "
                          "or run this engine with --backend onnx")
    if device != "cuda":
        raise EngineError(f"engine {folder}'s TensorRT plan runs on an NVIDIA GPU only: run with --device cuda (or --backend onnx on {device})")
    path = folder / entry.get("plan", PLAN_FILE)
    if not path.is_file():
        raise EngineError(f"engine {folder} lists a TensorRT plan but {path.name} is missing; recompile it with --backend tensorrt --device cuda --force")
    step = TensorRTStep(path, [s["name"] for s in manifest["inputs"]], [s["dtype"] for s in manifest["inputs"]], [s["name"] for s in manifest["outputs"]])
    return TorchStepSession(step, step.input_names, step.output_names, device="cuda", name=f"TensorRT plan {path.name}")
