"""``--backend aoti``: the rewritten ExportedProgram compiled ahead of time into a package.

``torch._inductor.aoti_compile_and_package`` turns the same program the ONNX backend exports
(every attention site already takes ``steer_bias``) into ``model.pt2``: generated C++ (CPU) or
Triton kernels (CUDA) plus the weights, loaded with ``torch._inductor.aoti_load_package`` and
no Python model code. It is the compiled path for a machine with CUDA PyTorch and no TensorRT.

Shapes: the package keeps the program's dynamic dims (batch, new tokens, past length) and
their ranges, so one package serves prefill (``P = 0``, ``S`` = prompt chunk) and decode
(``S = 1``). A package is built for one device; its inputs must be dense (contiguous), which
:class:`~steerc.backends.torch_session.TorchStepSession` ensures.
"""

from __future__ import annotations

import logging
from pathlib import Path

from steerc.backends.base import Backend
from steerc.errors import EngineError, MissingDependencyError

__all__ = ["AOTI_FILE", "AotiBackend", "build_aoti_package", "load_aoti_step", "aoti_session", "cuda_missing", "require_cuda"]

log = logging.getLogger(__name__)

AOTI_FILE = "model.pt2"


def _example_args(inputs, geometry, dtype, device: str):
    """Traced-shape inputs (batch 2, past 3, new 5) for the contract ``inputs`` (KV tensors as
    listed: shared-attention engines have fewer keys), on ``device``."""
    import torch

    from steerc.capture import example_inputs

    ids, positions, mask, _ = example_inputs(geometry, dtype)
    B, past = ids.shape[0], mask.shape[1] - ids.shape[1]
    gen = torch.Generator().manual_seed(0)
    kv = [torch.randn(B, geometry.num_kv_heads, past, geometry.head_dim, generator=gen).to(dtype)
          for s in inputs if s.name.startswith("past_key_values.")]
    bias = torch.zeros(B, geometry.num_layers, geometry.num_heads, mask.shape[1])  # [B, L, H, P+S]
    return (ids.to(device), positions.to(device), mask.to(device), [t.to(device) for t in kv], bias.to(device))


def cuda_missing(what: str = "--backend aoti --device cuda") -> str | None:
    """Why ``what`` cannot run on CUDA here (this torch sees no CUDA device), or None."""
    import torch

    if torch.cuda.is_available():
        return None
    return f"{what} needs CUDA PyTorch on a machine with an NVIDIA GPU (this torch {torch.__version__} sees none); use --device cpu here"


def require_cuda(what: str = "--backend aoti --device cuda") -> None:
    """Refuse CUDA work where this torch has no CUDA (at compile: before minutes of loading)."""
    reason = cuda_missing(what)
    if reason:
        raise MissingDependencyError(reason)


def build_aoti_package(program, folder: Path, geometry, inputs, device: str = "cpu") -> dict:
    """Compile ``program`` (user inputs as the contract ``inputs``) into ``folder/model.pt2``
    for ``device``; returns the manifest entry."""
    import time

    import torch

    if device == "cuda":
        require_cuda()
    import torch._inductor

    dtype = getattr(torch, next(s.dtype for s in inputs if s.name.startswith("past_key_values.")))  # float32 / float16 / bfloat16
    args = _example_args(inputs, geometry, dtype, device)
    if device == "cuda":
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, "cuda")
    program.example_inputs = (args, {})  # aoti_compile_and_package requires them (rebuilt programs lose them)
    path = Path(folder) / AOTI_FILE
    start = time.perf_counter()
    torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    seconds = time.perf_counter() - start
    log.info("AOTInductor package %s built for %s in %.1f s", path, device, seconds)
    return {"package": AOTI_FILE, "device": device, "torch": torch.__version__, "compile_seconds": round(seconds, 1)}


def load_aoti_step(path: Path, device: str = "cpu", threads: int | None = None):
    """The package's step function ``(ids, positions, mask, kv, bias) -> (logits, *present)``."""
    import torch
    import torch._inductor

    if device == "cuda":
        require_cuda("this AOTInductor package, built for CUDA,")
    if threads:
        torch.set_num_threads(threads)
    try:
        runner = torch._inductor.aoti_load_package(str(path))
    except Exception as exc:  # a truncated or foreign file; the manifest's sha256 check normally catches it first
        raise EngineError(f"{path} is not a loadable AOTInductor package ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                          "recompile the engine with --backend aoti --force") from None
    return runner  # called as runner(ids, positions, mask, kv, bias)


def aoti_session(folder: Path, manifest: dict, device: str, threads: int | None = None):
    """A :class:`TorchStepSession` over the engine's AOTInductor package."""
    from steerc.backends.torch_session import TorchStepSession

    entry = (manifest.get("backends") or {}).get("aoti")
    if not entry:
        raise EngineError(f"engine {folder} has no AOTInductor package; compile it with `steerc compile ... --backend aoti` (or run with --backend onnx)")
    if entry["device"] != device:
        raise EngineError(f"engine {folder}'s AOTInductor package was built for {entry['device']}, not {device}: run with --device {entry['device']}, "
                          f"or recompile with --backend aoti --device {device}")
    step = load_aoti_step(Path(folder) / entry["package"], device, threads)
    names = [s["name"] for s in manifest["inputs"]]
    outputs = [s["name"] for s in manifest["outputs"]]
    return TorchStepSession(step, names, outputs, device=device, name=f"AOTInductor package {entry['package']}")


class AotiBackend(Backend):
    """``--backend aoti``: ``model.pt2`` for ``--device`` beside the ONNX engine (see the module doc)."""

    name = "aoti"
    stage = "aoti"

    def available(self, device: str) -> str | None:
        return cuda_missing() if device == "cuda" else None

    def build(self, program, folder: Path, settings) -> dict:
        return build_aoti_package(program.program, folder, program.geometry, program.inputs, settings.device)

    def open_session(self, folder: Path, manifest: dict, device: str, threads: int | None = None, *, weights=None, shared_arena: bool = False):
        return aoti_session(folder, manifest, device, threads)
