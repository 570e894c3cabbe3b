from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dynllm.backends import Probe, get_backend
from dynllm.config import build_config
from dynllm.endpoints import Endpoint


def cfg_with(**model: Any):  # noqa: ANN201
    base = {"name": "qwen", "path": "/m/q.gguf", "backend": "llamacpp", "vram_mb": 1}
    return build_config(
        {
            "backend": {
                "llamacpp_binary": "/opt/llama-server",
                "ovms_binary": "/opt/ovms/bin/ovms",
                "transformers_binary": "/venv/bin/transformers",
            },
            "enabled_backends": ["llamacpp", "openvino", "transformers"],
            "db_path": "/var/lib/dynllm/state.db",
            "models": [{**base, **model}],
        },
        Path("/"),
    )


def test_llamacpp_argv_for_llm() -> None:
    cfg = cfg_with(n_gpu_layers=20, context_size=8192)
    argv = get_backend("llamacpp").argv(cfg, cfg.models[0], 9123)
    assert argv == [
        "/opt/llama-server",
        "-m",
        "/m/q.gguf",
        "--host",
        "127.0.0.1",
        "--port",
        "9123",
        "-ngl",
        "20",
        "-c",
        "8192",
        "--alias",
        "qwen",
    ]


@pytest.mark.parametrize(
    ("model_type", "flag"), [("embedding", "--embeddings"), ("rerank", "--reranking")]
)
def test_llamacpp_mode_flags(model_type: str, flag: str) -> None:
    cfg = cfg_with(model_type=model_type)
    argv = get_backend("llamacpp").argv(cfg, cfg.models[0], 9100)
    assert argv[-1] == flag


def test_extra_args_are_separate_argv_items() -> None:
    cfg = cfg_with(extra_args=["--flash-attn", "on", "-np", "4; rm -rf /"])
    argv = get_backend("llamacpp").argv(cfg, cfg.models[0], 9100)
    assert argv[-4:] == ["--flash-attn", "on", "-np", "4; rm -rf /"]


def test_llamacpp_routes_and_probe() -> None:
    cfg = cfg_with()
    b = get_backend("llamacpp")
    m = cfg.models[0]
    assert b.upstream_path(m, Endpoint.CHAT, "/v1/chat/completions") == "/v1/chat/completions"
    assert b.upstream_path(m, Endpoint.RERANK, "/v1/rerank") == "/v1/rerank"
    assert b.readiness(m) == (Probe("GET", "/health"),)
    assert b.upstream_model(m) is None  # --alias makes llama-server speak the public name
    assert b.files(cfg, m) == {}


def test_same_command_recognises_scripts_and_rejects_strangers() -> None:
    from dynllm.process import same_command

    argv = ["/opt/fake.py", "-m", "/m/a.gguf", "--port", "9100"]
    assert same_command(argv, argv)
    assert same_command(["python3", *argv], argv)  # a #! script under its interpreter
    assert same_command(
        ["llama-server", "-m", "/m/a.gguf", "--port", "9100"],
        ["/usr/bin/llama-server", "-m", "/m/a.gguf", "--port", "9100"],
    )
    assert not same_command(["/opt/fake.py", "-m", "/m/a.gguf", "--port", "9101"], argv)
    assert not same_command(["sleep", "60"], argv)
    assert not same_command(None, argv)
    assert not same_command([], argv)
