"""The systemd side: the notify protocol with a real DynLLM, the installer run into a
temporary root (twice), and systemd's own verifier on the unit it installs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.harness import REPO, DynLLM, write_config

INSTALL = REPO / "systemd" / "install.sh"
UNIT = REPO / "systemd" / "dynllm.service"


def recv_all(sock: socket.socket, until: str, timeout: float) -> list[tuple[float, str]]:
    """Datagrams received (with their arrival time) until one contains ``until``."""
    got: list[tuple[float, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            break
        got.append((time.monotonic(), data))
        if until in data:
            return got
    raise AssertionError(f"no {until!r} within {timeout}s; got {got}")


@pytest.mark.parametrize("abstract", [False, True])
def test_ready_is_sent_after_preload_and_once_the_port_listens(
    tmp_path: Path, spec, models, monkeypatch: pytest.MonkeyPatch, abstract: bool
) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"dynllm-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    else:
        path = tmp_path / "notify.sock"
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    cfg = write_config(
        tmp_path / "config.yaml",
        [spec("slow", load_delay=1.0)],
        preload_models=["slow"],
    )
    d = DynLLM(cfg)
    started = time.monotonic()
    d.start()  # returns once the "listening" line is logged
    try:
        msgs = recv_all(sock, "READY=1", 30)
        ready_at, ready = msgs[-1]
        # The preload was announced first, with more start time for systemd.
        assert any("STATUS=preloading slow" in m and "EXTEND_TIMEOUT_USEC=" in m for _, m in msgs)
        assert ready_at - started >= 1.0  # not before the 1 s load was over
        assert models.starts("slow"), "the preloaded backend was started"
        assert f"MAINPID={d.pid}" in ready
        port = int(d.url.rsplit(":", 1)[1])
        assert f"on port {port}" in ready
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # the port accepted connections when READY=1 was sent
        assert d.state("slow") == "loaded"
        d.send_signal(signal.SIGTERM)
        msgs = recv_all(sock, "STOPPING=1", 30)
        assert d.stop() == 0
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
        sock.close()


def test_without_notify_socket_nothing_is_sent(tmp_path: Path, spec, monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    from dynllm.notify import notify

    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent.sock"))
    assert notify("READY=1") is False  # a dead socket is a warning, never a crash


def run_install(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["bash", str(INSTALL), *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_installer_refuses_to_run_without_root(tmp_path: Path) -> None:
    r = run_install("--root", str(tmp_path), user="65534")  # nobody
    assert r.returncode == 1
    assert "must be run as root" in r.stderr
    assert not (tmp_path / "opt").exists()


def test_installer_rejects_bad_options(tmp_path: Path) -> None:
    bogus = run_install("--bogus")
    assert bogus.returncode == 1 and "unknown option: --bogus" in bogus.stderr
    if os.geteuid() == 0:
        rel = run_install("--root", str(tmp_path), "--prefix", "rel")
        assert rel.returncode == 1 and "absolute path" in rel.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the installer runs as root")
def test_installer_into_a_temporary_root_is_idempotent_and_the_unit_verifies(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "group").write_text("root:x:0:\nrender:x:105:\n")
    r = run_install("--root", str(root))
    assert r.returncode == 0, r.stdout + r.stderr
    dest = root / "opt" / "dynllm"
    assert (dest / "dynllm" / "cli.py").is_file() and (dest / "uv.lock").is_file()
    assert not (dest / ".git").exists()
    version = subprocess.run(
        [str(dest / ".venv" / "bin" / "dynllm"), "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and "dynllm" in version.stdout
    config = dest / "config.yaml"
    assert "db_path: /var/lib/dynllm/dynllm_state.db" in config.read_text()
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    unit = root / "etc" / "systemd" / "system" / "dynllm.service"
    assert unit.read_text() == UNIT.read_text()  # the default prefix: unchanged
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants" / "dynllm.service"
    assert wants.is_symlink()
    passwd = (root / "etc" / "passwd").read_text()
    assert (
        passwd.startswith("dynllm:") and passwd.count("\n") == 1 and ":/var/lib/dynllm:" in passwd
    )
    assert "render:x:105:dynllm" in (root / "etc" / "group").read_text()

    # The installed config checks out with the installed DynLLM.
    check = subprocess.run(
        [str(dest / ".venv" / "bin" / "dynllm"), "--config", str(config), "--check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr

    # Again: the operator's config is kept, nothing is duplicated.
    config.write_text(config.read_text() + "# edited by the operator\n")
    r = run_install("--root", str(root))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "keeping the existing" in r.stdout
    assert config.read_text().endswith("# edited by the operator\n")
    assert (root / "etc" / "passwd").read_text() == passwd
    assert (root / "etc" / "group").read_text().count("dynllm") == 2  # its group + render

    # systemd's verifier on the unit as installed, with the prefix as it lies here.
    here = tmp_path / "dynllm.service"
    here.write_text(unit.read_text().replace("/opt/dynllm", str(dest)))
    verify = subprocess.run(
        [shutil.which("systemd-analyze") or "systemd-analyze", "verify", str(here)],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
