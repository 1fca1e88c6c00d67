"""The engine-folder format: ``steerc.json``, written by :mod:`steerc.build` and read by :mod:`steerc.runtime`.

Every file in the folder except the manifest itself is listed with its sha256; reading a
manifest checks its format version and, unless told not to, every hash, so a corrupt or
partial folder is refused before anything runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from steerc.atomic import write_text_atomic
from steerc.errors import EngineError
from steerc.user_files import UserFileError, read_json

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST_FILE", "file_hashes", "write_json_atomic", "write_manifest", "read_manifest", "verify_files"]

FORMAT = "steerc-engine"
FORMAT_VERSION = 1
MANIFEST_FILE = "steerc.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder`` except the manifest, keyed by relative path."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): _sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _checksum(data: dict) -> str:
    body = {k: v for k, v in data.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(folder: Path, data: dict) -> dict:
    """Hash every other file into ``files``, add the manifest's own ``checksum`` (sha256 of
    its canonical JSON), and write ``steerc.json`` atomically. Returns what was written."""
    data = {**data, "files": file_hashes(folder)}
    data["checksum"] = _checksum(data)
    write_json_atomic(Path(folder) / MANIFEST_FILE, data)
    return data


def verify_files(folder: Path, expected: dict[str, str]) -> None:
    folder = Path(folder)
    for rel, digest in expected.items():
        path = folder / rel
        if not path.is_file():
            raise EngineError(f"engine {folder} is incomplete: {rel} is missing; recompile it with `steerc compile ... -o {folder} --force`")
        if _sha256(path) != digest:
            raise EngineError(f"engine {folder} is corrupt: {rel} does not match its sha256 in {MANIFEST_FILE}; recompile it with --force")


def read_manifest(folder: Path, check_files: bool = True) -> dict[str, Any]:
    """Load and validate ``folder/steerc.json``; raises :class:`EngineError` with the fix."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise EngineError(f"engine folder {folder} does not exist; create one with `steerc compile MODEL -o {folder}`")
    if not path.is_file():
        raise EngineError(f"{folder} is not a steerc engine (no {MANIFEST_FILE}); create one with `steerc compile MODEL -o {folder}`")
    try:
        data = read_json(path, "engine manifest", "the JSON object steerc compile writes", fix="the engine is corrupt: recompile it with --force")
    except UserFileError as exc:
        raise EngineError(str(exc)) from None
    if data.get("format") != FORMAT:
        raise EngineError(f"{path} is not a steerc engine manifest (format {data.get('format')!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise EngineError(
            f"engine {folder} has format version {data.get('format_version')!r}; this steerc reads version {FORMAT_VERSION}: recompile it"
        )
    if data.get("checksum") != _checksum(data):
        raise EngineError(f"{path} is corrupt (its checksum does not match its contents); recompile the engine with --force")
    for key in ("files", "inputs", "outputs", "geometry"):
        if key not in data:
            raise EngineError(f"{path} lacks '{key}'; the engine is corrupt: recompile it with --force")
    if check_files:
        verify_files(folder, data["files"])
    return data
