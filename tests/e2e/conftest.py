from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.llama_bin import ensure_llama_server
from tests.support.tiny_gguf import write_all


@pytest.fixture(scope="session")
def llama_server() -> Path:
    """The real llama-server binary (fetched once into the user cache; never skipped)."""
    return ensure_llama_server()


@pytest.fixture(scope="session")
def gguf_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_all(tmp_path_factory.mktemp("gguf"))


@pytest.fixture
def real(
    dynllm: Callable[..., Any], llama_server: Path, gguf_files: dict[str, Path], tmp_path: Path
) -> Callable[..., Any]:
    """Start DynLLM in front of the real llama-server with the tiny models.

    Models are linked into this test's own folder so that the leftover-process
    check of the ``dynllm`` fixture sees exactly this test's backends.
    """
    mdir = tmp_path / "models"
    mdir.mkdir()
    for src in gguf_files.values():
        (mdir / src.name).symlink_to(src)

    def start(budget: int = 1000, **top: Any) -> Any:
        common = {"backend": "llamacpp", "context_size": 512, "extra_args": ["-t", "1", "-np", "2"]}
        models = [
            {"name": "chat", "path": str(mdir / "tiny-chat.gguf"), "vram_mb": 400, **common},
            {"name": "chat-b", "path": str(mdir / "tiny-chat.gguf"), "vram_mb": 400, **common},
            {
                "name": "emb",
                "path": str(mdir / "tiny-embedding.gguf"),
                "vram_mb": 100,
                "model_type": "embedding",
                **common,
            },
            {
                "name": "rerank",
                "path": str(mdir / "tiny-reranker.gguf"),
                "vram_mb": 100,
                "model_type": "rerank",
                **common,
            },
        ]
        return dynllm(
            models,
            total_vram_mb=budget,
            backend={"llamacpp_binary": str(llama_server), "stop_timeout_seconds": 5},
            **top,
        )

    return start


@pytest.fixture(scope="session")
def transformers_cli() -> Path:
    """The real ``transformers`` CLI in its own venv (installed once into the user cache)."""
    from tests.support.transformers_bin import ensure_transformers

    return ensure_transformers()


@pytest.fixture(scope="session")
def hf_models(transformers_cli: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random Hugging Face models, written offline by the transformers venv's python."""
    import subprocess

    out = tmp_path_factory.mktemp("hf")
    python = transformers_cli.parent / "python"
    script = Path(__file__).resolve().parents[1] / "support" / "tiny_hf.py"
    proc = subprocess.run(
        [str(python), str(script), str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return {
        name: Path(path)
        for name, path in (line.split("\t") for line in proc.stdout.splitlines() if "\t" in line)
    }


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """There is no model hub here: transformers must never try to reach it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
