"""What every backend class provides: pure functions of the config, no I/O.

A backend turns a model's config into a command line, says how readiness is
probed, maps a public endpoint to its own route and may rewrite a body.  The
process module and the registry do all the spawning, probing and waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import Config, ModelConfig
from ..endpoints import PATHS, Endpoint


@dataclass(frozen=True, slots=True)
class Probe:
    """An HTTP request whose ``ok`` answer means the backend is ready."""

    method: str
    path: str
    ok: frozenset[int] = frozenset({200})


class Backend:
    """Base class; subclasses override :meth:`argv` and whatever else differs."""

    name: ClassVar[str] = ""

    def argv(self, cfg: Config, model: ModelConfig, port: int) -> list[str]:
        raise NotImplementedError

    def env(self, cfg: Config, model: ModelConfig) -> dict[str, str]:
        """Environment variables added to the backend's environment."""
        return {}

    def probe(self, model: ModelConfig) -> Probe:
        return Probe("GET", "/health")

    def upstream_path(self, model: ModelConfig, endpoint: Endpoint) -> str:
        """The backend's own route for a public endpoint (identity by default)."""
        return PATHS[endpoint]

    def rewrite_body(self, model: ModelConfig, body: bytes, content_type: str) -> bytes:
        """Change the request body before it goes upstream (unchanged by default)."""
        return body
