"""Engine folders: build, manifest, verification."""

from steerc.engine.build import compile_engine
from steerc.engine.manifest import MANIFEST_FILE, read_manifest

__all__ = ["MANIFEST_FILE", "compile_engine", "read_manifest"]
