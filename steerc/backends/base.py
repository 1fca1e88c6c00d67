"""The backend contract: what ``steerc compile --backend NAME`` builds and what ``--backend NAME`` runs.

A backend turns the rewritten step program (:class:`~steerc.build.steerable.SteerableProgram`)
into files in the engine folder (:meth:`Backend.build`, which returns the backend's manifest
entry) and opens a session over them at run time (:meth:`Backend.open_session`, with ONNX
Runtime's ``run(output_names, feed)``). :meth:`Backend.available` says, without raising, why
the backend cannot be used here and what to install. Backends are listed by name in
:mod:`steerc.backends` (the registry) and imported only when chosen.

The ONNX backend is the engine's own form: every compile writes it (the self-check, the
analysis graph and the steering methods run on it). Another backend builds a compiled form of
the same program beside it, recorded under the manifest's ``backends[name]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["Backend"]


class Backend(ABC):
    """One way to build and run an engine's step graph (see the module doc).

    Class attributes: ``name`` (the registry name, also the manifest's ``backends`` key),
    ``devices`` it builds and runs for, ``device_note`` (why, when that is not every device),
    ``onnx_step_graph`` (it runs the engine's ``model.onnx`` on ONNX Runtime: quantized weights,
    in-place KV buffers and shared session weights need that) and ``stage`` (the compile stage
    that runs :meth:`build`; None for the ONNX backend, built in the ``export`` stage)."""

    name: ClassVar[str]
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    device_note: ClassVar[str] = ""
    onnx_step_graph: ClassVar[bool] = False
    stage: ClassVar[str | None] = None

    def available(self, device: str) -> str | None:
        """None when this backend can build for ``device`` here, else one line: why not and what to install."""
        return None

    def check_settings(self, settings) -> None:
        """Raise ValueError when ``settings`` (a CompileSettings) ask for what this backend cannot build."""
        if settings.device not in self.devices:
            raise ValueError(f"backend '{self.name}' {self.device_note}: pass --device {self.devices[0]}")

    @abstractmethod
    def build(self, program, folder: Path, settings) -> dict[str, Any]:
        """Write this backend's files for ``program`` into ``folder``; returns its manifest entry."""

    @abstractmethod
    def open_session(self, folder: Path, manifest: dict, device: str, threads: int | None = None, *, weights=None, shared_arena: bool = False):
        """A session over the step graph this backend built in ``folder`` (``run(output_names, feed)``).
        ``weights`` / ``shared_arena``: ONNX Runtime's memory sharing (other backends ignore them)."""
