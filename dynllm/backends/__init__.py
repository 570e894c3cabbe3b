"""Backend classes by config name."""

from __future__ import annotations

from .base import Backend, Probe
from .llamacpp import LlamaCppBackend

_BACKENDS: dict[str, Backend] = {
    "llamacpp": LlamaCppBackend(),
}


def get_backend(name: str) -> Backend:
    """The (stateless, shared) backend object for a config ``backend`` value."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise NotImplementedError(f"backend '{name}' is not implemented yet") from None


__all__ = ["Backend", "Probe", "get_backend"]
