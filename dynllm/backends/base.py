"""What every backend class provides: pure functions of the config, no I/O.

A backend turns a model's config into a command line (and the files that
command line names), says how readiness is probed, maps a public route to its
own, and names the ``model`` value it expects in request bodies.  The process
module and the registry do all the writing, spawning, probing and waiting; the
views do the body rewriting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import Config, ModelConfig
from ..endpoints import Endpoint


@dataclass(frozen=True, slots=True)
class Probe:
    """An HTTP request whose ``ok`` answer is one condition of readiness.

    A backend is ready when each of its probes, asked in order, answers ``ok``.
    A ``final`` probe is one whose answer settles the matter once the probes
    before it pass: any other answer then fails the load at once instead of
    waiting for the load timeout.
    """

    method: str
    path: str
    ok: frozenset[int] = frozenset({200})
    final: bool = False


class Backend:
    """Base class; subclasses override :meth:`argv` and whatever else differs."""

    name: ClassVar[str] = ""
    #: Whether its event streams end with ``data: [DONE]`` as OpenAI's do; DynLLM
    #: adds the marker to the streams of a backend that leaves it out.
    ends_streams_with_done: ClassVar[bool] = True

    def argv(self, cfg: Config, model: ModelConfig, port: int) -> list[str]:
        raise NotImplementedError

    def files(self, cfg: Config, model: ModelConfig) -> dict[str, str]:
        """Files the command line refers to: absolute path -> text, written before spawning."""
        return {}

    def env(self, cfg: Config, model: ModelConfig) -> dict[str, str | None]:
        """Changes to the backend's environment (``None`` removes a variable)."""
        return {}

    def readiness(self, model: ModelConfig) -> tuple[Probe, ...]:
        """The probes that must all pass, in order, before the model takes requests."""
        return (Probe("GET", "/health"),)

    def serves(self, endpoint: Endpoint) -> bool:
        """Whether this backend has a route for ``endpoint`` (model types aside)."""
        return True

    def upstream_path(self, model: ModelConfig, endpoint: Endpoint, path: str) -> str:
        """The backend's own route for the public ``path`` of ``endpoint`` (same by default)."""
        return path

    def upstream_model(self, model: ModelConfig) -> str | None:
        """The ``model`` value the backend expects in request bodies.

        ``None`` (the default) forwards the client's value, the public name,
        unchanged.  Otherwise the views put this value in the body (JSON or
        multipart) and turn it back into the public name in the response.
        """
        return None
