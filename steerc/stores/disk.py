"""``DiskStore``: one checksummed safetensors file per prepared context under a folder.

Reference marks (``add_ref``) are empty files, ``refs/<target[:2]>/<target>/<holder>``: made
and removed atomically, shared by every process using the folder. Pins (``pin``) are empty
files ``pins/<key[:2]>/<key>``, and index members (``index_add``) empty files
``index/<index[:2]>/<index>/<member>``.

Under a byte budget (``max_bytes``) a write first makes room: least-recently-used entries go
first, where an entry's file time is bumped on every read. An entry that another entry holds
(a KV with reference marks) or that is pinned is never evicted; evicting a holder drops its
marks, so its KV can go after it once nobody else holds it. Every process sharing the folder
evicts under the same rule; a reader that finds an entry gone has a miss, never a wrong answer.
:meth:`DiskStore.collect_garbage` removes stray temporaries, marks whose holder is gone and
shared entries (KVs) that nobody holds, each only once older than a grace period, so a write
in flight in another process is never taken for garbage."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from steerc.stores.base import ContextStore, CorruptEntryError, StoredContext, StoreUnavailableError, check_key, entry_from_bytes, entry_to_bytes

__all__ = ["DiskStore"]

log = logging.getLogger(__name__)


class DiskStore(ContextStore):
    """One safetensors file per entry under ``root/key[:2]/``; atomic writes; corrupt files are dropped.

    A folder that cannot be read or written (permission denied, disk full, I/O error) raises
    :class:`StoreUnavailableError`; a failed write leaves nothing behind (not even its temporary)."""

    tier = "disk"

    def __init__(self, root: str | Path, max_bytes: int | None = None) -> None:
        super().__init__()
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
            raise ValueError(f"the disk store budget must be a positive number of bytes (or None: unbounded), got {max_bytes!r}")
        self.root = Path(root).expanduser()
        self.max_bytes = max_bytes

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
        try:
            os.utime(path)  # "used" means read: eviction goes by this time
        except OSError:
            pass
        return entry

    def put(self, key: str, entry: StoredContext) -> None:
        path = self.path(key)
        data = entry_to_bytes(key, entry)
        if self.max_bytes is not None:
            if len(data) > self.max_bytes:
                log.warning("context %s (%d bytes) exceeds the disk store budget of %d bytes; not stored", key, len(data), self.max_bytes)
                return
            if not self._make_room(len(data), key):
                return
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

    # -- budget and eviction ----------------------------------------------------------------
    def _entries(self) -> dict[str, os.stat_result]:
        """Every entry file's stat, by key."""
        out = {}
        for path in self.root.glob("[0-9a-f][0-9a-f]/*.safetensors"):
            try:
                out[path.stem] = path.stat()
            except OSError:
                continue  # removed meanwhile
        return out

    @property
    def bytes_used(self) -> int:
        """Bytes of the entry files now (marks and temporaries are not counted)."""
        return sum(st.st_size for st in self._entries().values())

    def _holders(self) -> dict[str, set[str]]:
        """target -> the holders its reference marks name."""
        out: dict[str, set[str]] = {}
        for mark in self.root.glob("refs/[0-9a-f][0-9a-f]/*/*"):
            out.setdefault(mark.parent.name, set()).add(mark.name)
        return out

    def _make_room(self, need: int, keep: str) -> bool:
        """Evict least-recently-used entries until ``need`` more bytes fit the budget (``keep``,
        the entry being written, replaces its old file and is not evicted); False when they
        cannot (the rest is pinned or held): the write is then dropped, a miss later."""
        entries = self._entries()
        used = sum(st.st_size for k, st in entries.items() if k != keep)
        if used + need <= self.max_bytes:
            return True
        holders, pinned = self._holders(), self.pinned()
        order = sorted((st.st_mtime, k) for k, st in entries.items() if k != keep)
        progress = True
        while used + need > self.max_bytes and progress:
            progress = False
            for _, key in order:
                if key not in entries or key in pinned or holders.get(key):
                    continue
                if self._unlink(self.path(key)):
                    self.stats.evictions += 1
                    log.info("evicted stored context %s (%d bytes, least recently used) to stay within %d bytes", key, entries[key].st_size, self.max_bytes)
                used -= entries.pop(key).st_size
                for target, names in holders.items():  # its marks go with it: what it held may go next
                    if key in names:
                        names.discard(key)
                        self._unlink(self._refs_folder(target) / key)
                progress = True
                break
        if used + need > self.max_bytes:
            log.warning("the disk context store at %s holds %d bytes of pinned or referenced entries; a %d-byte write would pass its budget of %d "
                        "bytes and is dropped (raise --kv-store-max-gb, unpin contexts or delete documents)", self.root, used, need, self.max_bytes)
            return False
        return True

    # -- pins -----------------------------------------------------------------------------
    def _pin_path(self, key: str) -> Path:
        return self.root / "pins" / check_key(key)[:2] / key

    def pin(self, key: str, until: float | None = None) -> None:
        """Never evict ``key`` until :meth:`unpin`, or until the Unix time ``until`` (a TTL); pins
        are shared by every process on the folder."""
        path = self._pin_path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "w") as fh:
                fh.write("" if until is None else repr(float(until)))
            os.replace(tmp, path)
        except OSError as exc:
            raise self._failed("write a pin", exc) from None

    def unpin(self, key: str) -> None:
        self._unlink(self._pin_path(key))

    def pinned(self, now: float | None = None) -> set[str]:
        """The keys pinned now (a pin past its ``until`` no longer counts)."""
        now = time.time() if now is None else now
        out = set()
        for path in self.root.glob("pins/[0-9a-f][0-9a-f]/[0-9a-f]*"):
            until = _pin_until(path)
            if until is None or until > now:
                out.add(path.name)
        return out

    # -- garbage collection -------------------------------------------------------------------
    def collect_garbage(self, shared_kinds: tuple[str, ...] = ("kv",), grace_s: float = 600.0) -> dict[str, int]:
        """Remove what a killed process can leave behind, each only once older than ``grace_s``:
        temporary files, reference marks whose holder entry is gone, and entries of a shared
        kind (``meta["kind"]``, a context's one copy of its KV) that no mark holds; and pins past
        their time (at once). Returns the counts removed (``temp_files``, ``stale_marks``,
        ``orphans``, ``expired_pins``)."""
        old = time.time() - grace_s
        removed = {"temp_files": 0, "stale_marks": 0, "orphans": 0, "expired_pins": 0}

        def aged(path: Path) -> bool:
            try:
                return path.stat().st_mtime < old
            except OSError:
                return False

        for pin in self.root.glob("pins/[0-9a-f][0-9a-f]/[0-9a-f]*"):
            until = _pin_until(pin)
            if until is not None and until <= time.time() and self._unlink(pin):
                removed["expired_pins"] += 1
        for tmp in [*self.root.glob("[0-9a-f][0-9a-f]/.*.tmp"), *self.root.glob("pins/*/.*.tmp"), *self.root.glob(".ping.*.tmp")]:
            if aged(tmp) and self._unlink(tmp):
                removed["temp_files"] += 1
        entries = self._entries()
        for mark in self.root.glob("refs/[0-9a-f][0-9a-f]/*/*"):
            if mark.name not in entries and aged(mark) and self._unlink(mark):
                removed["stale_marks"] += 1
                try:
                    mark.parent.rmdir()
                except OSError:
                    pass
        holders = self._holders()
        for key, st in entries.items():
            if holders.get(key) or st.st_mtime >= old or _kind(self.path(key)) not in shared_kinds:
                continue
            if self._unlink(self.path(key)):
                removed["orphans"] += 1
        if any(removed.values()):
            log.info("context store garbage collection at %s removed %s", self.root, removed)
        return removed

    def _refs_folder(self, target: str) -> Path:
        return self.root / "refs" / check_key(target)[:2] / target

    def _mark(self, folder: Path, name: str, what: str) -> None:
        """The empty file ``folder/name`` (a reference mark, an index member), made atomically."""
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / check_key(name)).touch()
        except OSError as exc:
            raise self._failed(f"write {what}", exc) from None

    def add_ref(self, target: str, holder: str) -> None:
        self._mark(self._refs_folder(target), holder, "a reference mark")

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

    def _index_folder(self, index: str) -> Path:
        return self.root / "index" / check_key(index)[:2] / index

    def index_add(self, index: str, member: str) -> None:
        self._mark(self._index_folder(index), member, "an index entry")

    def index_drop(self, index: str, member: str) -> None:
        self._unlink(self._index_folder(index) / check_key(member))

    def index_members(self, index: str) -> set[str]:
        try:
            return {name for name in os.listdir(self._index_folder(index)) if not name.startswith(".")}
        except FileNotFoundError:
            return set()
        except OSError as exc:
            raise self._failed("read an index", exc) from None

    def __contains__(self, key: str) -> bool:
        try:
            return self.path(key).is_file()
        except OSError as exc:
            raise self._failed("look up an entry", exc) from None

    def clear(self) -> None:
        """Remove this store's entry files (and stray temporaries, marks and pins); other files are left alone."""
        for pattern in ("[0-9a-f][0-9a-f]/*.safetensors", "[0-9a-f][0-9a-f]/.*.tmp"):
            for path in self.root.glob(pattern):
                self._unlink(path)
        shutil.rmtree(self.root / "refs", ignore_errors=True)
        shutil.rmtree(self.root / "pins", ignore_errors=True)
        shutil.rmtree(self.root / "index", ignore_errors=True)


def _pin_until(path: Path) -> float | None:
    """A pin file's expiry (None: no expiry, or unreadable, which keeps the pin: never evict by mistake)."""
    try:
        text = path.read_text().strip()
        return float(text) if text else None
    except (OSError, ValueError):
        return None


def _kind(path: Path) -> str | None:
    """``meta["kind"]`` from an entry file's safetensors header (None when unreadable)."""
    try:
        with path.open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 0 < size < 1 << 24:
                return None
            header = json.loads(fh.read(size)).get("__metadata__") or {}
        return json.loads(header.get("meta", "{}")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
