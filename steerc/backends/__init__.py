"""Backends: what builds an engine's step graph at compile time and runs it at run time.

:data:`BACKENDS` is the registry: a name, the ``module:Class`` of its
:class:`~steerc.backends.base.Backend` (imported only when chosen, so optional packages such as
torch-tensorrt stay optional), a one-line summary and the old names it still accepts. Every
``--backend`` choice, settings check and error message is derived from it; adding a backend is
one module with a :class:`~steerc.backends.base.Backend` subclass plus one entry here.

* ``onnx`` (:mod:`~steerc.backends.onnx`): ONNX Runtime, CPU or CUDA; every engine folder has it;
* ``aoti`` (:mod:`~steerc.backends.aoti`): an AOTInductor package of the same program, CPU or CUDA;
* ``tensorrt`` (:mod:`~steerc.backends.tensorrt`): a TensorRT plan built by torch-tensorrt (CUDA);
  the package also holds the TensorRT parser-rules checker and shape profiles of
  ``--target tensorrt``.

:mod:`~steerc.backends.torch_session` puts the compiled backends' torch step functions behind
ONNX Runtime's ``run`` interface. The ONNX-level rewrites (quantized weights, in-place KV, the
derived analysis graph, the TensorRT-ready graph) are passes: :mod:`steerc.passes.onnx`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from steerc.lazy_import import import_path

if TYPE_CHECKING:
    from steerc.backends.base import Backend

__all__ = ["BACKENDS", "ENGINE_BACKEND", "BackendEntry", "backend_choices", "backend_help", "backend_names", "canonical_name", "get_backend"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendEntry:
    """A registry line: where the backend's class is (``module:Class``), what it builds and runs
    (``summary``, for ``--help``; ``label``, how reports name it) and the old names it accepts."""

    path: str
    summary: str
    label: str
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        module, _, cls = self.path.partition(":")
        if not module or not cls:
            raise ValueError(f"a backend path is 'module:Class', got {self.path!r}")


BACKENDS: dict[str, BackendEntry] = {
    "onnx": BackendEntry("steerc.backends.onnx.backend:OnnxBackend", "ONNX Runtime (model.onnx, in every engine folder)", "ONNX Runtime"),
    "aoti": BackendEntry("steerc.backends.aoti:AotiBackend", "an AOTInductor package (model.pt2), CPU or CUDA", "AOTInductor"),
    "tensorrt": BackendEntry("steerc.backends.tensorrt.backend:TensorRTBackend", "a TensorRT plan (model.plan) built by torch-tensorrt, CUDA",
                             "TensorRT plan", aliases=("torch-tensorrt",)),
}
ENGINE_BACKEND = "onnx"  # the form every engine folder is written in (the self-check and the analysis graph run on it)

_loaded: dict[str, Backend] = {}
_warned: set[str] = set()


def backend_names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def backend_choices() -> tuple[str, ...]:
    """Every name ``--backend`` accepts: the registry's, then the old aliases."""
    return (*BACKENDS, *(alias for entry in BACKENDS.values() for alias in entry.aliases))


def backend_help(what: str) -> str:
    """``--backend`` help: ``what`` followed by each backend's summary."""
    return f"{what}: " + "; ".join(f"{name}: {entry.summary}" for name, entry in BACKENDS.items())


def canonical_name(name: str) -> str:
    """``name`` as the registry spells it; an old alias is accepted with one deprecation warning
    per process. Raises ValueError for an unknown name."""
    if isinstance(name, str) and name in BACKENDS:
        return name
    for canonical, entry in BACKENDS.items():
        if isinstance(name, str) and name in entry.aliases:
            if name not in _warned:
                _warned.add(name)
                log.warning("backend '%s' is deprecated: it is called '%s' now (compile and run alike)", name, canonical)
            return canonical
    raise ValueError(f"backend must be one of {backend_names()}, got {name!r}")


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (or an alias of it), its module imported on first use."""
    name = canonical_name(name)
    if name not in _loaded:
        backend = import_path(BACKENDS[name].path)()
        if backend.name != name:
            raise ValueError(f"registry entry {name!r} points at {BACKENDS[name].path}, whose name is {backend.name!r}")
        _loaded[name] = backend
    return _loaded[name]
