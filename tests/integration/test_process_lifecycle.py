"""Idle unload, admin unload, backend deaths, SIGTERM and recovery after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

from tests.support.harness import (
    DynLLM,
    chat_in_background,
    live_pids_matching,
    pid_alive,
    sse_events,
    wait_for,
)


def test_idle_model_is_unloaded_by_the_sweeper(dynllm, spec) -> None:
    d = dynllm(
        [spec("quick", unload_time=1), spec("keep", unload_time=-1), spec("default")],
        server={"sweep_interval_seconds": 0.2},
        idle_timeout_seconds=3600,
    )
    for n in ("quick", "keep", "default"):
        assert d.chat(n, max_tokens=1).status_code == 200
    pid = d.admin()["quick"]["pid"]
    wait_for(lambda: d.state("quick") == "unloaded", timeout=10)
    assert not pid_alive(pid)
    assert d.state("keep") == "loaded" and d.state("default") == "loaded"
    assert "reason=idle for" in d.log()


def test_idle_time_counts_from_the_end_of_the_last_request(dynllm, spec) -> None:
    d = dynllm(
        [spec("a", unload_time=1, token_delay=0.25, tokens=8)],
        server={"sweep_interval_seconds": 0.2},
    )
    events = []
    resp = d.chat("a", stream=True, max_tokens=8)  # 2 s of streaming, longer than unload_time
    for line in resp.iter_lines():
        if line:
            events.append(line)
            assert d.state("a") == "loaded"
    assert events[-1] == b"data: [DONE]"
    wait_for(lambda: d.state("a") == "unloaded", timeout=10)


def test_admin_unload(dynllm, spec) -> None:
    d = dynllm([spec("a", token_delay=0.2, tokens=10)])
    assert d.post("/admin/models/unload", json={"model": "a"}).json()["state"] == "unloaded"
    stream = d.chat("a", stream=True, max_tokens=10)
    wait_for(lambda: d.admin()["a"]["in_flight"] == 1)
    r = d.post("/admin/models/unload", json={"model": "a"})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "model_busy"
    assert [line for line in stream.iter_lines() if line][-1] == b"data: [DONE]"  # not cut
    wait_for(lambda: d.admin()["a"]["in_flight"] == 0)
    pid = d.admin()["a"]["pid"]
    r = d.post("/admin/models/unload", json={"model": "a"})
    assert r.status_code == 200 and r.json() == {
        "model": "a",
        "previous_state": "loaded",
        "state": "unloaded",
    }
    assert not pid_alive(pid)
    assert d.post("/admin/models/unload", json={"model": "zz"}).status_code == 404
    bad = {"Content-Type": "application/json"}
    assert d.post("/admin/models/unload", data=b"{", headers=bad).status_code == 400
    assert d.post("/admin/models/unload", data=b"{").status_code == 415
    assert d.post("/admin/models/load", json={"model": "a"}).json()["state"] == "loaded"


def test_kill_9_of_a_loaded_backend_is_noticed_and_healed(dynllm, spec, models) -> None:
    d = dynllm([spec("a")])
    assert d.chat("a", max_tokens=1).status_code == 200
    pid = d.admin()["a"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: d.state("a") == "failed")
    info = d.admin()["a"]
    assert "SIGKILL" in info["last_error"] and info["pid"] is None
    assert "backend exited unexpectedly" in d.log()
    assert d.chat("a", max_tokens=1).status_code == 200
    assert d.admin()["a"]["pid"] != pid
    assert len(models.starts("a")) == 2


def test_a_request_whose_backend_is_killed_before_answering_is_sent_again(
    dynllm, spec, models
) -> None:
    d = dynllm([spec("a", token_delay=0.4)])
    assert d.chat("a", max_tokens=1).status_code == 200
    pid = d.admin()["a"]["pid"]
    pending = chat_in_background(d, "a", max_tokens=5)  # 2 s before the backend answers
    wait_for(lambda: d.admin()["a"]["in_flight"] == 1)
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: "response" in pending or "error" in pending, timeout=30)
    r = pending["response"]
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 5
    assert d.admin()["a"]["pid"] not in (None, pid)
    assert len(models.starts("a")) == 2
    assert "backend died before answering; retrying once" in d.log()


def test_a_backend_that_dies_on_every_try_is_retried_only_once(dynllm, spec, models) -> None:
    d = dynllm([spec("a", crash_after_tokens=3)])
    assert d.chat("a", max_tokens=1).status_code == 200
    r = d.chat("a", max_tokens=5)
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "backend_unavailable"
    assert len(models.starts("a")) == 2
    # A stream that has begun is never sent again: the client sees an error event.
    r = d.chat("a", stream=True, max_tokens=5)
    events = sse_events(r)
    assert events and json.loads(events[-1])["error"]["code"] == "backend_stream_error"
    assert len(models.starts("a")) == 3


def test_sigterm_stops_every_backend_and_exits_zero(dynllm, spec, models) -> None:
    d = dynllm([spec("a"), spec("stubborn", ignore_sigterm=True), spec("slow", load_delay=30)])
    assert d.chat("a", max_tokens=1).status_code == 200
    assert d.chat("stubborn", max_tokens=1).status_code == 200
    chat_in_background(d, "slow", max_tokens=1)
    wait_for(lambda: models.starts("slow"))
    pids = [p for p, _ in models.starts("a") + models.starts("stubborn") + models.starts("slow")]
    assert d.stop(signal.SIGTERM) == 0
    assert not [p for p in pids if pid_alive(p)]
    assert "ignored SIGTERM" in d.log()  # the stubborn one needed SIGKILL
    assert not live_pids_matching(str(models.root))
    with sqlite3.connect(d.config.parent / "state.db") as db:
        rows = dict(db.execute("SELECT name, state FROM models").fetchall())
    assert rows == {"a": "unloaded", "stubborn": "unloaded", "slow": "unloaded"}


def test_sigint_also_stops_cleanly(dynllm, spec) -> None:
    d = dynllm([spec("a")])
    assert d.chat("a", max_tokens=1).status_code == 200
    pid = d.admin()["a"]["pid"]
    assert d.stop(signal.SIGINT) == 0
    assert not pid_alive(pid)


def test_restart_after_sigkill_kills_leftovers_and_reports_true_states(
    dynllm, spec, models, tmp_path
) -> None:
    d = dynllm([spec("a", 300), spec("b", 300), spec("c", 300, load_delay=30)])
    assert d.chat("a", max_tokens=1).status_code == 200
    assert d.chat("b", max_tokens=1).status_code == 200
    chat_in_background(d, "c", max_tokens=1)
    wait_for(lambda: models.starts("c"))
    old = [p for n in "abc" for p, _ in models.starts(n)]
    assert len(old) == 3
    d.stop(signal.SIGKILL)
    assert all(pid_alive(p) for p in old)  # orphans, as after a real crash
    unrelated = live_pids_matching("sleep 3600")  # nothing of ours must be touched
    d2 = DynLLM(tmp_path / "config.yaml").start()
    try:
        assert not [p for p in old if pid_alive(p)]
        assert {n: m["state"] for n, m in d2.admin().items()} == {
            "a": "unloaded",
            "b": "unloaded",
            "c": "unloaded",
        }
        assert d2.log().count("killed leftover backend") == 3
        assert live_pids_matching("sleep 3600") == unrelated
        assert d2.chat("a", max_tokens=1).status_code == 200
    finally:
        assert d2.stop() == 0
    assert not live_pids_matching(str(models.root))


def test_healing_leaves_an_unrelated_process_with_a_recycled_pid_alone(tmp_path, spec) -> None:
    import sqlite3
    import subprocess

    from tests.support.harness import write_config

    cfg = write_config(tmp_path / "config.yaml", [spec("a")])
    d = DynLLM(cfg).start()
    assert d.stop() == 0
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        # Pretend the db says "a" was loaded in a process that now is `sleep`.
        with sqlite3.connect(tmp_path / "state.db") as db:
            db.execute(
                "UPDATE models SET state='loaded', pid=?, argv=? WHERE name='a'",
                (stranger.pid, '["llama-server", "-m", "x"]'),
            )
        d2 = DynLLM(cfg).start()
        assert d2.state("a") == "unloaded"
        assert stranger.poll() is None  # still alive
        assert d2.stop() == 0
    finally:
        stranger.kill()
        stranger.wait()


def test_port_in_use_is_a_clear_error_before_any_preload(tmp_path, spec, models) -> None:
    import socket
    import subprocess
    import sys

    from tests.support.harness import write_config

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        cfg = write_config(tmp_path / "config.yaml", [spec("a")], preload_models=["a"])
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "dynllm",
                "--config",
                str(cfg),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        blocker.close()
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr
    assert "Traceback" not in out.stderr
    assert models.starts("a") == []  # nothing was preloaded for nothing


def test_a_foreign_process_answering_on_the_backends_port_is_not_taken_for_it(tmp_path) -> None:
    """Another program holds the port (our backend would fail to bind): the probe's 200
    comes from it, and must not make DynLLM route requests there."""
    import http.server
    import socket
    import threading

    import pytest

    from dynllm.backends import Probe
    from dynllm.process import BackendProcess, NotServable, listening_pids

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    foreign = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    port = foreign.server_address[1]
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    proc = BackendProcess(["sleep", "30"], tmp_path / "b.log")
    proc.start()
    try:
        import os

        assert listening_pids(port) == {os.getpid()}
        with pytest.raises(NotServable, match=f"port {port} is held by another process"):
            proc.wait_ready(port, [Probe("GET", "/health")], timeout=5)
    finally:
        proc.stop(1)
        foreign.shutdown()
        foreign.server_close()
    # Our own listener is recognised as ours.
    script = tmp_path / "serve.py"
    script.write_text(
        "import http.server, sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200)\n"
        "        self.send_header('Content-Length', '0')\n"
        "        self.end_headers()\n"
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import sys

    own = BackendProcess([sys.executable, str(script), str(port)], tmp_path / "c.log")
    own.start()
    try:
        assert own.wait_ready(port, [Probe("GET", "/health")], timeout=10) >= 0
    finally:
        own.stop(1)
