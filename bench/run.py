"""DynLLM benchmark: direct backend vs a minimal relay vs DynLLM, side by side.

    uv run python bench/run.py [--quick] [--out bench/results/NAME.json]

Everything runs against tests/support/fake_llama_server.py.  See bench/README.md for
what each figure means.  Every process started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.harness import live_pids_matching  # noqa: E402

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
FAKE = REPO / "tests" / "support" / "fake_llama_server.py"
LOADGEN = BENCH / "loadgen.py"
MINIMAL = BENCH / "minimal_relay.py"
LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)")
FAKE_READY = re.compile(r"server is listening on http://([\d.]+):(\d+)")

UNPACED_TOKENS = 2000  # tokens per unpaced stream: the relay's ceiling
PACED_TOKENS = 50  # tokens per paced stream (1 s at 50 tokens/s)
PACED_DELAY = 0.02  # seconds per token: 50 tokens/s per stream
NONSTREAM_TOKENS = 16
SHORT_STREAM_TOKENS = 8  # keep-alive check: short streams expose per-request cost
STORM_CLIENTS = 120  # abort storm: unread fast streams per round ...
STORM_HOLD = 2.0  # ... left unread this long, then reset
BACKEND_ARGS = ["-ngl", "-1", "-c", "4096"]  # what DynLLM passes (llama.cpp defaults)

# (warmup, measured window) in seconds per round; rounds are interleaved across targets
FULL = {
    "rounds": 5,  # non-stream and unpaced figures
    "paced_rounds": 2,  # paced figures (steady; the backend sets the pace)
    "ns1": (0.2, 1.0),
    "ns16": (0.2, 1.2),
    "un1": (0.2, 1.0),
    "un64": (0.5, 1.5),
    "pa1": (0.3, 2.3),  # a 1 s stream must fit wholly in the window twice
    "pa64": (1.3, 2.0),  # warmup covers the 1 s stagger
    "cold_reps": 7,
    "ka_n": 150,
    "ka_rounds": 8,
    "storm_rounds": 3,
}
QUICK = {
    "rounds": 1,
    "paced_rounds": 1,
    "ns1": (0.2, 0.8),
    "ns16": (0.2, 0.8),
    "un1": (0.3, 0.8),
    "un64": (0.5, 1.0),
    "pa1": (0.3, 2.2),
    "pa64": (1.2, 1.2),
    "cold_reps": 3,
    "ka_n": 60,
    "ka_rounds": 1,
    "storm_rounds": 0,  # the abort storm is skipped
}
TARGETS = ("direct", "minimal", "dynllm")


# --------------------------------------------------------------------------- processes


class Proc:
    """A child process in its own session, output to a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, cwd: Path | None = None) -> None:
        self.name = name
        self.log_path = log
        with open(log, "ab") as f:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=str(cwd) if cwd else None,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: re.Pattern[str], timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            m = pattern.search(self.log())
            if m:
                return m
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.popen.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.log()}")
            time.sleep(0.01)

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # anything it left in its group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Bench:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.d = QUICK if quick else FULL
        self.tmp = Path(tempfile.mkdtemp(prefix="dynllm-bench-"))
        self.procs: list[Proc] = []
        self.models = self.tmp / "models"
        self.models.mkdir()
        self.knobs = {
            "fast": {"tokens": UNPACED_TOKENS, "token_delay": 0.0},
            "paced": {"tokens": PACED_TOKENS, "token_delay": PACED_DELAY},
            "cold": {"tokens": NONSTREAM_TOKENS, "token_delay": 0.0},
        }
        for name, knobs in self.knobs.items():
            (self.models / f"{name}.gguf").write_text(
                json.dumps({**knobs, "record_requests": False})
            )
        self.ports: dict[str, dict[str, int]] = {t: {} for t in TARGETS}
        self.pids: dict[str, dict[str, int]] = {t: {} for t in TARGETS}

    # -- starting things
    def start(self, name: str, argv: list[str], cwd: Path | None = None) -> Proc:
        p = Proc(name, argv, self.tmp / f"{name}.log", cwd)
        self.procs.append(p)
        return p

    def start_fake(self, name: str, model: str) -> tuple[Proc, int]:
        p = self.start(
            name,
            [str(FAKE), "-m", str(self.models / f"{model}.gguf"), "--host", "127.0.0.1"]
            + ["--port", "0", *BACKEND_ARGS, "--alias", model],
        )
        m = p.wait_for_log(FAKE_READY)
        return p, int(m.group(2))

    def start_minimal(self, name: str, backend_port: int, patch: bool = True) -> tuple[Proc, int]:
        argv = [sys.executable, str(MINIMAL), "--backend", f"http://127.0.0.1:{backend_port}"]
        if not patch:
            argv.append("--no-keepalive-patch")
        p = self.start(name, argv)
        return p, int(p.wait_for_log(LISTENING).group(2))

    def write_config(self, folder: Path, port_start: int) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        models = [
            {"name": n, "path": str(self.models / f"{n}.gguf"), "backend": "llamacpp"}
            | {"vram_mb": 100}
            for n in self.knobs
        ]
        cfg = {
            "total_vram_mb": 1000,
            "idle_timeout_seconds": -1,
            "db_path": str(folder / "state.db"),
            "enabled_backends": ["llamacpp"],
            "backend": {
                "llamacpp_binary": str(FAKE),
                "port_range_start": port_start,
                "port_range_end": port_start + 49,
                "stop_timeout_seconds": 2,
            },
            "models": models,
        }
        path = folder / "config.yaml"
        path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
        return path

    def start_dynllm(self, name: str, folder: Path, port_start: int, patch: bool = True):
        cfg = self.write_config(folder, port_start)
        common = ["--config", str(cfg), "--host", "127.0.0.1", "--port", "0"]
        if patch:
            argv = [sys.executable, "-m", "dynllm", *common]
        else:  # the same DynLLM with make_server(chunked_keepalive=False); nothing edited
            code = (
                "import sys, dynllm.server as s; o = s.make_server; "
                "s.make_server = lambda app, cfg, chunked_keepalive=True: o(app, cfg, False); "
                "from dynllm.cli import main; sys.exit(main(sys.argv[1:]))"
            )
            argv = [sys.executable, "-c", code, *common]
        p = self.start(name, argv, cwd=REPO)
        return p, int(p.wait_for_log(LISTENING).group(2))

    def stop_all(self) -> list[int]:
        for p in reversed(self.procs):
            try:
                p.stop()
            except Exception as exc:  # keep stopping the others
                print(f"warning: stopping {p.name}: {exc}", file=sys.stderr)
        deadline = time.monotonic() + 5
        left = live_pids_matching(str(self.tmp))
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = live_pids_matching(str(self.tmp))
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return left


# --------------------------------------------------------------------------- HTTP helpers


def http_json(port: int, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status >= 400:
            raise RuntimeError(f"{method} {path} -> {resp.status}: {raw[:300]!r}")
        return json.loads(raw) if raw else None
    finally:
        conn.close()


def chat_body(model: str, stream: bool, max_tokens: int | None = None) -> str:
    b: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Hello"}]}
    if max_tokens is not None:
        b["max_tokens"] = max_tokens
    if stream:
        b["stream"] = True
    return json.dumps(b)


def raw_ttfb(port: int, body: str, t_start: float) -> tuple[float, bytes]:
    """POST a chat request; seconds from ``t_start`` to the first response byte."""
    data = body.encode()
    req = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + data
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(req)
        first = s.recv(65536)
        t = time.perf_counter() - t_start
        rest = [first]
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest.append(chunk)
    return t, b"".join(rest)


def health_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def slow_reader_storm(port: int, clients: int, hold: float) -> None:
    """``clients`` fast streams whose readers read nothing for ``hold`` seconds, then reset."""
    body = chat_body("fast", True).encode()
    req = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    socks = []
    try:
        for _ in range(clients):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(req)
            socks.append(s)
        time.sleep(hold)
    finally:
        for s in socks:  # RST, like a client that is killed or times out
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()


def answers(port: int, timeout: float = 5.0) -> bool:
    """Does one small non-stream request get an answer within ``timeout``?"""
    probe = json.loads(chat_body("fast", False, 1))
    try:
        http_json(port, "POST", "/v1/chat/completions", probe, timeout=timeout)
        return True
    except (OSError, RuntimeError):
        return False


def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(LOADGEN)],
        input=json.dumps(spec).encode(),
        capture_output=True,
        timeout=spec.get("warmup", 0) + spec.get("duration", 0) + 120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr.decode(errors='replace')}")
    return json.loads(out.stdout)


# --------------------------------------------------------------------------- statistics


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))  # nearest rank
    return s[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --------------------------------------------------------------------------- the figures


class Runner:
    """Runs each measurement for every target, round after round, and keeps the samples."""

    def __init__(self, b: Bench) -> None:
        self.b = b
        self.rounds: dict[str, dict[str, list[float]]] = {}  # per-round values
        self.pools: dict[str, dict[str, list[float]]] = {}  # pooled samples (percentiles)
        self.fig: dict[str, dict[str, Any]] = {}  # figure -> {target: value}
        self.raw: dict[str, Any] = {"runs": []}
        self.dead: dict[str, str] = {}  # target -> why it is no longer measured

    def add(self, figure: str, target: str, value: float) -> None:
        self.rounds.setdefault(figure, {}).setdefault(target, []).append(value)

    def pool(self, figure: str, target: str, values: list[float]) -> None:
        self.pools.setdefault(figure, {}).setdefault(target, []).extend(values)

    def put(self, figure: str, target: str, value: float) -> None:
        self.fig.setdefault(figure, {})[target] = value

    def order(self, rnd: int) -> list[str]:
        k = rnd % len(TARGETS)  # rotate, so no target always runs first
        return [t for t in TARGETS[k:] + TARGETS[:k] if t not in self.dead]

    def run_spec(self, target: str, key: str, body: str, conns: int, **kw: Any) -> dict | None:
        warm, dur = self.b.d[key]
        pids = self.b.pids[target]
        cpu = {"backend": pids["backend"], "proxy": pids.get("proxy")}
        spec = {
            "port": self.b.ports[target][kw.pop("port_key", "fast")],
            "body": body,
            "conns": conns,
            "warmup": warm,
            "duration": dur,
            "cpu_pids": {k: v for k, v in cpu.items() if v},
            "drain_timeout": 10.0,
            **kw,
        }
        r = loadgen(spec)
        summary = {k: v for k, v in r.items() if k not in ("latencies", "ttfb", "ttft", "gaps")}
        self.raw["runs"].append({"figure": key, "target": target, **summary})
        if r["errors"] or r["bad_status"]:
            print(f"  ! {key}/{target}: errors={r['errors']} {r['bad_status']}", file=sys.stderr)
        if r["stalled"]:
            self.dead[target] = f"stopped answering during {key}"
            print(f"  ! {target} stalled during {key}; not measured further", file=sys.stderr)
            return None
        return r

    def nonstream(self, rnd: int, conns: int) -> None:
        key = f"ns{conns}"
        body = chat_body("fast", False, NONSTREAM_TOKENS)
        for t in self.order(rnd):
            r = self.run_spec(t, key, body, conns)
            if r is None:
                continue
            self.pool(f"lat_c{conns}", t, [x * 1000 for x in r["latencies"]])
            self.add(f"rps_c{conns}", t, r["requests"] / r["window_s"])
            n = max(1, r["requests"])
            self.add(f"cpu_backend_per_1k_c{conns}", t, r["cpu"]["backend"] / n * 1000)
            self.add(f"cpu_client_per_1k_c{conns}", t, r["client_cpu"] / n * 1000)
            if "proxy" in r["cpu"]:
                self.add(f"cpu_proxy_per_1k_c{conns}", t, r["cpu"]["proxy"] / n * 1000)
            time.sleep(0.2)

    def streams(self, rnd: int, conns: int, paced: bool) -> None:
        key = f"{'pa' if paced else 'un'}{conns}"
        model = "paced" if paced else "fast"
        body = chat_body(model, True)
        stagger = PACED_TOKENS * PACED_DELAY if paced and conns > 1 else 0.0
        for t in self.order(rnd):
            rss = {"proxy": self.b.pids[t]["proxy"]} if conns >= 64 and t != "direct" else {}
            r = self.run_spec(
                t, key, body, conns, port_key=model, gaps=paced, rss_pids=rss, stagger=stagger
            )
            if r is None:
                continue
            if paced:
                # per stream: tokens (events minus the finish event and [DONE]) divided by
                # the time from sending the request to the last byte; times the streams
                tokens = r["stream_events"] - 2 * len(r["latencies"])
                rate = tokens / r["stream_time"] if r["stream_time"] else float("nan")
                self.add(f"tok_s_paced_{conns}", t, rate * conns)
                self.add(f"tok_s_window_paced_{conns}", t, r["events"] / r["window_s"])
                # gaps below 0.5 ms are events that arrived together with the previous one
                self.pool(f"gap_paced_{conns}", t, [x * 1000 for x in r["gaps"] if x > 0.0005])
                self.pool(f"ttft_paced_{conns}", t, [x * 1000 for x in r["ttft"]])
                if r["latencies"]:  # mean time from request to last byte, per stream
                    mean_ms = sum(r["latencies"]) / len(r["latencies"]) * 1000
                    self.add(f"stream_ms_paced_{conns}", t, mean_ms)
                if "proxy" in r["cpu"]:
                    self.add(f"proxy_cpu_paced_{conns}", t, r["cpu"]["proxy"] / r["window_s"])
            else:
                self.add(f"ev_s_unpaced_{conns}", t, r["events"] / r["window_s"])
                self.add(f"client_cpu_unpaced_{conns}", t, r["client_cpu"] / r["window_s"])
                if "proxy" in r["cpu"]:
                    self.add(f"proxy_cpu_unpaced_{conns}", t, r["cpu"]["proxy"] / r["window_s"])
            if rss:
                self.add("rss_64_streams_mb", t, r["rss_kb"]["proxy"] / 1024)
            time.sleep(0.3)

    def finish(self) -> None:
        for figure, per_target in self.rounds.items():
            agg = max if figure.startswith("rss") else median
            for t, values in per_target.items():
                self.put(figure, t, agg(values))
        for figure, per_target in self.pools.items():
            for t, values in per_target.items():
                self.put(f"{figure}_p50", t, pct(values, 50))
                self.put(f"{figure}_p99", t, pct(values, 99))
        self.raw["rounds"] = self.rounds
        self.raw["samples"] = {
            f: {t: len(v) for t, v in pt.items()} for f, pt in self.pools.items()
        }
        self.raw["dead"] = self.dead

    def idle_rss(self) -> None:
        for t in ("minimal", "dynllm"):
            pid = self.b.pids[t]["proxy"]
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.put("rss_idle_mb", t, int(line.split()[1]) / 1024)

    def cold_start(self, dyn_port: int) -> None:
        """DynLLM's first-request TTFB for an unloaded model vs spawning the backend by hand."""
        b = self.b
        body = chat_body("cold", False, NONSTREAM_TOKENS)
        ready, direct_fb, dyn_fb = [], [], []
        for i in range(b.d["cold_reps"]):
            # direct: spawn the fake as DynLLM would, poll /health every 2 ms, same request
            port = free_port()
            argv = [str(FAKE), "-m", str(b.models / "cold.gguf"), "--host", "127.0.0.1"]
            argv += ["--port", str(port), *BACKEND_ARGS, "--alias", "cold"]
            t0 = time.perf_counter()
            p = b.start(f"cold-direct-{i}", argv)
            while not health_ok(port):
                if p.popen.poll() is not None:
                    raise RuntimeError(f"cold fake exited:\n{p.log()}")
                time.sleep(0.002)
            ready.append((time.perf_counter() - t0) * 1000)
            fb, _ = raw_ttfb(port, body, t0)
            direct_fb.append(fb * 1000)
            p.stop()
            time.sleep(0.2)
            # DynLLM: the first request for the unloaded model
            t0 = time.perf_counter()
            fb, resp = raw_ttfb(dyn_port, body, t0)
            if not resp.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"cold request failed: {resp[:300]!r}")
            dyn_fb.append(fb * 1000)
            http_json(dyn_port, "POST", "/admin/models/unload", {"model": "cold"})
            time.sleep(0.2)
        self.raw["cold"] = {
            "direct_spawn_to_ready_ms": ready,
            "direct_spawn_to_first_byte_ms": direct_fb,
            "dynllm_first_byte_ms": dyn_fb,
        }
        self.put("cold_backend_ready_ms", "direct", median(ready))
        self.put("cold_first_byte_ms", "direct", median(direct_fb))
        self.put("cold_first_byte_ms", "dynllm", median(dyn_fb))
        self.put("cold_overhead_ms", "dynllm", median(dyn_fb) - median(direct_fb))

    def keepalive(self, servers: dict[str, tuple[int, int]]) -> None:
        """N sequential short streams on one keep-alive client: TCP connections, ms/request.

        ``servers`` maps a name to (port, pid of the process whose CPU is read).
        """
        body = chat_body("fast", True, SHORT_STREAM_TOKENS)
        n = self.b.d["ka_n"]
        spec = {"body": body, "conns": 1, "warmup": 0.0, "duration": 120.0, "max_requests": n}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
        for port, _ in servers.values():
            loadgen(spec | {"port": port, "max_requests": 30})  # warm pools and code paths
        for rnd in range(self.b.d["ka_rounds"]):
            names = list(servers)
            names = names[rnd % len(names) :] + names[: rnd % len(names)]
            for name in names:
                port, pid = servers[name]
                runs[name].append(loadgen(spec | {"port": port, "cpu_pids": {"p": pid}}))
                time.sleep(0.1)
        out: dict[str, Any] = {}
        for name, rs in runs.items():
            ms = [r["window_s"] / max(1, r["total_requests"]) * 1000 for r in rs]
            cpu = [r["cpu"]["p"] / max(1, r["total_requests"]) * 1000 for r in rs]
            out[name] = {
                "requests": rs[0]["total_requests"],
                "connections_opened": rs[0]["connections_opened"],
                "ms_per_req": median(ms),
                "cpu_ms_per_req": median(cpu),
                "ms_per_req_rounds": ms,
                "cpu_ms_per_req_rounds": cpu,
                "req_s": 1000 / median(ms),
                "errors": sum(r["errors"] for r in rs),
            }
        for srv in ("minimal", "dynllm"):  # round by round: unpatched minus patched
            a, b = out.get(f"{srv} patched"), out.get(f"{srv} unpatched")
            if a and b:
                pairs = zip(b["ms_per_req_rounds"], a["ms_per_req_rounds"], strict=True)
                cpairs = zip(b["cpu_ms_per_req_rounds"], a["cpu_ms_per_req_rounds"], strict=True)
                out[f"{srv} diff"] = {
                    "ms_per_req": median([u - p for u, p in pairs]),
                    "cpu_ms_per_req": median([u - p for u, p in cpairs]),
                }
        self.raw["keepalive"] = out

    def abort_storm(self, servers: dict[str, int]) -> None:
        """Slow clients that reset fast streams; does the server still answer afterwards?"""
        out = {}
        for name, port in servers.items():
            survived = 0
            for _ in range(self.b.d["storm_rounds"]):
                slow_reader_storm(port, STORM_CLIENTS, STORM_HOLD)
                time.sleep(0.5)
                if not answers(port):
                    break
                survived += 1
            out[name] = {"rounds": self.b.d["storm_rounds"], "survived": survived}
            if survived < self.b.d["storm_rounds"]:
                self.dead[name] = "stopped answering after the abort storm (see README)"
        self.raw["abort_storm"] = out


# --------------------------------------------------------------------------- report

# figure key, label, unit, better ("lo"/"hi"), judged against the minimal relay
ROWS: list[tuple[str, str, str, str, bool]] = [
    ("lat_c1_p50", "non-stream latency c=1 p50", "ms", "lo", True),
    ("lat_c1_p99", "non-stream latency c=1 p99", "ms", "lo", True),
    ("lat_c16_p50", "non-stream latency c=16 p50", "ms", "lo", True),
    ("lat_c16_p99", "non-stream latency c=16 p99", "ms", "lo", True),
    ("rps_c1", "requests/s c=1", "req/s", "hi", True),
    ("rps_c16", "requests/s c=16", "req/s", "hi", True),
    ("ev_s_unpaced_1", "unpaced chunks/s, 1 stream", "ev/s", "hi", True),
    ("ev_s_unpaced_64", "unpaced chunks/s, 64 streams", "ev/s", "hi", True),
    ("tok_s_paced_1", "paced tokens/s, 1 stream", "tok/s", "hi", True),
    ("tok_s_paced_64", "paced tokens/s, 64 streams", "tok/s", "hi", True),
    ("tok_s_window_paced_64", "  (window count, 64 streams)", "tok/s", "hi", False),
    ("gap_paced_1_p50", "paced inter-token p50, 1", "ms", "lo", False),
    ("gap_paced_1_p99", "paced inter-token p99, 1", "ms", "lo", True),
    ("gap_paced_64_p50", "paced inter-token p50, 64", "ms", "lo", False),
    ("gap_paced_64_p99", "paced inter-token p99, 64", "ms", "lo", True),
    ("ttft_paced_1_p50", "paced TTFT p50, 1 stream", "ms", "lo", False),
    ("ttft_paced_64_p50", "paced TTFT p50, 64 streams", "ms", "lo", False),
    ("ttft_paced_64_p99", "paced TTFT p99, 64 streams", "ms", "lo", False),
    ("stream_ms_paced_1", "paced stream time mean, 1", "ms", "lo", False),
    ("stream_ms_paced_64", "paced stream time mean, 64", "ms", "lo", False),
    ("cpu_proxy_per_1k_c1", "proxy CPU /1000 req, c=1", "s", "lo", True),
    ("cpu_proxy_per_1k_c16", "proxy CPU /1000 req, c=16", "s", "lo", True),
    ("cpu_backend_per_1k_c16", "backend CPU /1000 req, c=16", "s", "lo", False),
    ("cpu_client_per_1k_c16", "client CPU /1000 req, c=16", "s", "lo", False),
    ("proxy_cpu_unpaced_64", "proxy CPU, unpaced 64", "core", "lo", False),
    ("client_cpu_unpaced_64", "client CPU, unpaced 64", "core", "lo", False),
    ("proxy_cpu_paced_64", "proxy CPU, paced 64", "core", "lo", False),
    ("rss_idle_mb", "proxy RSS idle", "MiB", "lo", False),
    ("rss_64_streams_mb", "proxy RSS, 64 streams (max)", "MiB", "lo", True),
    ("cold_backend_ready_ms", "cold: fake spawn->ready", "ms", "lo", False),
    ("cold_first_byte_ms", "cold: ->first byte", "ms", "lo", False),
    ("cold_overhead_ms", "cold-start overhead", "ms", "lo", False),
]
ADDED = {k for k, *_ in ROWS if k.startswith(("lat_", "gap_", "ttft_", "stream_ms"))}


def fmt(v: Any, width: int = 9) -> str:
    if v is None:
        return "-".rjust(width)
    if isinstance(v, float) and v != v:
        return "nan".rjust(width)
    a = abs(v)
    if a >= 1000:
        s = f"{v:.0f}"
    elif a >= 100:
        s = f"{v:.1f}"
    elif a >= 1:
        s = f"{v:.2f}"
    else:
        s = f"{v:.3f}"
    return s.rjust(width)


def judge(fig: dict[str, dict[str, Any]], raw: dict[str, Any]) -> list[tuple[str, bool, str]]:
    out = []
    for key, label, unit, better, vs_min in ROWS:
        v = fig.get(key, {})
        d, m = v.get("dynllm"), v.get("minimal")
        if not vs_min or d is None or m is None:
            continue
        ok = d <= 1.10 * m if better == "lo" else d >= 0.90 * m
        detail = f"{d / m:.3f}x ({fmt(d, 0)} vs {fmt(m, 0)} {unit})"
        out.append((f"within 10% of minimal: {label}", ok, detail))
    lat = fig.get("lat_c1_p50", {})
    if "dynllm" in lat and "direct" in lat:
        added = lat["dynllm"] - lat["direct"]
        out.append(("added p50 latency c=1 <= 1.5 ms", added <= 1.5, f"{added:.3f} ms"))
    for n in (1, 64):
        tok = fig.get(f"tok_s_paced_{n}", {})
        if "dynllm" in tok and "direct" in tok:
            r = tok["dynllm"] / tok["direct"]
            label = f"paced tokens/s >= 99% of direct, {n} stream{'s' if n > 1 else ''}"
            out.append((label, r >= 0.99, f"{r * 100:.2f}%"))
    cold = fig.get("cold_overhead_ms", {}).get("dynllm")
    if cold is not None:
        out.append(("cold-start overhead <= 50 ms", cold <= 50, f"{cold:.1f} ms"))
    for name, r in raw.get("abort_storm", {}).items():
        label = f"{name} still answers after the abort storm"
        out.append((label, r["survived"] == r["rounds"], f"{r['survived']}/{r['rounds']} rounds"))
    return out


def round_ratios(raw: dict[str, Any], key: str) -> list[float]:
    """dynllm / minimal for each round of a per-round figure (shows the noise)."""
    per = raw.get("rounds", {}).get(key, {})
    pairs = zip(per.get("dynllm", []), per.get("minimal", []), strict=False)
    return [d / m for d, m in pairs if m]


def report(fig: dict[str, dict[str, Any]], raw: dict[str, Any]) -> str:
    lines = []
    heads = ("direct", "minimal", "dynllm", "+min", "+dyn", "dyn/min", "+dyn/+min")
    hdr = f"{'figure':30} {'unit':5}" + "".join(h.rjust(10) for h in heads) + "  rounds"
    lines += [hdr, "-" * len(hdr)]
    for key, label, unit, _better, _ in ROWS:
        v = fig.get(key)
        if not v:
            continue
        d, m, y = v.get("direct"), v.get("minimal"), v.get("dynllm")
        am = m - d if key in ADDED and m is not None and d is not None else None
        ay = y - d if key in ADDED and y is not None and d is not None else None
        ratio = y / m if y is not None and m else None
        aratio = ay / am if ay is not None and am else None
        row = f"{label:30} {unit:5}" + "".join(" " + fmt(c) for c in (d, m, y, am, ay))
        row += f"{ratio:10.3f}" if ratio is not None else "-".rjust(10)
        row += f"{aratio:10.2f}" if aratio is not None else "-".rjust(10)
        rr = round_ratios(raw, key)
        if len(rr) > 1:
            row += f"  {min(rr):.2f}-{max(rr):.2f}"
        lines.append(row)
    ka = raw.get("keepalive")
    if ka:
        lines += [
            "",
            f"keep-alive: {SHORT_STREAM_TOKENS}-token streams, one after another, one client",
        ]
        lines.append(
            f"{'server':24}{'requests':>9}{'TCP conns':>11}{'req/s':>9}{'ms/req':>9}"
            f"{'CPU ms/req':>12}"
        )
        for name, r in ka.items():
            if name.endswith(" diff"):
                continue
            lines.append(
                f"{name:24}{r['requests']:>9}{r['connections_opened']:>11}"
                f"{r['req_s']:>9.1f}{r['ms_per_req']:>9.3f}{r['cpu_ms_per_req']:>12.3f}"
            )
        for srv in ("minimal", "dynllm"):
            d = ka.get(f"{srv} diff")
            if d:
                lines.append(
                    f"  {srv}: a new connection per stream costs {d['ms_per_req']:+.3f} ms "
                    f"and {d['cpu_ms_per_req']:+.3f} ms of its CPU per request "
                    "(median of round-by-round differences)"
                )
    storm = raw.get("abort_storm")
    if storm:
        lines += [
            "",
            f"abort storm: {STORM_CLIENTS} fast streams left unread for {STORM_HOLD:g} s, "
            "then reset; then one request (5 s to answer)",
        ]
        for name, r in storm.items():
            lines.append(f"  {name}: still answering after {r['survived']}/{r['rounds']} rounds")
    if raw.get("dead"):
        lines += ["", f"not measured further: {raw['dead']}"]
    lines.append("")
    for label, ok, detail in judge(fig, raw):
        lines.append(f"{'PASS' if ok else 'FAIL'}  {label}: {detail}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def busy_check() -> None:
    out = subprocess.run(["pgrep", "-fa", "pytest"], capture_output=True, text=True).stdout
    if out.strip():
        print("warning: pytest is running; figures will be disturbed:", file=sys.stderr)
        print(out, file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one short round (under a minute)")
    ap.add_argument("--out", help="JSON result file (default bench/results/<timestamp>.json)")
    args = ap.parse_args()
    busy_check()
    started = time.time()

    def step(what: str) -> None:
        print(f"[{time.time() - started:6.1f}s] {what}", file=sys.stderr, flush=True)

    b = Bench(args.quick)
    r = Runner(b)
    left: list[int] = []
    try:
        step(f"starting processes in {b.tmp}")
        fast, fast_port = b.start_fake("direct-fast", "fast")
        paced, paced_port = b.start_fake("direct-paced", "paced")
        mfast, mfast_port = b.start_minimal("minimal-fast", fast_port)
        mpaced, mpaced_port = b.start_minimal("minimal-paced", paced_port)
        dyn, dyn_port = b.start_dynllm("dynllm", b.tmp / "dynllm", 19400)
        b.ports["direct"] = {"fast": fast_port, "paced": paced_port}
        b.ports["minimal"] = {"fast": mfast_port, "paced": mpaced_port}
        b.ports["dynllm"] = {"fast": dyn_port, "paced": dyn_port}
        for t in TARGETS:  # warm every path; DynLLM's first requests load its backends
            for model in ("fast", "paced"):
                warm = json.loads(chat_body(model, False, 1))
                for _ in range(3):
                    http_json(b.ports[t][model], "POST", "/v1/chat/completions", warm)
        admin = {m["name"]: m for m in http_json(dyn_port, "GET", "/admin/models")["models"]}
        backends = {
            "direct": {"fast": fast.pid, "paced": paced.pid},
            "minimal": {"fast": fast.pid, "paced": paced.pid},
            "dynllm": {"fast": admin["fast"]["pid"], "paced": admin["paced"]["pid"]},
        }
        proxies = {"minimal": {"fast": mfast.pid, "paced": mpaced.pid}}
        proxies["dynllm"] = {"fast": dyn.pid, "paced": dyn.pid}

        def use(model: str) -> None:  # which processes CPU/RSS are read from
            for t in TARGETS:
                b.pids[t] = {"backend": backends[t][model]}
                if t in proxies:
                    b.pids[t]["proxy"] = proxies[t][model]

        use("fast")
        r.idle_rss()
        use("fast")
        for rnd in range(b.d["rounds"]):
            step(f"round {rnd + 1}/{b.d['rounds']}: non-stream c=1, c=16; unpaced 1, 64")
            r.nonstream(rnd, 1)
            r.nonstream(rnd, 16)
            r.streams(rnd, 1, paced=False)
            r.streams(rnd, 64, paced=False)
        use("paced")
        for rnd in range(b.d["paced_rounds"]):
            step(f"paced round {rnd + 1}/{b.d['paced_rounds']}: 1 and 64 streams")
            r.streams(rnd, 1, paced=True)
            r.streams(rnd, 64, paced=True)
        r.finish()
        if "dynllm" not in r.dead:
            step("cold start")
            r.cold_start(dyn_port)
        step("keep-alive check")
        nopatch, nopatch_port = b.start_minimal("minimal-nopatch", fast_port, patch=False)
        dyn2, dyn2_port = b.start_dynllm("dynllm-nopatch", b.tmp / "dynllm2", 19450, patch=False)
        for port in (nopatch_port, dyn2_port):
            http_json(port, "POST", "/v1/chat/completions", json.loads(chat_body("fast", False, 1)))
        servers = {
            "direct": (fast_port, fast.pid),
            "minimal patched": (mfast_port, mfast.pid),
            "minimal unpatched": (nopatch_port, nopatch.pid),
            "dynllm patched": (dyn_port, dyn.pid),
            "dynllm unpatched": (dyn2_port, dyn2.pid),
        }
        r.keepalive({k: v for k, v in servers.items() if k.split()[0] not in r.dead})
        if b.d["storm_rounds"]:
            step("abort storm")
            r.abort_storm({t: b.ports[t]["fast"] for t in ("minimal", "dynllm") if t not in r.dead})
        step("stopping everything")
    finally:
        left = b.stop_all()
    table = report(r.fig, r.raw)
    print(table)
    if left:
        print(f"FAIL  processes left behind (killed): {left}")
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": " ".join(sys.argv),
        "quick": args.quick,
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "figures": r.fig,
        "judgement": [{"check": c, "pass": ok, "detail": d} for c, ok, d in judge(r.fig, r.raw)],
        "raw": r.raw,
        "table": table,
        "leftover_processes": left,
        "elapsed_s": time.time() - started,
    }
    out = Path(args.out) if args.out else BENCH / "results" / time.strftime("%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nsaved {out} ({time.time() - started:.0f}s)")
    shutil.rmtree(b.tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
