"""One backend subprocess: spawn, log, wait for readiness, stop, and find leftovers.

Backends are started from an argument list (never a shell) in a session of
their own, so stopping one signals its whole process group.  Their stdout and
stderr go straight to a per-model log file by file descriptor: nothing is
buffered in DynLLM and nothing is lost if DynLLM dies.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .backends import Probe

log = logging.getLogger(__name__)

#: Marks the start of each run in a model's log file; the tail shown to
#: clients starts after the last one, so it never mixes in an older run.
RUN_MARK = "=== dynllm: "
#: Seconds to wait for a process to vanish after SIGKILL before giving up on it.
KILL_WAIT = 30.0
#: Environment variables of DynLLM's that backends must not inherit.
PRIVATE_ENV = frozenset({"DYNLLM_API_KEYS", "DYNLLM_ADMIN_API_KEY"})

#: A log file larger than this is rotated to ``.1`` when the backend starts again.
ROTATE_BYTES = 20 * 1024 * 1024


class ProcessExited(Exception):
    """The backend exited while DynLLM waited for it to become ready."""

    def __init__(self, returncode: int) -> None:
        super().__init__(f"backend exited with code {describe_returncode(returncode)}")
        self.returncode = returncode


class ReadyTimeout(Exception):
    """The backend did not become ready within its load timeout."""


class NotServable(Exception):
    """The backend finished starting but says the model cannot be served."""


class Cancelled(Exception):
    """DynLLM is shutting down; the wait was abandoned."""


def describe_returncode(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            return str(code)
    return str(code)


def log_tail(
    path: str | os.PathLike[str],
    lines: int = 20,
    max_bytes: int = 64 * 1024,
    latest_run_only: bool = True,
) -> str:
    """The last ``lines`` lines of a backend log (of its latest run only, by default).

    At most the last ``max_bytes`` of the file are read.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes:  # the first line read is probably cut: drop it
        text = text[text.find("\n") + 1 :]
    mark = text.rfind(RUN_MARK) if latest_run_only else -1
    if mark >= 0:
        text = text[text.find("\n", mark) + 1 :]
    return "\n".join(text.splitlines()[-lines:])


class BackendProcess:
    """A started backend process and the file its output goes to."""

    def __init__(
        self, argv: Sequence[str], log_path: Path, env: dict[str, str | None] | None = None
    ) -> None:
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self._env = env
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._popen is not None
        return self._popen.pid

    def start(self) -> None:
        """Spawn the process; raises ``OSError`` if the binary cannot be run."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.log_path.stat().st_size > ROTATE_BYTES:
                os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        except FileNotFoundError:
            pass
        # DynLLM's own keys never reach a backend (nor code it runs).
        env = {k: v for k, v in {**os.environ, **(self._env or {})}.items()
               if v is not None and k not in PRIVATE_ENV}  # fmt: skip
        with open(self.log_path, "ab", buffering=0) as logf:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            logf.write(
                f"{RUN_MARK}{stamp} starting: {subprocess.list2cmdline(self.argv)}\n".encode()
            )
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=env,
            )

    def poll(self) -> int | None:
        assert self._popen is not None
        return self._popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        assert self._popen is not None
        return self._popen.wait(timeout)

    def watch(self, on_exit: Callable[[BackendProcess, int], None]) -> threading.Thread:
        """Call ``on_exit(self, returncode)`` from a daemon thread when the process ends."""

        def run() -> None:
            code = self.wait()
            try:
                on_exit(self, code)
            except Exception:  # a watcher must never die silently
                log.exception("exit handler for pid %s failed", self.pid)

        t = threading.Thread(target=run, name=f"watch-{self.pid}", daemon=True)
        t.start()
        return t

    def wait_ready(
        self,
        port: int,
        probes: Sequence[Probe],
        timeout: float,
        interval: float = 0.03,
        cancel: threading.Event | None = None,
    ) -> float:
        """Poll ``probes`` on ``127.0.0.1:port`` until they all answer OK.

        :returns: seconds it took.
        :raises ProcessExited: at once if the process exits meanwhile.
        :raises NotServable: when a ``final`` probe fails after the ones before it passed.
        :raises ReadyTimeout: after ``timeout`` seconds.
        :raises Cancelled: when ``cancel`` is set.
        """
        start = time.monotonic()
        deadline = start + timeout
        while True:
            code = self.poll()
            if code is not None:
                raise ProcessExited(code)
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ReadyTimeout(f"backend not ready after {timeout:g}s")
            if self._probe_all(port, probes, min(2.0, max(0.05, remaining))):
                # It might have answered just before dying of a late error.
                code = self.poll()
                if code is not None:
                    raise ProcessExited(code)
                # The answer must have come from our backend, not from another
                # program that took the port first (our backend then fails to bind).
                owners = listening_pids(port)
                if owners and not owners & group_pids(self.pid):
                    raise NotServable(
                        f"port {port} is held by another process (pid {sorted(owners)}), "
                        "not by this backend"
                    )
                return time.monotonic() - start
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))

    @staticmethod
    def _probe_all(port: int, probes: Sequence[Probe], timeout: float) -> bool:
        for i, probe in enumerate(probes):
            status = probe_once(port, probe, timeout)
            if status in probe.ok:
                continue
            if probe.final and i > 0 and status is not None:
                raise NotServable(f"{probe.method} {probe.path} answered {status}")
            return False
        return True

    def stop(self, grace: float) -> int:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; return the exit code."""
        assert self._popen is not None
        code = self._popen.poll()
        if code is None:
            # The group is signalled only while its leader is unreaped, so its id
            # cannot have been handed to another process meanwhile.
            _signal_group(self._popen.pid, signal.SIGTERM)
            try:
                code = self._popen.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning(
                    "pid %s ignored SIGTERM for %.1fs; sending SIGKILL", self._popen.pid, grace
                )
                _signal_group(self._popen.pid, signal.SIGKILL)
                try:
                    code = self._popen.wait(KILL_WAIT)
                except subprocess.TimeoutExpired:  # stuck in the kernel (e.g. a GPU driver)
                    log.error(
                        "pid %s did not exit %ss after SIGKILL; giving up on it",
                        self._popen.pid,
                        KILL_WAIT,
                    )
                    return -signal.SIGKILL
        return code


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on TCP ``port`` (IPv4 and IPv6), from ``/proc/net``."""
    found: set[str] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN; inode is field 9.
            if (
                len(fields) > 9
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                found.add(fields[9])
    return found if readable else None


def listening_pids(port: int) -> set[int] | None:
    """PIDs of processes with a socket listening on ``port``; ``None`` if /proc cannot tell.

    Only processes whose descriptors we may read are seen, which includes every
    process we started.
    """
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    pids: set[int] = set()
    with os.scandir("/proc") as procs:
        for entry in procs:
            if entry.name.isdigit() and _holds_any(f"/proc/{entry.name}/fd", targets):
                pids.add(int(entry.name))
    return pids


def _holds_any(fd_dir: str, targets: set[str]) -> bool:
    try:
        with os.scandir(fd_dir) as fds:
            for fd in fds:
                try:
                    if os.readlink(fd.path) in targets:
                        return True
                except OSError:
                    continue
    except OSError:
        pass
    return False


@dataclass(frozen=True, slots=True)
class ProcInfo:
    pid: int
    state: str  # "R", "S", "Z", ...
    ppid: int
    pgrp: int


def process_table() -> Iterator[ProcInfo]:
    """Every process ``/proc`` shows: pid, state, parent and process group."""
    with os.scandir("/proc") as procs:
        for entry in procs:
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            # After "pid (comm)" (comm may hold spaces and ')'): state, ppid, pgrp, ...
            rest = stat[stat.rfind(")") + 2 :].split()
            if len(rest) > 2:
                yield ProcInfo(int(entry.name), rest[0], int(rest[1]), int(rest[2]))


def group_pids(pgid: int) -> set[int]:
    """PIDs in process group ``pgid`` (a backend and whatever it started)."""
    return {pgid} | {p.pid for p in process_table() if p.pgrp == pgid}


def write_files(files: dict[str, str]) -> None:
    """Write each file atomically (a temporary file renamed into place), readable by us only."""
    for path, text in files.items():
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def probe_once(port: int, probe: Probe, timeout: float) -> int | None:
    """One readiness request: its status, or ``None`` for a connection problem (*not yet*)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(probe.method, probe.path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def process_cmdline(pid: int) -> list[str] | None:
    """A live process's argv from ``/proc`` (``None`` if gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None  # a zombie or a kernel thread
    return [a.decode("utf-8", "surrogateescape") for a in raw.rstrip(b"\0").split(b"\0")]


def same_command(cmdline: Sequence[str] | None, argv: Sequence[str]) -> bool:
    """Whether a ``/proc`` command line is the one we started from ``argv``.

    The arguments must match exactly; the program may appear with its full
    path, and behind an interpreter when it is a ``#!`` script.
    """
    if not cmdline or not argv or len(cmdline) < len(argv):
        return False
    head = cmdline[len(cmdline) - len(argv)]
    return list(cmdline[len(cmdline) - len(argv) + 1 :]) == list(argv[1:]) and (
        os.path.basename(head) == os.path.basename(argv[0])
    )


def find_processes(argv: Sequence[str]) -> list[int]:
    """PIDs of live processes started with the command line ``argv``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and same_command(process_cmdline(int(entry.name)), argv):
            found.append(int(entry.name))
    return found


def kill_leftover(pid: int | None, argv: Sequence[str], grace: float) -> list[int]:
    """Kill backends of an earlier DynLLM run that are still alive.

    A process counts as ours only if its command line is the one we recorded
    when we started it (binary, model path and port included, see
    :func:`same_command`); any other process that holds the PID is left alone.
    """
    pids = []
    if pid and same_command(process_cmdline(pid), argv):
        pids.append(pid)
    else:
        pids.extend(find_processes(argv))
    for p in pids:
        _signal_group(p, signal.SIGTERM)
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            continue
        # Only the child of the dead DynLLM, now re-parented: poll /proc.
        deadline = time.monotonic() + grace
        while same_command(process_cmdline(p), argv) and time.monotonic() < deadline:
            time.sleep(0.02)
        if same_command(process_cmdline(p), argv):
            _signal_group(p, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    return pids
