"""Backend classes by config name."""

from __future__ import annotations

from .base import Backend, Probe
from .llamacpp import LlamaCppBackend
from .openvino import OpenVINOBackend
from .transformers import TransformersBackend

_BACKENDS: dict[str, Backend] = {
    b.name: b for b in (LlamaCppBackend(), OpenVINOBackend(), TransformersBackend())
}


def get_backend(name: str) -> Backend:
    """The (stateless, shared) backend object for a config ``backend`` value."""
    return _BACKENDS[name]


__all__ = ["Backend", "Probe", "get_backend"]
