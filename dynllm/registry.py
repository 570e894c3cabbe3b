"""ModelRegistry: the only owner of mutable model state.

Every decision (use, wait, start, evict, unload) is taken under one lock in the
same step that records it; the lock is never held while spawning, probing,
waiting, stopping or proxying.  Work that needs I/O runs after the lock is
released: state rows are written to the store and log lines emitted from a
queue filled under the lock (:meth:`_locked`).

VRAM accounting: a model's declared ``vram_mb`` counts while it is loading,
loaded or unloading (until its process has really exited).  A load that needs
evictions first *reserves* its memory, waits until the victims' processes are
gone, and only then becomes ``loading``, so the counted sum never exceeds the
budget.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .backends import Backend, get_backend
from .config import Config, ModelConfig, safe_filename
from .errors import (
    DynLLMError,
    LoadFailed,
    ModelBusy,
    ModelNotFound,
    ModelUnavailable,
    NoCapacity,
    ShuttingDown,
)
from .eviction import Resident, plan_eviction
from .ports import NoFreePort, PortPool
from .process import (
    Cancelled,
    NotServable,
    ProcessExited,
    ReadyTimeout,
    describe_returncode,
    kill_leftover,
    log_tail,
    write_files,
)
from .records import (
    Attempt,
    Launcher,
    Lease,
    ModelRecord,
    ProcessLike,
    Transition,
    default_launcher,
)
from .states import HOLDS_VRAM, STOPPED, State, check_transition
from .store import ModelRow, Store

log = logging.getLogger("dynllm.registry")

#: Seconds a client is told to wait when every eviction candidate is busy.
RETRY_AFTER_SECONDS = 5
#: Lines of backend output quoted in a load error.
TAIL_LINES = 20


class ModelRegistry:
    def __init__(
        self,
        config: Config,
        store: Store | None = None,
        launcher: Launcher = default_launcher,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._store = store
        self._launch = launcher
        self._clock = clock
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending: list[tuple[ModelRow, str, Transition | None]] = []
        self._listeners: list[Callable[[Transition], None]] = []
        self._closing = False
        self._cancel = threading.Event()
        self._ports = PortPool(config.backend.port_range_start, config.backend.port_range_end)
        log_dir = config.log_dir()
        self._models: dict[str, ModelRecord] = {}
        for m in config.models:
            self._models[m.name] = ModelRecord(
                cfg=m,
                backend=get_backend(m.backend),
                log_path=log_dir / f"{safe_filename(m.name)}.log",
            )
        if store is not None:
            rows = store.load_all()
            for name, row in rows.items():
                rec = self._models.get(name)
                if rec is not None and row.state is State.FAILED:
                    rec.state = State.FAILED
                    rec.last_error = row.last_error
                if rec is not None:
                    rec.last_used_at = row.last_used_at

    # ------------------------------------------------------------------ locking

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the lock; afterwards write the rows and log lines queued meanwhile."""
        self._lock.acquire()
        try:
            yield
        finally:
            pending, self._pending = self._pending, []
            self._lock.release()
        if pending:
            for _row, line, change in pending:
                if line:
                    log.info(line)
                if change is not None:
                    for listener in self._listeners:
                        try:
                            listener(change)
                        except Exception:  # an observer must never break the registry
                            log.exception("state listener failed")
            if self._store is not None:
                try:
                    self._store.save([row for row, _, _ in pending])
                except Exception:
                    log.exception("could not write model state to %s", self._store.path)

    def add_listener(self, listener: Callable[[Transition], None]) -> None:
        """Call ``listener`` with every state change, after the lock is released."""
        self._listeners.append(listener)

    def _set_state(self, m: ModelRecord, new: State, reason: str, cause: str = "") -> None:
        """The one place a state changes: checked, logged and persisted (lock held).

        ``cause`` is a short fixed word for why (``evicted``, ``idle``, ...), for metrics.
        """
        check_transition(m.state, new)
        now = self._clock()
        line = (
            f"model={m.name} {m.state.value} -> {new.value} reason={reason} "
            f"after={now - m.changed:.3f}s"
        )
        change = Transition(m.name, m.cfg.backend, m.state, new, cause, now - m.changed)
        if new in STOPPED:
            m.argv = []
        m.state = new
        m.changed = now
        self._queue_row(m, line, change)
        self._cond.notify_all()

    def _queue_row(self, m: ModelRecord, line: str = "", change: Transition | None = None) -> None:
        m.seq += 1
        proc = m.proc
        self._pending.append(
            (
                ModelRow(
                    name=m.name,
                    state=m.state,
                    pid=proc.pid if proc is not None else None,
                    port=m.port,
                    vram_mb=m.cfg.vram_mb,
                    loaded_at=m.loaded_at,
                    last_used_at=m.last_used_at,
                    last_error=m.last_error,
                    log_path=str(m.log_path),
                    argv=list(proc.argv) if proc is not None else list(m.argv),
                    seq=m.seq,
                    updated_at=time.time(),
                ),
                line,
                change,
            )
        )

    # ------------------------------------------------------------- accounting

    def _used_mb(self, exclude: ModelRecord | None = None) -> int:
        """VRAM counted right now: loading, loaded and unloading models."""
        return sum(
            m.cfg.vram_mb
            for m in self._models.values()
            if m.state in HOLDS_VRAM and m is not exclude
        )

    def _committed_mb(self) -> int:
        """VRAM promised: loading, loaded and reserved; models on their way out excluded."""
        return sum(
            m.cfg.vram_mb
            for m in self._models.values()
            if m.state in (State.LOADING, State.LOADED) or m.reserved
        )

    # ------------------------------------------------------------------ leases

    def _record(self, name: str) -> ModelRecord:
        """The record of a configured model (the dict never changes after start)."""
        m = self._models.get(name)
        if m is None:
            raise ModelNotFound(f"The model '{name}' does not exist", param="model")
        return m

    def lookup(self, name: str) -> ModelConfig:
        return self._record(name).cfg

    def log_path(self, name: str) -> Path:
        """Where the backend of ``name`` writes its output (fixed at start)."""
        return self._record(name).log_path

    def backend_of(self, name: str) -> Backend:
        return self._models[name].backend

    def acquire(self, name: str, timeout: float | None = None) -> Lease:
        """Return a lease on a loaded model, loading it first if needed.

        Blocks (without holding the lock) while the model loads; every caller
        waiting for the same model shares one load and gets the same error.
        """
        m = self._record(name)
        with self._lock:  # the common case, kept short: loaded and idle or serving
            if m.state is State.LOADED and m.attempt is None and not self._closing:
                return self._new_lease(m)
        self._check_startable(m)  # file check outside the lock; a hint, not a gate
        if timeout is None:
            timeout = (
                self.config.load_timeout_for(m.cfg) + self.config.backend.stop_timeout_seconds + 30
            )
        deadline = time.monotonic() + timeout
        while True:
            victims: list[ModelRecord] = []
            start_load = False
            with self._locked():
                if self._closing:
                    raise ShuttingDown("DynLLM is shutting down")
                if m.state is State.LOADED and m.attempt is None:
                    return self._new_lease(m)
                if m.attempt is None and m.state in STOPPED:
                    victims = self._plan_load(m)
                    start_load = True
                attempt = m.attempt
                if attempt is not None:
                    lease = Lease(self, m.name)
                    m.leases += 1
                else:  # unloading: wait for the process to exit, then start over
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise LoadFailed(f"timed out waiting for '{name}' to finish unloading")
                    self._cond.wait(min(remaining, 1.0))
                    continue
            if start_load:
                try:
                    threading.Thread(
                        target=self._run_load,
                        args=(m, attempt, victims),
                        name=f"load-{m.name}",
                        daemon=True,
                    ).start()
                except RuntimeError:  # no thread to be had: load in this one instead
                    self._run_load(m, attempt, victims)
            return self._await_load(m, attempt, lease, deadline)

    def lease_if_loaded(self, name: str) -> Lease | None:
        """A lease on ``name`` if it is loaded right now; never starts a load.

        Its release does not count as use, so polling through it (health
        checks) never keeps a model from being unloaded for idleness.
        """
        m = self._record(name)
        with self._lock:
            if m.state is State.LOADED and m.attempt is None and not self._closing:
                return self._new_lease(m, touch=False)
            return None

    def _new_lease(self, m: ModelRecord, touch: bool = True) -> Lease:
        lease = Lease(self, m.name, touch)
        lease.port = m.port or 0
        lease.pid = m.proc.pid if m.proc is not None else 0
        m.leases += 1
        return lease

    def backend_died(self, lease: Lease, wait: float = 2.0) -> bool:
        """Whether the process ``lease`` was given on has ended (or been replaced).

        Asked after the backend refused or dropped a connection: its exit watcher
        may need a moment to notice, so this waits up to ``wait`` seconds for it.
        """
        m = self._record(lease.name)
        deadline = time.monotonic() + wait
        with self._lock:
            while m.proc is not None and m.proc.pid == lease.pid:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def _await_load(self, m: ModelRecord, attempt: Attempt, lease: Lease, deadline: float) -> Lease:
        try:
            ok = attempt.done.wait(max(0.0, deadline - time.monotonic()))
        except BaseException:  # e.g. SystemExit from a signal during preload
            lease.release()
            raise
        with self._locked():
            if ok and attempt.error is None and m.state is State.LOADED:
                lease.port = m.port or 0
                lease.pid = m.proc.pid if m.proc is not None else 0
                return lease
        lease.release()
        if not ok:
            raise LoadFailed(f"timed out waiting for model '{m.name}' to load")
        if attempt.error is not None:
            raise attempt.error
        raise LoadFailed(f"model '{m.name}' stopped right after loading; try again")

    def _release(self, lease: Lease) -> None:
        with self._lock:
            m = self._models[lease.name]
            m.leases -= 1
            if lease.touch:  # idle time counts from the end of the last real request
                m.last_used = self._clock()
                m.last_used_at = time.time()
            if m.leases == 0:
                self._cond.notify_all()

    def _check_startable(self, m: ModelRecord) -> None:
        budget = self.config.total_vram_mb
        if m.cfg.vram_mb > budget:
            raise ModelUnavailable(
                f"model '{m.name}' declares vram_mb {m.cfg.vram_mb}, more than the whole "
                f"budget total_vram_mb {budget}; it can never be loaded",
                code="model_exceeds_budget",
            )
        if not os.path.exists(m.cfg.path):
            raise ModelUnavailable(
                f"model file for '{m.name}' not found: {m.cfg.path}", code="model_file_missing"
            )

    def _plan_load(self, m: ModelRecord) -> list[ModelRecord]:
        """Decide (lock held) to load ``m``: reserve its VRAM and mark victims unloading."""
        residents = [
            Resident(x.name, x.cfg.vram_mb, x.load_order, busy=x.leases > 0)
            for x in self._models.values()
            if x.state is State.LOADED
        ]
        names = plan_eviction(
            m.cfg.vram_mb, self.config.total_vram_mb, self._committed_mb(), residents
        )
        if names is None:
            used = self._committed_mb()
            raise NoCapacity(
                f"not enough VRAM for '{m.name}' ({m.cfg.vram_mb} MB; {used} of "
                f"{self.config.total_vram_mb} MB in use) and every model that could be "
                "evicted is busy; retry later",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        victims = [self._models[n] for n in names]
        for v in victims:
            self._set_state(v, State.UNLOADING, f"evicted for {m.name}", cause="evicted")
        m.attempt = Attempt()
        m.reserved = True
        return victims

    # ------------------------------------------------------------------ loading

    def _run_load(self, m: ModelRecord, attempt: Attempt, victims: list[ModelRecord]) -> None:
        """Body of a load thread: stop victims, wait for room, spawn, wait ready."""
        proc: ProcessLike | None = None
        port: int | None = None
        timeout = self.config.load_timeout_for(m.cfg)
        started = time.monotonic()
        try:
            self._stop_many(victims)
            self._wait_for_room(m, started + self.config.backend.stop_timeout_seconds + 30)
            port = self._ports.reserve()
            argv = m.backend.argv(self.config, m.cfg, port)
            try:
                write_files(m.backend.files(self.config, m.cfg))
            except OSError as exc:
                raise LoadFailed(
                    f"could not write the backend files for '{m.name}': {exc}"
                ) from None
            with self._locked():  # written to disk when the lock is let go
                m.argv = argv
                self._queue_row(m)
            proc = self._launch(argv, m.log_path, m.backend.env(self.config, m.cfg))
            try:
                proc.start()
            except Exception as exc:  # OSError, or ValueError for an unusable argv
                proc = None
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise LoadFailed(
                    f"could not start backend for '{m.name}': {argv[0]}: {why}"
                ) from None
            with self._locked():
                m.proc, m.port = proc, port
                m.exit_code = None
                self._queue_row(m)  # pid and argv on disk before we wait on it
            proc.watch(lambda p, code: self._on_exit(m, p, code))
            took = proc.wait_ready(port, m.backend.readiness(m.cfg), timeout, cancel=self._cancel)
            with self._locked():
                if m.state is State.LOADING and m.proc is proc:
                    if m.exit_code is not None:  # died right after answering the probe
                        raise ProcessExited(m.exit_code)
                    m.load_order = self._clock()
                    m.loaded_at = time.time()
                    m.last_used = self._clock()
                    m.last_used_at = time.time()
                    m.last_error = None
                    self._set_state(m, State.LOADED, f"ready in {took:.3f}s on port {port}")
                    return
            raise LoadFailed(f"model '{m.name}' was stopped while loading")
        except (ProcessExited, ReadyTimeout, NotServable, Cancelled, NoFreePort, LoadFailed) as exc:
            attempt.error = self._fail_load(m, proc, port, exc, timeout)
        except Exception as exc:  # never leave waiters hanging
            log.exception("load of %s crashed", m.name)
            attempt.error = self._fail_load(m, proc, port, exc, timeout)
        finally:
            with self._locked():
                if m.attempt is attempt:
                    m.attempt = None
                m.reserved = False
                self._cond.notify_all()
            attempt.done.set()

    def _wait_for_room(self, m: ModelRecord, deadline: float) -> None:
        """Wait until evicted processes have exited, then mark ``m`` loading."""
        with self._locked():
            while self._used_mb(exclude=m) + m.cfg.vram_mb > self.config.total_vram_mb:
                if self._closing:
                    raise Cancelled()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LoadFailed(
                        f"timed out waiting for evicted models to exit before loading '{m.name}'"
                    )
                self._cond.wait(min(remaining, 1.0))
            if self._closing:
                raise Cancelled()
            m.reserved = False
            self._set_state(m, State.LOADING, "requested")

    def _fail_load(
        self,
        m: ModelRecord,
        proc: ProcessLike | None,
        port: int | None,
        exc: BaseException,
        timeout: float,
    ) -> DynLLMError:
        if proc is not None:
            try:
                proc.stop(self.config.backend.stop_timeout_seconds)
            except Exception:  # the bookkeeping below must happen regardless
                log.exception("could not stop the backend of %s", m.name)
        # Once shutdown began, whatever went wrong is a consequence of it.
        cancelled = isinstance(exc, Cancelled) or self._cancel.is_set()
        if cancelled:
            what = f"load of '{m.name}' abandoned: DynLLM is shutting down"
        elif isinstance(exc, ProcessExited):
            code = describe_returncode(exc.returncode)
            what = f"backend for '{m.name}' exited during load with code {code}"
        elif isinstance(exc, NotServable):
            what = f"backend for '{m.name}' started but cannot serve the model: {exc}"
        elif isinstance(exc, ReadyTimeout):
            what = f"backend for '{m.name}' was not ready after {timeout:g}s (load timeout)"
        elif isinstance(exc, DynLLMError):
            what = exc.message
        else:
            what = f"load of '{m.name}' failed: {exc}"
        tail = log_tail(m.log_path, TAIL_LINES) if proc is not None and not cancelled else ""
        message = what + (f"\n--- last lines of {m.log_path} ---\n{tail}" if tail else "")
        with self._locked():
            if m.proc is proc:
                m.proc, m.port = None, None
            self._ports.release(port)
            if cancelled:
                return ShuttingDown(what)  # shutdown owns the state from here
            m.last_error = message
            if m.state in (State.LOADING, State.UNLOADED):
                # (from unloaded: it failed before a process existed)
                self._set_state(m, State.FAILED, what)
            elif m.state is State.FAILED:
                self._queue_row(m, f"model={m.name} load failed again: {what}")
        return LoadFailed(message)

    # --------------------------------------------------------------- stopping

    def _on_exit(self, m: ModelRecord, proc: ProcessLike, code: int) -> None:
        """Watcher callback: a backend process ended (for whatever reason)."""
        tail = log_tail(m.log_path, TAIL_LINES)
        with self._locked():
            if m.proc is not proc:
                return  # a stop already took care of it
            if m.state is State.LOADING:
                m.exit_code = code  # the load thread sees it before declaring the model loaded
                return
            if m.state is not State.LOADED:
                return  # being stopped: _stop handles it
            m.proc, port, m.port = None, m.port, None
            self._ports.release(port)
            what = f"backend exited unexpectedly with code {describe_returncode(code)}"
            m.last_error = what + (f"\n--- last lines of {m.log_path} ---\n{tail}" if tail else "")
            self._set_state(m, State.FAILED, what)

    def _stop(self, m: ModelRecord) -> None:
        """Stop a model already marked ``unloading`` and mark it ``unloaded``."""
        proc = m.proc
        code = proc.stop(self.config.backend.stop_timeout_seconds) if proc is not None else None
        with self._locked():
            if m.proc is proc:
                m.proc, port, m.port = None, m.port, None
                self._ports.release(port)
            if m.state is State.UNLOADING:
                self._set_state(m, State.UNLOADED, f"process exited ({describe_returncode(code)})")

    def _stop_many(self, models: list[ModelRecord]) -> None:
        if len(models) == 1:
            self._stop(models[0])
            return
        threads = [threading.Thread(target=self._stop, args=(m,), daemon=True) for m in models]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def unload(self, name: str, reason: str = "admin") -> str:
        """Stop a model that is not busy; returns the state it was in.

        A model that is serving or loading is refused with :class:`ModelBusy`
        (409): an unload never cuts a request short.
        """
        m = self._record(name)
        with self._locked():
            before = m.state
            if m.attempt is not None or m.state is State.LOADING:
                raise ModelBusy(f"model '{name}' is loading; try again when it is loaded")
            if m.leases > 0:
                raise ModelBusy(
                    f"model '{name}' is serving {m.leases} request(s); it will not be cut off"
                )
            if m.state is State.FAILED:
                m.last_error = None
                self._set_state(m, State.UNLOADED, f"{reason}: error cleared")
                return before.value
            if m.state is State.LOADED:
                self._set_state(m, State.UNLOADING, reason, cause="admin")
            elif m.state is State.UNLOADED:
                return before.value
        if before is State.LOADED:
            self._stop(m)
        else:  # already unloading: wait for it, within a bound
            deadline = time.monotonic() + self.config.backend.stop_timeout_seconds + 30
            with self._locked():
                while m.state is State.UNLOADING:
                    if time.monotonic() > deadline:
                        raise ModelBusy(f"model '{name}' is still unloading; try again later")
                    self._cond.wait(1.0)
        return before.value

    def sweep(self, now: float | None = None) -> list[str]:
        """Unload models idle longer than their timeout; returns their names.

        :param now: a clock reading (the registry's clock, monotonic by default);
            tests pass one instead of sleeping.
        """
        if now is None:
            now = self._clock()
        victims: list[ModelRecord] = []
        with self._locked():
            for m in self._models.values():
                if m.state is not State.LOADED or m.leases or m.attempt is not None:
                    continue
                limit = self.config.idle_timeout_for(m.cfg)
                idle = now - m.last_used
                if not math.isinf(limit) and idle >= limit:
                    self._set_state(
                        m, State.UNLOADING, f"idle for {idle:.0f}s (limit {limit:g}s)", cause="idle"
                    )
                    victims.append(m)
                elif m.last_used_at is not None:
                    self._queue_row(m)  # keep last_used_at on disk fresh
        self._stop_many(victims)
        return [m.name for m in victims]

    def load(self, name: str) -> None:
        """Load a model (preload, admin) and leave it idle."""
        self.acquire(name).release()

    # ----------------------------------------------------------------- startup

    def heal(self) -> list[str]:
        """Reset stale rows and kill backends an earlier (crashed) run left behind."""
        if self._store is None:
            return []
        leftovers = self._store.heal(set(self._models))
        killed = []
        for lo in leftovers:
            pids = kill_leftover(lo.pid, lo.argv, self.config.backend.stop_timeout_seconds)
            for pid in pids:
                log.warning(
                    "model=%s killed leftover backend pid=%s from an earlier run", lo.name, pid
                )
                killed.append(lo.name)
        return killed

    # ---------------------------------------------------------------- shutdown

    def shutdown(self, grace: float = 0.0) -> None:
        """Refuse new work, let in-flight requests finish for ``grace`` s, stop all backends."""
        deadline = time.monotonic() + grace
        with self._locked():
            self._closing = True
            while any(m.leases for m in self._models.values()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._cancel.set()
            victims = []
            for m in self._models.values():
                if m.state in (State.LOADED, State.LOADING):
                    self._set_state(m, State.UNLOADING, "shutdown", cause="shutdown")
                    victims.append(m)
                elif m.state is State.UNLOADING:
                    victims.append(m)
        self._stop_many(victims)
        # Loads that were between spawn and ready have noticed the cancel;
        # wait for their threads to record the outcome.
        with self._locked():
            end = time.monotonic() + self.config.backend.stop_timeout_seconds + 5
            while any(m.attempt is not None for m in self._models.values()):
                if time.monotonic() > end:
                    break
                self._cond.wait(0.5)

    # ---------------------------------------------------------------- reading

    def snapshot(self) -> dict[str, Any]:
        """Everything a person (or ``/admin/models``) wants to see, as plain data."""
        now = self._clock()
        with self._lock:
            models = []
            for m in self._models.values():
                limit = self.config.idle_timeout_for(m.cfg)
                idle = now - m.last_used if m.state is State.LOADED and not m.leases else None
                models.append(
                    {
                        "name": m.name,
                        "backend": m.cfg.backend,
                        "model_type": m.cfg.model_type,
                        "state": m.state.value,
                        "pending_load": m.attempt is not None and m.state is not State.LOADING,
                        "pid": m.proc.pid if m.proc is not None else None,
                        "port": m.port,
                        "vram_mb": m.cfg.vram_mb,
                        "in_flight": m.leases,
                        "loaded_at": m.loaded_at if m.state is State.LOADED else None,
                        "last_used_at": m.last_used_at,
                        "idle_seconds": round(idle, 3) if idle is not None else None,
                        "idle_timeout_seconds": None if math.isinf(limit) else limit,
                        "unload_in_seconds": (
                            max(0.0, round(limit - idle, 3))
                            if idle is not None and not math.isinf(limit)
                            else None
                        ),
                        "last_error": m.last_error,
                        "log_path": str(m.log_path),
                        "path": m.cfg.path,
                    }
                )
            used = self._used_mb()
        return {
            "total_vram_mb": self.config.total_vram_mb,
            "used_vram_mb": used,
            "free_vram_mb": self.config.total_vram_mb - used,
            "models": models,
        }

    def state_of(self, name: str) -> State:
        with self._lock:
            return self._models[name].state

    def states(self) -> dict[str, str]:
        with self._lock:
            return {name: m.state.value for name, m in self._models.items()}
