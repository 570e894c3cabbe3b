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
    """The interpreter named by the ``#!`` line of ``program`` (a path or a name on PATH)."""
    path = program if "/" in program else shutil.which(program)
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            first = fh.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].decode("utf-8", "replace").split()
    if not parts:
        return None
    if os.path.basename(parts[0]) == "env" and len(parts) > 1:
        return shutil.which(parts[1])
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


def detect(python: str, timeout: float = TIMEOUT) -> dict[str, object]:
    """Run the check under ``python``; raises ``RuntimeError`` saying why it failed."""
    try:
        proc = subprocess.run(
            [python, "-c", SCRIPT],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(str(exc)) from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit code {proc.returncode}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
    except (ValueError, IndexError):
        raise RuntimeError(f"unexpected output: {proc.stdout[-200:]!r}") from None


def report(cfg: Config) -> None:
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
        info = detect(python)
    except RuntimeError as exc:
        log.warning("torch backends (%s): torch unusable: %s", what, exc)
        return
    log.info("torch backends (%s, torch %s): %s", what, info.get("version"), info.get("backends"))


def report_in_background(cfg: Config) -> threading.Thread:
    t = threading.Thread(target=report, args=(cfg,), name="torch-info", daemon=True)
    t.start()
    return t
