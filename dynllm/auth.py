"""API keys: ``Authorization: Bearer KEY`` on the model routes and on /admin.

Client keys (``api_keys`` and ``$DYNLLM_API_KEYS``) guard ``/v1/*`` and
``/v2/*``; the admin key (``admin_api_key`` or ``$DYNLLM_ADMIN_API_KEY``)
guards ``/admin/*``, which without an admin key falls back to the client keys.
With no keys at all nothing is guarded.  Keys are compared in constant time
and never logged; the header is never sent on to a backend.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging

from flask import request

from .config import Config
from .errors import Unauthorized

log = logging.getLogger("dynllm.auth")

GUARDED_BY_CLIENT_KEYS = ("/v1/", "/v2/")
ADMIN_PREFIX = "/admin/"


def _bearer() -> str | None:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


class Keys:
    """The keys of one app, read (and hashed) once when it is built."""

    def __init__(self, cfg: Config) -> None:
        self.client = [_digest(k) for k in cfg.client_keys()]
        admin = cfg.admin_key()
        self.admin = [_digest(admin)] if admin is not None else None

    def for_path(self, path: str) -> tuple[list[bytes], str] | None:
        """Digests of the keys that may open ``path`` and what they are called, or ``None``."""
        if path.startswith(ADMIN_PREFIX) or path == ADMIN_PREFIX.rstrip("/"):
            if self.admin is not None:
                return self.admin, "the admin API key"
            return (self.client, "an API key") if self.client else None
        if path.startswith(GUARDED_BY_CLIENT_KEYS):
            return (self.client, "an API key") if self.client else None
        return None

    def check(self) -> None:
        """Raise a 401 unless the current request may go on (a Flask ``before_request``)."""
        need = self.for_path(request.path)
        if need is None:
            return
        digests, what = need
        token = _bearer()
        if token is None:
            raise Unauthorized(f"this route needs {what}: send 'Authorization: Bearer <key>'")
        # Digests of equal length are compared, every key each time: the time taken
        # says neither which key matched nor how long the keys are.
        sent = _digest(token)
        found = False
        for digest in digests:
            found |= hmac.compare_digest(sent, digest)
        if not found:
            raise Unauthorized(f"the key sent is not {what}")


def warn_if_open(cfg: Config) -> None:
    """Log a warning when no key is configured and DynLLM listens beyond loopback."""
    if cfg.client_keys():
        return
    host = cfg.server.host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback and cfg.server.trusted_proxy:
        log.warning(
            "no api_keys configured and a reverse proxy (%s) is in front: anyone who can reach "
            "the proxy can use every model; set api_keys (or $DYNLLM_API_KEYS)",
            cfg.server.trusted_proxy,
        )
    elif not loopback:
        log.warning(
            "no api_keys configured and listening on %s: anyone who can reach port %s can use "
            "every model%s; set api_keys (or $DYNLLM_API_KEYS) or listen on 127.0.0.1 behind "
            "a proxy",
            host,
            cfg.server.port,
            "" if cfg.admin_key() else " and unload or load them through /admin",
        )
