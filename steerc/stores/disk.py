"""``DiskStore``: one checksummed safetensors file per prepared context under a folder."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from steerc.stores.base import ContextStore, CorruptEntryError, StoredContext, check_key, entry_from_bytes, entry_to_bytes

__all__ = ["DiskStore"]

log = logging.getLogger(__name__)


class DiskStore(ContextStore):
    """One safetensors file per entry under ``root/key[:2]/``; atomic writes; corrupt files are dropped."""

    tier = "disk"

    def __init__(self, root: str | Path) -> None:
        super().__init__()
        self.root = Path(root).expanduser()

    def path(self, key: str) -> Path:
        return self.root / check_key(key)[:2] / f"{key}.safetensors"

    def get(self, key: str) -> StoredContext | None:
        path = self.path(key)
        try:
            entry = entry_from_bytes(key, path.read_bytes())
        except FileNotFoundError:
            self.stats.misses += 1
            return None
        except (CorruptEntryError, OSError) as exc:
            log.warning("dropping unreadable stored context %s: %s", path, exc)
            self.stats.corrupt += 1
            self.stats.misses += 1
            self._unlink(path)
            return None
        self.stats.hits += 1
        return entry

    def put(self, key: str, entry: StoredContext) -> None:
        path = self.path(key)
        data = entry_to_bytes(key, entry)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.stats.puts += 1

    @staticmethod
    def _unlink(path: Path) -> bool:
        try:
            path.unlink()
            return True
        except OSError:
            return False

    def delete(self, key: str) -> bool:
        return self._unlink(self.path(key))

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def clear(self) -> None:
        """Remove this store's entry files (and stray temporaries); other files are left alone."""
        for pattern in ("[0-9a-f][0-9a-f]/*.safetensors", "[0-9a-f][0-9a-f]/.*.tmp"):
            for path in self.root.glob(pattern):
                self._unlink(path)
