"""The registry's records: one per model, one per load, one per request (lease).

Plain data; only :class:`~dynllm.registry.ModelRegistry` reads or changes them,
and only while holding its lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .backends import Backend, Probe
from .config import ModelConfig
from .errors import DynLLMError
from .process import BackendProcess
from .states import State

if TYPE_CHECKING:
    from .registry import ModelRegistry


class ProcessLike(Protocol):
    argv: list[str]
    log_path: Path

    @property
    def pid(self) -> int: ...
    def start(self) -> None: ...
    def poll(self) -> int | None: ...
    def watch(self, on_exit: Callable[[Any, int], None]) -> Any: ...
    def wait_ready(
        self,
        port: int,
        probes: Sequence[Probe],
        timeout: float,
        interval: float = ...,
        cancel: threading.Event | None = ...,
    ) -> float: ...
    def stop(self, grace: float) -> int: ...


Launcher = Callable[[list[str], Path, dict[str, str | None]], ProcessLike]


def default_launcher(argv: list[str], log_path: Path, env: dict[str, str | None]) -> ProcessLike:
    return BackendProcess(argv, log_path, env)


@dataclass
class Attempt:
    """One load, shared by every request that waits for it (single-flight)."""

    done: threading.Event = field(default_factory=threading.Event)
    error: DynLLMError | None = None


@dataclass
class ModelRecord:
    cfg: ModelConfig
    backend: Backend
    log_path: Path
    state: State = State.UNLOADED
    proc: ProcessLike | None = None
    #: Exit code of ``proc`` if it ended while the model was still loading.
    exit_code: int | None = None
    port: int | None = None
    #: The command line of the backend about to be started (on disk before it is, so
    #: that a DynLLM killed right after the spawn still finds it when it restarts).
    argv: list[str] = field(default_factory=list)
    leases: int = 0
    attempt: Attempt | None = None
    #: The pending attempt has reserved VRAM but is not ``loading`` yet.
    reserved: bool = False
    load_order: float = 0.0
    loaded_at: float | None = None
    last_used: float = 0.0  # monotonic
    last_used_at: float | None = None  # wall clock, for people
    last_error: str | None = None
    changed: float = field(default_factory=time.monotonic)
    seq: int = 0

    @property
    def name(self) -> str:
        return self.cfg.name


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change of one model, as observers (metrics) see it."""

    name: str
    backend: str
    old: State
    new: State
    #: A fixed word for why: "evicted", "idle", "admin", "shutdown" or "".
    cause: str
    #: Seconds spent in ``old``.
    after: float


class Lease:
    """The right to send requests to a loaded model; the model is busy while held.

    Released exactly once, however many times :meth:`release` is called.
    """

    __slots__ = ("_registry", "name", "port", "pid", "touch", "_released")

    def __init__(self, registry: ModelRegistry, name: str, touch: bool = True) -> None:
        self._registry = registry
        self.name = name
        self.port: int = 0
        #: The backend process the lease was given on (0 until it is loaded).
        self.pid: int = 0
        #: Whether releasing it counts as use (restarts the model's idle time).
        self.touch = touch
        self._released = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._registry._release(self)
