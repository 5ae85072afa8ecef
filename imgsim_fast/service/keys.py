"""API keys of a service: stored hashed beside the catalog (`<catalog>.keys.json`, mode 0600), with scopes.

A key reads `ims_<id>_<secret>`: the id finds the record, the secret (32 random bytes) is checked against its
SHA-256 with a constant-time compare. A salted slow hash (scrypt) protects low-entropy passwords; a 256-bit
random secret cannot be guessed from its SHA-256, and checking it costs microseconds per request. The file is
read again when it changes, so `imgsim serve keys revoke` takes effect on a running server.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass

from imgsim_fast.io.atomic_write import replacing

__all__ = ["SCOPES", "ApiKey", "KeyStore", "keys_path"]

SCOPES = ("read", "write")
_TOKEN_RE = re.compile(r"^ims_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")


def keys_path(catalog: str) -> str:
    return os.path.abspath(catalog) + ".keys.json"


@dataclass
class ApiKey:
    id: str
    name: str
    scopes: list[str]
    sha256: str
    created: float
    revoked: float | None = None

    def public(self) -> dict:
        """What `keys list` shows: never the hash."""
        return {"id": self.id, "name": self.name, "scopes": self.scopes, "created": self.created,
                "revoked": self.revoked}


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._keys: dict[str, ApiKey] = {}
        self._stamp = None

    def _load(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._keys, self._stamp = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        with open(self.path, encoding="utf-8") as f:
            data = json.load(f)
        self._keys = {k["id"]: ApiKey(**k) for k in data.get("keys", [])}
        self._stamp = stamp

    def _save(self) -> None:
        with replacing(self.path) as f:
            os.fchmod(f.fileno(), 0o600)  # hashes only, but nobody else needs to read them
            json.dump({"keys": [asdict(k) for k in self._keys.values()]}, f, indent=1)
        self._stamp = None

    def add(self, name: str, scopes) -> tuple[str, ApiKey]:
        """A new key: (the token, shown once, and its record)."""
        scopes = sorted(set(scopes))
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise ValueError(f"scopes must be among {', '.join(SCOPES)}, got {', '.join(scopes) or 'none'}")
        with self._lock:
            self._load()
            kid = secrets.token_hex(6)
            secret = secrets.token_urlsafe(32)
            key = ApiKey(kid, name, scopes, _digest(secret), time.time())
            self._keys[kid] = key
            self._save()
        return f"ims_{kid}_{secret}", key

    def revoke(self, kid: str) -> ApiKey:
        with self._lock:
            self._load()
            key = self._keys.get(kid)
            if key is None:
                raise ValueError(f"no key with id {kid!r} (see `imgsim serve keys list`)")
            if key.revoked is None:
                key.revoked = time.time()
                self._save()
            return key

    def list(self) -> list[ApiKey]:
        with self._lock:
            self._load()
            return sorted(self._keys.values(), key=lambda k: k.created)

    def check(self, token: str) -> ApiKey | None:
        """The live key `token` names, or None (unknown, malformed, wrong secret or revoked)."""
        m = _TOKEN_RE.match(token or "")
        if not m:
            return None
        with self._lock:
            self._load()
            key = self._keys.get(m.group(1))
        if key is None or key.revoked is not None:
            return None
        return key if hmac.compare_digest(key.sha256, _digest(m.group(2))) else None
