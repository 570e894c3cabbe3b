"""Install a pinned ``transformers serve`` into its own venv for the real-backend tests.

Stdlib only (``scripts/fetch_transformers_serve.py`` runs it with the system
``python3``). The venv lives outside the clone, keyed by the pinned versions::

    ${DYNLLM_CACHE_DIR:-~/.cache/dynllm}/transformers-serve/<TAG>/venv/

torch is installed first and on its own with ``pip install torch==2.13.0``: on these
machines pip takes the CPU build from the local wheel directory, while letting
``transformers[serving]`` pull torch would fetch a multi-GB CUDA build. A marker file
is written last, so an interrupted install is redone from scratch.
``DYNLLM_TRANSFORMERS`` may name an existing ``transformers`` executable instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.llama_bin import _lock, cache_root

TORCH = "torch==2.13.0"
TRANSFORMERS = "transformers[serving]==5.24.0"
# python-multipart: transformers serve answers /v1/audio/transcriptions with a 500 without it.
EXTRAS = ["python-multipart", "soundfile", "soxr"]
TAG = "5.24.0-torch2.13.0"
MARKER_NAME = ".complete"
ENV_OVERRIDE = "DYNLLM_TRANSFORMERS"


class TransformersInstallError(RuntimeError):
    pass


def install_dir() -> Path:
    return cache_root() / "transformers-serve" / TAG


def venv_dir() -> Path:
    return install_dir() / "venv"


def binary_path() -> Path:
    return venv_dir() / "bin" / "transformers"


def python_path() -> Path:
    return venv_dir() / "bin" / "python"


def cached_transformers() -> Path | None:
    """The installed ``transformers`` CLI if a complete install is there (no network)."""
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        return Path(override)
    if (install_dir() / MARKER_NAME).is_file() and binary_path().is_file():
        return binary_path()
    return None


def _run(cmd: list[str], log, timeout: float) -> None:
    log("+ " + " ".join(cmd))
    proc = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-30:])
        raise TransformersInstallError(f"{cmd[0]} failed with exit {proc.returncode}:\n{tail}")


def ensure_transformers(*, verbose: bool = False) -> Path:
    """Return the path of a working ``transformers`` CLI, installing it if needed."""
    found = cached_transformers()
    if found is not None:
        return found

    def log(msg: str) -> None:
        if verbose:
            print(msg, file=sys.stderr, flush=True)

    target = install_dir()
    with _lock(target.parent / f"{TAG}.lock"):
        found = cached_transformers()
        if found is not None:
            return found
        if sys.version_info[:2] != (3, 11):
            log(
                "note: the on-disk CPU torch wheel is for Python 3.11; "
                f"this is {sys.version.split()[0]}"
            )
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        _run([sys.executable, "-m", "venv", str(venv_dir())], log, 300)
        pip = [str(python_path()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        _run(pip + [TORCH], log, 1800)
        # Pin torch again so the resolver can never swap in another build.
        _run(pip + [TORCH, TRANSFORMERS, *EXTRAS], log, 1800)
        _run(
            [
                str(python_path()),
                "-c",
                "import torch, transformers; print(torch.__version__, transformers.__version__)",
            ],
            log,
            300,
        )
        if not binary_path().is_file():
            raise TransformersInstallError(f"{binary_path()} missing after install")
        (target / MARKER_NAME).write_text(f"{TORCH} {TRANSFORMERS}\n")
        return binary_path()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        path = ensure_transformers(verbose="-q" not in args)
    except (TransformersInstallError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"error: could not install transformers serve: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0
