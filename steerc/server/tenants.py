"""API keys and tenants: ``--api-key KEY`` (one tenant) or ``--api-keys FILE`` (a key per tenant).

The key file holds one ``TENANT KEY`` pair per line (``#`` starts a comment; blank lines are
skipped). A tenant name is 1-64 letters, digits, ``.``, ``_`` or ``-``; a key is at least 8
characters without spaces; a key appears once (a tenant may have several). Every mistake is a
one-line start-up error naming the file and line.

A request's tenant is the one its key belongs to; the server, not the client, decides it, and
maps every store key of that tenant into its own namespace
(:class:`~steerc.stores.namespaced.NamespacedStore`) unless contexts are shared
(``--share-contexts``).
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from steerc.errors import SteercError
from steerc.server.errors import ApiError
from steerc.user_files import read_text

__all__ = ["Tenants", "load_key_file"]

_TENANT = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def load_key_file(path: str | Path) -> dict[str, str]:
    """``{key: tenant}`` from a key file; raises :class:`SteercError` (one line) on any mistake."""
    path = Path(path)
    text = read_text(path, "--api-keys", fix="write one 'TENANT KEY' per line, as UTF-8")
    keys: dict[str, tuple[str, int]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"--api-keys {path}, line {number}"
        if len(fields) == 1:
            raise SteercError(f"{where}: a key without a tenant; write 'TENANT KEY'")
        if len(fields) > 2:
            raise SteercError(f"{where}: {len(fields)} fields; write 'TENANT KEY' (keys have no spaces)")
        tenant, key = fields
        if not _TENANT.match(tenant):
            raise SteercError(f"{where}: tenant {tenant[:70]!r} is not 1-64 letters, digits, '.', '_' or '-'")
        if len(key) < 8:
            raise SteercError(f"{where}: the key of tenant {tenant!r} is shorter than 8 characters")
        if key in keys:
            raise SteercError(f"{where}: this key is also on line {keys[key][1]} (tenant {keys[key][0]!r}); every key belongs to one tenant")
        keys[key] = (tenant, number)
    if not keys:
        raise SteercError(f"--api-keys {path}: no keys in it; write one 'TENANT KEY' per line")
    return {key: tenant for key, (tenant, _) in keys.items()}


class Tenants:
    """Who a request is: ``check(authorization)`` returns its tenant (None: the one-tenant case)
    or raises 401."""

    def __init__(self, api_key: str | None = None, keys: dict[str, str] | None = None, share_contexts: bool = False) -> None:
        if api_key is not None and keys:
            raise SteercError("give --api-key or --api-keys, not both (put the single key in the file under a tenant name)")
        self.api_key, self.keys, self.share_contexts = api_key, dict(keys or {}), share_contexts

    @property
    def open(self) -> bool:
        return self.api_key is None and not self.keys

    def check(self, authorization: str | None) -> str | None:
        if self.open:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer":
            if self.api_key is not None and secrets.compare_digest(token.encode(), self.api_key.encode()):
                return None
            for key, tenant in self.keys.items():  # every key compared in constant time
                if secrets.compare_digest(token.encode(), key.encode()):
                    return tenant
        what = "no API key was sent" if not authorization else "the API key is wrong"
        raise ApiError(401, f"{what}: send 'Authorization: Bearer <key>' with a key the server was started with (--api-key, STEERC_API_KEY or --api-keys)",
                       "authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def namespace(self, tenant: str | None) -> str | None:
        """The store namespace of ``tenant`` (None: the shared store)."""
        return None if tenant is None or self.share_contexts else tenant
