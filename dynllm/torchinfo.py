"""Log which torch execution backends (cpu, cuda, xpu, mps) the runtime offers.

The torch that matters is the one ``transformers serve`` runs on, which often
lives in its own virtual environment: its interpreter is read from the
``#!`` line of the configured ``transformers`` script.  Without a transformers
backend DynLLM's own interpreter is asked, if torch is installed there at all.
Importing torch takes seconds, so the check runs in a child process on a
daemon thread: startup never waits for it, and a missing or broken torch is
one log line, never a failure.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from .config import Config

log = logging.getLogger("dynllm.torch")

#: Printed by the child: torch's version and the backends it can use.
SCRIPT = """\
import json, torch
found = ["cpu"]
if torch.cuda.is_available():
    found.append("cuda")
xpu = getattr(torch, "xpu", None)
if xpu is not None and xpu.is_available():
    found.append("xpu")
mps = getattr(torch.backends, "mps", None)
if mps is not None and mps.is_available():
    found.append("mps")
print(json.dumps({"version": torch.__version__, "backends": found}))
"""

TIMEOUT = 120.0


def script_interpreter(program: str) -> str | None:
    """The Python that runs ``program`` (a path or a name on PATH), if it is a Python script.

    A ``python`` next to the (resolved) script wins: that is a virtual
    environment's own interpreter, whatever launcher line pip wrote.  Otherwise
    the ``#!`` line is read, and only a Python interpreter is accepted.
    """
    path = program if "/" in program else shutil.which(program)
    if not path:
        return None
    sibling = Path(path).resolve().parent / "python"
    if os.access(sibling, os.X_OK):
        return str(sibling)
    try:
        with open(path, "rb") as fh:
            first = fh.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].decode("utf-8", "replace").split()
    if parts and os.path.basename(parts[0]) == "env":
        parts = [p for p in parts[1:] if not p.startswith("-")]
        found = shutil.which(parts[0]) if parts else None
        parts = [found] if found else []
    if not parts or not os.path.basename(parts[0]).startswith("python"):
        return None
    return parts[0]


def interpreter_for(cfg: Config) -> tuple[str, str] | None:
    """``(python, what it is)`` to ask about torch, or ``None`` when there is none."""
    if "transformers" in cfg.enabled_backends:
        python = script_interpreter(cfg.backend.transformers_binary)
        if python:
            return python, f"transformers ({cfg.backend.transformers_binary})"
        return None
    if importlib.util.find_spec("torch") is not None:
        return sys.executable, "dynllm's own environment"
    return None


class TorchCheck:
    """The child process that imports torch; :meth:`stop` ends it early (at shutdown)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def detect(self, python: str, timeout: float = TIMEOUT) -> dict[str, object]:
        """Run the check under ``python``; raises ``RuntimeError`` saying why it failed."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("DynLLM is stopping")
            try:
                self._proc = subprocess.Popen(
                    [python, "-c", SCRIPT],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
            except OSError as exc:
                raise RuntimeError(str(exc)) from None
        try:
            out, err = self._proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"no answer within {timeout:g}s") from None
        if self._proc.returncode != 0:
            lines = (err or out).strip().splitlines()
            raise RuntimeError(lines[-1] if lines else f"exit code {self._proc.returncode}")
        try:
            return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]
        except (ValueError, IndexError):
            raise RuntimeError(f"unexpected output: {out[-200:]!r}") from None

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()


def detect(python: str, timeout: float = TIMEOUT) -> dict[str, object]:
    """Run the check under ``python`` once (see :class:`TorchCheck`)."""
    return TorchCheck().detect(python, timeout)


def report(cfg: Config, check: TorchCheck | None = None) -> None:
    """Log the torch backends (or why there are none to report)."""
    found = interpreter_for(cfg)
    if found is None:
        if "transformers" in cfg.enabled_backends:
            log.warning(
                "torch backends: cannot tell, %s is not a Python script",
                cfg.backend.transformers_binary,
            )
        else:
            log.info("torch backends: torch is not installed in dynllm's environment")
        return
    python, what = found
    try:
        info = (check or TorchCheck()).detect(python)
    except RuntimeError as exc:
        log.warning("torch backends (%s): torch unusable: %s", what, exc)
        return
    log.info("torch backends (%s, torch %s): %s", what, info.get("version"), info.get("backends"))


def report_in_background(cfg: Config) -> TorchCheck:
    """Start :func:`report` on a daemon thread; the result's ``stop()`` ends its child."""
    check = TorchCheck()
    threading.Thread(target=report, args=(cfg, check), name="torch-info", daemon=True).start()
    return check
