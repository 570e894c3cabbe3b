"""Start DynLLM as a real process (real waitress) and inspect what it leaves behind."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
FAKE_LLAMA_SERVER = REPO / "tests" / "support" / "fake_llama_server.py"
FAKE_OVMS = REPO / "tests" / "support" / "fake_ovms.py"
_LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)")
# Backend ports the tests give DynLLM; DYNLLM_TEST_PORT_BASE moves the range so that
# two test sessions on one machine do not take each other's ports.
PORT_BASE = int(os.environ.get("DYNLLM_TEST_PORT_BASE", "19100"))


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``cond`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {cond}")
        time.sleep(interval)


def live_pids_matching(needle: str) -> list[int]:
    """PIDs of live (non-zombie) processes whose command line contains ``needle``."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        if raw and needle in raw.replace(b"\0", b" ").decode(errors="replace"):
            out.append(int(entry.name))
    return out


def pid_alive(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


class ModelDir:
    """Fake-backend model files (their JSON content is the fake's knobs)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def stem(name: str) -> str:
        """The file name used for model ``name`` (a hash when the name is not file-safe)."""
        if re.fullmatch(r"[A-Za-z0-9._-]+", name) and not name.startswith("."):
            return name
        return "m-" + hashlib.sha1(name.encode()).hexdigest()[:12]

    def model(self, name: str, **knobs: Any) -> Path:
        p = self.root / f"{self.stem(name)}.gguf"
        p.write_text(json.dumps(knobs))
        return p

    def starts(self, name: str) -> list[tuple[int, list[str]]]:
        p = self.root / f"{self.stem(name)}.gguf.starts"
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            pid, argv = line.split(" ", 1)
            out.append((int(pid), json.loads(argv)))
        return out

    def events(self, name: str) -> list[str]:
        p = self.root / f"{self.stem(name)}.gguf.events"
        return p.read_text().splitlines() if p.exists() else []


class OvmsModelDir:
    """Fake-OVMS model directories; ``fake_ovms.json`` inside holds the fake's knobs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def model(self, name: str, **knobs: Any) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "fake_ovms.json").write_text(json.dumps(knobs))
        return d

    def starts(self, name: str) -> list[tuple[int, dict[str, Any]]]:
        p = self.root / name / "fake_ovms.starts"
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            pid, rec = line.split(" ", 1)
            out.append((int(pid), json.loads(rec)))
        return out

    def events(self, name: str) -> list[str]:
        p = self.root / name / "fake_ovms.events"
        return p.read_text().splitlines() if p.exists() else []


def write_config(path: Path, models: list[dict[str, Any]], **top: Any) -> Path:
    """A DynLLM config using the fake llama-server unless told otherwise."""
    raw: dict[str, Any] = {
        "total_vram_mb": 1000,
        "idle_timeout_seconds": 300,
        "db_path": str(path.parent / "state.db"),
        "enabled_backends": ["llamacpp", "openvino"],
        "backend": {
            "llamacpp_binary": str(FAKE_LLAMA_SERVER),
            "ovms_binary": str(FAKE_OVMS),
            "port_range_start": PORT_BASE,
            "port_range_end": PORT_BASE + 99,
            "stop_timeout_seconds": 2,
        },
        "models": models,
    }
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    path.write_text(yaml.safe_dump(raw))
    return path


class DynLLM:
    """``python -m dynllm`` on a free port, its log in a file."""

    def __init__(self, config: Path, extra_args: list[str] | None = None) -> None:
        self.config = config
        self.log_path = config.parent / f"dynllm-{time.monotonic_ns()}.log"
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.session = requests.Session()

    def start(self, timeout: float = 60.0) -> DynLLM:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dynllm",
                    "--config",
                    str(self.config),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    *self.extra_args,
                ],
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=str(self.config.parent),
                env=env,
            )

        def listening() -> str | None:
            assert self.proc is not None
            m = _LISTENING.search(self.log())
            if m:
                return f"http://{m.group(1)}:{m.group(2)}"
            if self.proc.poll() is not None:
                raise AssertionError(f"dynllm exited with {self.proc.returncode}:\n{self.log()}")
            return None

        self.url = wait_for(listening, timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.session.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.session.post(self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def chat(self, model: str, stream: bool = False, **kw: Any) -> requests.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **kw}
        if stream:
            body["stream"] = True
        return requests.post(
            self.url + "/v1/chat/completions", json=body, stream=stream, timeout=60
        )

    def admin(self) -> dict[str, Any]:
        r = self.get("/admin/models")
        r.raise_for_status()
        return {m["name"]: m for m in r.json()["models"]}

    def state(self, name: str) -> str:
        return str(self.admin()[name]["state"])

    def backend_pids(self) -> dict[str, int]:
        return {n: m["pid"] for n, m in self.admin().items() if m["pid"]}

    def send_signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal DynLLM and wait for it; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                msg = f"dynllm did not exit within {timeout}s:\n{self.log()}"
                raise AssertionError(msg) from None
        self.session.close()
        return self.proc.returncode


def sse_events(resp: requests.Response) -> list[str]:
    """The ``data:`` payloads of an event stream, in order."""
    out = []
    for line in resp.iter_lines():
        if line.startswith(b"data: "):
            out.append(line[6:].decode())
    return out


def chat_in_background(d: DynLLM, model: str, **kw: Any) -> dict[str, Any]:
    """Send a chat request from a daemon thread; the dict fills in with its outcome."""
    import threading

    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["response"] = d.chat(model, **kw)
        except requests.RequestException as exc:  # e.g. DynLLM was killed meanwhile
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    out["thread"] = t
    t.start()
    return out


def wav_bytes(seconds: float = 0.5, rate: int = 16000, seed: int = 1) -> bytes:
    """A mono 16-bit WAV file: a tone with a little deterministic noise."""
    import io
    import math
    import random
    import wave

    rng = random.Random(seed)
    frames = bytearray()
    for i in range(int(seconds * rate)):
        v = int(8000 * math.sin(2 * math.pi * 440 * i / rate)) + rng.randint(-200, 200)
        frames += int(v).to_bytes(2, "little", signed=True)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return buf.getvalue()


def vm_peak_kib(pid: int, field: str = "VmHWM") -> int:
    """Peak resident set size of a process (``VmHWM``) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")
