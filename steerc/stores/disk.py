"""``DiskStore``: one checksummed safetensors file per prepared context under a folder.

Reference marks (``add_ref``) are empty files, ``refs/<target[:2]>/<target>/<holder>``: made
and removed atomically, shared by every process using the folder."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from steerc.stores.base import ContextStore, CorruptEntryError, StoredContext, StoreUnavailableError, check_key, entry_from_bytes, entry_to_bytes

__all__ = ["DiskStore"]

log = logging.getLogger(__name__)


class DiskStore(ContextStore):
    """One safetensors file per entry under ``root/key[:2]/``; atomic writes; corrupt files are dropped.

    A folder that cannot be read or written (permission denied, disk full, I/O error) raises
    :class:`StoreUnavailableError`; a failed write leaves nothing behind (not even its temporary)."""

    tier = "disk"

    def __init__(self, root: str | Path) -> None:
        super().__init__()
        self.root = Path(root).expanduser()

    @classmethod
    def from_spec(cls, spec: str, timeout: float) -> "DiskStore":
        """A folder path, or ``SCHEME:///path`` (``file://``, the registry's scheme); no timeout applies."""
        return cls(spec.partition("://")[2] if "://" in spec else spec)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)[:2] / f"{key}.safetensors"

    def _failed(self, what: str, exc: OSError) -> StoreUnavailableError:
        return StoreUnavailableError(f"the disk context store at {self.root} could not {what}: {exc.strerror or exc}; check its free space and permissions")

    def ping(self) -> None:
        """The folder exists (or can be made) and takes a small file."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".ping.", suffix=".tmp", dir=self.root)
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            raise self._failed("write a file", exc) from None

    def get(self, key: str) -> StoredContext | None:
        path = self.path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            self.stats.misses += 1
            return None
        except OSError as exc:
            raise self._failed(f"read {path.name}", exc) from None
        try:
            entry = entry_from_bytes(key, data)
        except CorruptEntryError as exc:
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
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
        except OSError as exc:
            raise self._failed(f"write {path.name}", exc) from None
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise self._failed(f"write {path.name}", exc) from None
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

    def _refs_folder(self, target: str) -> Path:
        return self.root / "refs" / check_key(target)[:2] / target

    def add_ref(self, target: str, holder: str) -> None:
        folder = self._refs_folder(target)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / check_key(holder)).touch()
        except OSError as exc:
            raise self._failed("write a reference mark", exc) from None

    def drop_ref(self, target: str, holder: str) -> int:
        folder = self._refs_folder(target)
        try:
            (folder / check_key(holder)).unlink(missing_ok=True)
            left = len(os.listdir(folder))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise self._failed("remove a reference mark", exc) from None
        if not left:
            try:
                folder.rmdir()
            except OSError:
                pass  # another process marked it meanwhile: the target stays
        return left

    def __contains__(self, key: str) -> bool:
        try:
            return self.path(key).is_file()
        except OSError as exc:
            raise self._failed("look up an entry", exc) from None

    def clear(self) -> None:
        """Remove this store's entry files (and stray temporaries); other files are left alone."""
        for pattern in ("[0-9a-f][0-9a-f]/*.safetensors", "[0-9a-f][0-9a-f]/.*.tmp"):
            for path in self.root.glob(pattern):
                self._unlink(path)
        shutil.rmtree(self.root / "refs", ignore_errors=True)
