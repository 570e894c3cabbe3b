"""A real nginx in front of DynLLM, configured from the shipped example site.

``deploy/nginx/dynllm.conf`` is rendered with only two changes (the upstream's
``server`` address and the ``listen`` lines) and included from a small main
config that keeps every file nginx writes (pid, logs, temporary bodies) under a
test folder. nginx runs in the foreground (``daemon off``) in a session of its
own, so that stopping it can never leave a worker behind.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

from dynllm.process import process_table
from tests.support.harness import REPO

SITE = REPO / "deploy" / "nginx" / "dynllm.conf"
DEBIAN_PACKAGE = "nginx"
_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


class NginxMissing(RuntimeError):
    """There is no nginx binary; the tests need one and are not skipped."""


def find_nginx(candidates: tuple[str, ...] = _CANDIDATES) -> str:
    """The nginx binary: on ``PATH`` or in the usual places; else ``NginxMissing``."""
    for c in (shutil.which("nginx"), *candidates):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise NginxMissing(
        "nginx is not installed, and the nginx tests need a real one: install the "
        f"Debian package '{DEBIAN_PACKAGE}' (apt-get install -y {DEBIAN_PACKAGE}; "
        ".ci/run does this)"
    )


def _uncommented(text: str) -> list[tuple[int, str]]:
    """(line index, line) of every line that is not a comment."""
    return [(i, ln) for i, ln in enumerate(text.splitlines()) if not ln.lstrip().startswith("#")]


def render_site(upstream: str, port: int, text: str | None = None) -> str:
    """The example site with its upstream at ``upstream`` (``host:port``) and one
    ``listen 127.0.0.1:<port>``; every other line is kept as it is."""
    text = SITE.read_text() if text is None else text
    lines = text.splitlines()
    server_re = re.compile(r"^(\s*)server\s+127\.0\.0\.1:8000\s*;\s*$")
    listen_re = re.compile(r"^(\s*)listen\s+[^;]*;\s*$")
    servers = [i for i, ln in _uncommented(text) if server_re.match(ln)]
    listens = [i for i, ln in _uncommented(text) if listen_re.match(ln)]
    if len(servers) != 1 or not listens:
        raise AssertionError(
            f"{SITE}: expected one 'server 127.0.0.1:8000;' in the upstream and at least "
            f"one active 'listen' line, found {len(servers)} and {len(listens)}"
        )
    i = servers[0]
    lines[i] = server_re.sub(rf"\1server {upstream};", lines[i])
    first = listens[0]
    lines[first] = listen_re.sub(rf"\1listen 127.0.0.1:{port};", lines[first])
    for j in listens[1:]:  # e.g. the [::]:80 twin
        lines[j] = ""
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    return [p.pid for p in process_table() if p.state != "Z" and p.pgrp == pgid]


class Nginx:
    """``nginx -g 'daemon off;'`` with the example site, in front of ``upstream``."""

    def __init__(self, root: Path, upstream: str) -> None:
        self.root = root
        self.upstream = upstream.removeprefix("http://").rstrip("/")
        self.binary = find_nginx()
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.url = ""
        self.error_log = root / "logs" / "error.log"
        self.access_log = root / "logs" / "access.log"
        self.conf = root / "conf" / "nginx.conf"
        self.site = root / "conf" / "dynllm.conf"

    # -- configuration --
    def _main_conf(self) -> str:
        r = self.root
        user = ""
        if os.geteuid() == 0:
            # As root, nginx would run its workers as "nobody", who cannot enter
            # pytest's private (0700) folders. Run them as the test's own user.
            user = (
                f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
            )
        temps = "\n".join(f"    {k}_temp_path {r / 'temp' / k};" for k in _TEMP_KINDS)
        return f"""{user}
worker_processes 1;
pid {r / "nginx.pid"};
error_log {self.error_log} info;

events {{
    worker_connections 256;
}}

http {{
    default_type application/octet-stream;
    log_format dynllm '$remote_addr "$request" $status $body_bytes_sent '
                      'rt=$request_time urt=$upstream_response_time '
                      'uct=$upstream_connect_time ua=$upstream_addr';
    access_log {self.access_log} dynllm;
{temps}
    include {self.site};
}}
"""

    def _write(self) -> None:
        for sub in ("conf", "logs", *(f"temp/{k}" for k in _TEMP_KINDS)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for old in (self.error_log, self.root / "logs" / "stderr.log"):  # a previous try's
            old.unlink(missing_ok=True)
        self.site.write_text(render_site(self.upstream, self.port))
        self.conf.write_text(self._main_conf())

    def _argv(self, *extra: str) -> list[str]:
        return [
            self.binary,
            "-p",
            f"{self.root}/",
            "-c",
            str(self.conf),
            "-e",
            str(self.error_log),
            *extra,
        ]

    # -- life cycle --
    def start(self, timeout: float = 15.0, attempts: int = 5) -> Nginx:
        for _ in range(attempts):
            self.port = free_port()
            self._write()
            check = subprocess.run(
                self._argv("-t", "-q"), capture_output=True, text=True, timeout=30
            )
            if check.returncode != 0:
                raise AssertionError(
                    f"nginx -t refused the rendered config:\n{check.stderr}\n"
                    f"--- {self.site}:\n{self.site.read_text()}"
                )
            if self._launch(timeout):
                return self
        raise AssertionError(f"nginx could not get a port in {attempts} tries:\n{self.log()}")

    def _launch(self, timeout: float) -> bool:
        """True once nginx answers; False if its port was taken meanwhile."""
        with open(self.root / "logs" / "stderr.log", "ab") as out:
            self.proc = subprocess.Popen(
                self._argv("-g", "daemon off;"),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "Address already in use" in self.log():
                    self.proc = None
                    return False
                raise AssertionError(f"nginx exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(requests.RequestException):
                # Any answer will do (a 502 means nginx runs and DynLLM is not up yet).
                requests.get(self.url + "/health", timeout=2)
                return True
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"nginx did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        parts = []
        for p in (self.root / "logs" / "stderr.log", self.error_log):
            with contextlib.suppress(FileNotFoundError):
                parts.append(p.read_text(errors="replace"))
        return "\n".join(parts)

    def pids(self) -> list[int]:
        """The master and its workers (nginx runs in a session of its own)."""
        return _group_pids(self.proc.pid) if self.proc is not None else []

    def worker_pids(self) -> list[int]:
        return [p for p in self.pids() if self.proc is not None and p != self.proc.pid]

    def upstream_connections(self) -> set[int]:
        """Local ports of the TCP connections nginx's workers hold open to DynLLM."""
        inodes = set()
        for pid in self.worker_pids():
            with contextlib.suppress(OSError):
                for fd in os.scandir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        target = os.readlink(fd.path)
                        if target.startswith("socket:["):
                            inodes.add(target[8:-1])
        port = self.upstream.rpartition(":")[2]
        out = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            f = line.split()
            local, remote, state, inode = f[1], f[2], f[3], f[9]
            if state == "01" and inode in inodes and int(remote.split(":")[1], 16) == int(port):
                out.add(int(local.split(":")[1], 16))
        return out

    def stop(self, timeout: float = 5.0) -> None:
        """SIGQUIT (graceful), then SIGTERM (fast), then SIGKILL to the whole group;
        returns when no nginx process of this instance is left."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        for sig in (signal.SIGQUIT, signal.SIGTERM):
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout)
        if self.proc.poll() is None or _group_pids(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout)
        deadline = time.monotonic() + timeout
        while _group_pids(pgid):
            if time.monotonic() > deadline:
                raise AssertionError(f"nginx processes outlived the test: {_group_pids(pgid)}")
            time.sleep(0.02)
