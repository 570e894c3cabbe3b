"""Registry logic with an in-memory process stand-in (no subprocesses, no sockets)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dynllm.config import Config, build_config
from dynllm.errors import LoadFailed, ModelBusy, ModelNotFound, ModelUnavailable, NoCapacity
from dynllm.process import ProcessExited, ReadyTimeout
from dynllm.registry import ModelRegistry
from dynllm.states import State
from dynllm.store import Store


class StubProcess:
    """Stands in for BackendProcess; behaviour chosen per model by ``Launcher.plan``."""

    _pids = iter(range(10_000, 99_999))

    def __init__(self, argv: list[str], log_path: Path, behaviour: dict[str, Any]) -> None:
        self.argv = argv
        self.log_path = log_path
        self.behaviour = behaviour
        self._pid = next(self._pids)
        self.code: int | None = None
        self.on_exit: Callable[[Any, int], None] | None = None
        self.stopped = False

    @property
    def pid(self) -> int:
        return self._pid

    def start(self) -> None:
        on_start = self.behaviour.get("on_start")
        if on_start is not None:
            on_start(self)
        if self.behaviour.get("spawn_error"):
            raise FileNotFoundError(2, "No such file or directory")
        if self.behaviour.get("bad_argv"):
            raise ValueError("embedded null byte")

    def poll(self) -> int | None:
        return self.code

    def watch(self, on_exit: Callable[[Any, int], None]) -> None:
        self.on_exit = on_exit

    def wait_ready(self, port: int, probe: Any, timeout: float, **_: Any) -> float:
        gate = self.behaviour.get("gate")
        if gate is not None:
            gate.wait(5)
        if self.behaviour.get("exit_code") is not None:
            self.code = self.behaviour["exit_code"]
            raise ProcessExited(self.code)
        if self.behaviour.get("timeout"):
            raise ReadyTimeout("not ready")
        if self.behaviour.get("die_after_ready"):
            self.crash(-11)  # the watcher reports it before the load thread moves on
        return 0.001

    def stop(self, grace: float) -> int:
        gate = self.behaviour.get("stop_gate")
        if gate is not None:
            gate.wait(5)
        self.stopped = True
        self.code = 0 if self.code is None else self.code
        return self.code

    def crash(self, code: int = -9) -> None:
        self.code = code
        assert self.on_exit is not None
        self.on_exit(self, code)


class Launcher:
    def __init__(self) -> None:
        self.started: list[StubProcess] = []
        self.plan: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def __call__(self, argv: list[str], log_path: Path, env: dict[str, str]) -> StubProcess:
        name = argv[argv.index("--alias") + 1]
        p = StubProcess(argv, log_path, self.plan.get(name, {}))
        with self.lock:
            self.started.append(p)
        return p

    def for_model(self, name: str) -> list[StubProcess]:
        return [p for p in self.started if p.argv[p.argv.index("--alias") + 1] == name]


def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.002)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_config(tmp_path: Path, models: list[tuple[str, int]], **top: Any) -> Config:
    raw: dict[str, Any] = {"total_vram_mb": 1000, "db_path": str(tmp_path / "s.db"), **top}
    raw["models"] = []
    for name, vram in models:
        f = tmp_path / f"{name}.gguf"
        f.write_bytes(b"")
        raw["models"].append({"name": name, "path": str(f), "backend": "llamacpp", "vram_mb": vram})
    return build_config(raw, tmp_path)


@pytest.fixture
def env(tmp_path: Path):  # noqa: ANN201
    def make(models: list[tuple[str, int]], **top: Any) -> tuple[ModelRegistry, Launcher, Clock]:
        launcher, clock = Launcher(), Clock()
        cfg = make_config(tmp_path, models, **top)
        return (
            ModelRegistry(cfg, Store(cfg.db_path), launcher=launcher, clock=clock),
            launcher,
            clock,
        )

    return make


def test_acquire_loads_and_leases(env) -> None:
    reg, launcher, _ = env([("a", 500)])
    lease = reg.acquire("a")
    assert reg.state_of("a") is State.LOADED
    assert lease.port >= 9100
    assert reg.snapshot()["models"][0]["in_flight"] == 1
    lease.release()
    lease.release()  # idempotent
    assert reg.snapshot()["models"][0]["in_flight"] == 0
    assert len(launcher.started) == 1


def test_unknown_model(env) -> None:
    reg, _, _ = env([("a", 1)])
    with pytest.raises(ModelNotFound):
        reg.acquire("nope")


def test_single_flight_under_concurrency(env) -> None:
    reg, launcher, _ = env([("a", 500)])
    gate = threading.Event()
    launcher.plan["a"] = {"gate": gate}
    leases, errors = [], []

    def worker() -> None:
        try:
            leases.append(reg.acquire("a"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    _until(lambda: reg.snapshot()["models"][0]["in_flight"] == 10)  # all ten share one load
    gate.set()
    for t in threads:
        t.join(5)
    assert not errors
    assert len(leases) == 10
    assert len(launcher.started) == 1


def test_failed_load_gives_every_waiter_the_same_error_then_retries(env) -> None:
    reg, launcher, _ = env([("a", 500)])
    gate = threading.Event()
    launcher.plan["a"] = {"gate": gate, "exit_code": 1}
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            reg.acquire("a")
        except LoadFailed as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    _until(lambda: reg.snapshot()["models"][0]["in_flight"] == 5)  # all five are waiting
    gate.set()
    for t in threads:
        t.join(5)
    assert len(errors) == 5 and len({id(e) for e in errors}) == 1
    assert "exited during load with code 1" in str(errors[0])
    snap = reg.snapshot()["models"][0]
    assert snap["state"] == "failed" and "code 1" in snap["last_error"]
    assert snap["in_flight"] == 0
    launcher.plan["a"] = {}
    reg.acquire("a").release()  # the next request tries again
    assert reg.state_of("a") is State.LOADED
    assert len(launcher.started) == 2


def test_spawn_error_is_a_load_failure(env) -> None:
    reg, launcher, _ = env([("a", 500)])
    launcher.plan["a"] = {"spawn_error": True}
    with pytest.raises(LoadFailed, match="could not start backend"):
        reg.acquire("a")
    assert reg.state_of("a") is State.FAILED


def test_lifo_eviction(env) -> None:
    reg, launcher, clock = env([("a", 400), ("b", 400), ("c", 400)])
    reg.acquire("a").release()
    clock.now += 1
    reg.acquire("b").release()
    clock.now += 1
    reg.acquire("c").release()  # needs 400 more: b, the most recent, goes
    assert reg.states() == {"a": "loaded", "b": "unloaded", "c": "loaded"}
    assert launcher.for_model("b")[0].stopped


def test_busy_model_is_not_evicted(env) -> None:
    reg, _, clock = env([("a", 400), ("b", 400), ("c", 400)])
    reg.acquire("a").release()
    clock.now += 1
    busy = reg.acquire("b")
    clock.now += 1
    reg.acquire("c").release()
    assert reg.states() == {"a": "unloaded", "b": "loaded", "c": "loaded"}
    busy.release()


def test_all_busy_gives_no_capacity_with_retry_after(env) -> None:
    reg, launcher, _ = env([("a", 600), ("b", 600)])
    held = reg.acquire("a")
    with pytest.raises(NoCapacity) as info:
        reg.acquire("b")
    assert info.value.status == 503
    assert int(info.value.headers["Retry-After"]) > 0
    assert reg.states() == {"a": "loaded", "b": "unloaded"}
    assert len(launcher.started) == 1  # nothing started for b
    held.release()


def test_model_larger_than_budget_starts_nothing(env) -> None:
    reg, launcher, _ = env([("a", 400), ("huge", 5000)])
    reg.acquire("a").release()
    with pytest.raises(ModelUnavailable, match="more than the whole budget"):
        reg.acquire("huge")
    assert reg.states()["a"] == "loaded"  # nothing evicted
    assert len(launcher.started) == 1


def test_missing_file_starts_nothing(env, tmp_path: Path) -> None:
    reg, launcher, _ = env([("a", 400)])
    (tmp_path / "a.gguf").unlink()
    with pytest.raises(ModelUnavailable, match="not found"):
        reg.acquire("a")
    assert launcher.started == []


def test_sweep_unloads_only_idle_models(env) -> None:
    reg, _, clock = env([("a", 100), ("b", 100), ("forever", 100)], idle_timeout_seconds=60)
    reg.config.models[2].unload_time = float("inf")
    reg.acquire("a").release()
    reg.acquire("forever").release()
    held = reg.acquire("b")
    clock.now += 59
    assert reg.sweep() == []
    assert reg.sweep(now=clock.now + 1) == ["a"]  # idle counts from the end of the request
    assert reg.states() == {"a": "unloaded", "b": "loaded", "forever": "loaded"}
    held.release()  # b's idle time starts now
    assert reg.sweep(now=clock.now + 30) == []
    assert reg.sweep(now=clock.now + 60) == ["b"]
    assert reg.sweep(now=clock.now + 10**9) == []
    assert reg.states()["forever"] == "loaded"


def test_readiness_polls_never_keep_a_model_loaded(env) -> None:
    reg, _, clock = env([("a", 100), ("b", 100)], idle_timeout_seconds=60)
    assert reg.lease_if_loaded("a") is None  # not loaded: nothing started
    assert reg.states()["a"] == "unloaded"
    reg.acquire("a").release()
    for _ in range(10):  # a health checker polling every 10 s
        clock.now += 10
        probe = reg.lease_if_loaded("a")
        assert probe is not None
        probe.release()
    assert reg.sweep() == ["a"]  # 100 s after the last real request
    # A real request that ends while a probe is in flight still counts as use.
    reg.acquire("b").release()
    clock.now += 50
    probe = reg.lease_if_loaded("b")
    real = reg.acquire("b")
    real.release()
    probe.release()  # type: ignore[union-attr]
    assert reg.sweep(now=clock.now + 59) == []
    assert reg.sweep(now=clock.now + 60) == ["b"]


def test_per_model_unload_time(env) -> None:
    reg, _, clock = env([("a", 100), ("b", 100)], idle_timeout_seconds=600)
    reg.config.models[0].unload_time = 5
    reg.acquire("a").release()
    reg.acquire("b").release()
    assert reg.sweep(now=clock.now + 5) == ["a"]


def test_admin_unload_refuses_busy_and_stops_idle(env) -> None:
    reg, launcher, _ = env([("a", 100)])
    lease = reg.acquire("a")
    with pytest.raises(ModelBusy):
        reg.unload("a")
    assert reg.state_of("a") is State.LOADED
    lease.release()
    assert reg.unload("a") == "loaded"
    assert reg.state_of("a") is State.UNLOADED
    assert launcher.started[0].stopped
    assert reg.unload("a") == "unloaded"


def test_backend_death_while_loaded_is_noticed_and_next_request_restarts(env) -> None:
    reg, launcher, _ = env([("a", 100)])
    reg.acquire("a").release()
    launcher.started[0].crash(-9)
    snap = reg.snapshot()["models"][0]
    assert snap["state"] == "failed"
    assert "SIGKILL" in snap["last_error"]
    assert reg.snapshot()["used_vram_mb"] == 0
    reg.acquire("a").release()
    assert reg.state_of("a") is State.LOADED
    assert len(launcher.started) == 2


def test_load_timeout_frees_budget(env) -> None:
    reg, launcher, _ = env([("a", 800), ("b", 800)])
    launcher.plan["a"] = {"timeout": True}
    with pytest.raises(LoadFailed, match="load timeout"):
        reg.acquire("a")
    assert launcher.started[0].stopped
    assert reg.snapshot()["used_vram_mb"] == 0
    reg.acquire("b").release()


def test_states_are_persisted_and_failed_survives_restart(env, tmp_path: Path) -> None:
    reg, launcher, _ = env([("a", 100), ("b", 100)])
    reg.acquire("a").release()
    launcher.plan["b"] = {"exit_code": 3}
    with pytest.raises(LoadFailed):
        reg.acquire("b")
    rows = Store(tmp_path / "s.db").load_all()
    assert rows["a"].state is State.LOADED and rows["a"].pid == launcher.started[0].pid
    assert rows["a"].argv == launcher.started[0].argv
    assert rows["b"].state is State.FAILED and "code 3" in (rows["b"].last_error or "")
    reg2 = ModelRegistry(reg.config, Store(tmp_path / "s.db"), launcher=Launcher())
    assert reg2.states()["b"] == "failed"


def test_shutdown_stops_everything_and_refuses_new_work(env) -> None:
    reg, launcher, _ = env([("a", 100), ("b", 100)])
    reg.acquire("a").release()
    reg.acquire("b").release()
    reg.shutdown()
    assert reg.states() == {"a": "unloaded", "b": "unloaded"}
    assert all(p.stopped for p in launcher.started)
    with pytest.raises(Exception, match="shutting down"):
        reg.acquire("a")


def test_new_model_starts_only_after_its_victim_has_exited(env) -> None:
    reg, launcher, clock = env([("a", 600), ("b", 600)])
    exit_gate = threading.Event()
    launcher.plan["a"] = {"stop_gate": exit_gate}
    reg.acquire("a").release()
    clock.now += 1
    t = threading.Thread(target=lambda: reg.acquire("b").release())
    t.start()
    _until(lambda: reg.state_of("a") is State.UNLOADING)
    snap = reg.snapshot()
    states = {m["name"]: m["state"] for m in snap["models"]}
    assert states == {"a": "unloading", "b": "unloaded"}
    assert snap["models"][1]["pending_load"] is True
    assert snap["used_vram_mb"] == 600 <= snap["total_vram_mb"]
    assert len(launcher.started) == 1  # b not spawned while a still holds its memory
    exit_gate.set()
    t.join(5)
    assert reg.states() == {"a": "unloaded", "b": "loaded"}
    assert reg.snapshot()["used_vram_mb"] == 600


def test_no_free_port_fails_before_any_process(env) -> None:
    reg, launcher, _ = env(
        [("a", 10), ("b", 10)], backend={"port_range_start": 9100, "port_range_end": 9101}
    )
    reg._ports._taken.update({9100, 9101})  # both ports held by (imaginary) others
    with pytest.raises(LoadFailed, match="no free port"):
        reg.acquire("a")
    assert reg.state_of("a") is State.FAILED
    assert launcher.started == []


def test_backend_dying_right_after_its_probe_is_not_declared_loaded(env) -> None:
    reg, launcher, _ = env([("a", 100)])
    launcher.plan["a"] = {"die_after_ready": True}
    with pytest.raises(LoadFailed, match="SIGSEGV"):
        reg.acquire("a")
    assert reg.state_of("a") is State.FAILED
    assert reg.snapshot()["used_vram_mb"] == 0


def test_unusable_argv_fails_the_load_instead_of_sticking_in_loading(env) -> None:
    reg, launcher, _ = env([("a", 100)])
    launcher.plan["a"] = {"bad_argv": True}
    with pytest.raises(LoadFailed, match="embedded null byte"):
        reg.acquire("a")
    snap = reg.snapshot()
    assert snap["models"][0]["state"] == "failed" and snap["used_vram_mb"] == 0
    assert reg._ports.in_use() == set()
    launcher.plan["a"] = {}
    reg.acquire("a").release()
    assert reg.state_of("a") is State.LOADED


def test_the_command_line_is_on_disk_before_the_backend_is_started(env, tmp_path: Path) -> None:
    """A DynLLM killed right after a spawn must still find that process when it restarts."""
    reg, launcher, _ = env([("a", 500)])
    seen: list[tuple[str, list[str], int | None]] = []

    def look(proc: StubProcess) -> None:
        row = Store(tmp_path / "s.db").load_all()["a"]
        seen.append((row.state.value, row.argv, row.pid))

    launcher.plan["a"] = {"on_start": look}
    reg.acquire("a").release()
    proc = launcher.started[0]
    assert seen == [("loading", proc.argv, None)]
