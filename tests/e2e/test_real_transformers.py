"""The real ``transformers serve`` (5.24.0, CPU torch) behind DynLLM, with tiny random
models written offline: chat, streams, the alias rewrite both ways, transcription
uploads, a load failure, and eviction shared with a real llama-server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.support.harness import pid_alive, sse_events, wait_for, wav_bytes

pytestmark = pytest.mark.usefixtures("offline_hub")


@pytest.fixture
def tf(
    dynllm: Callable[..., Any],
    transformers_cli: Path,
    hf_models: dict[str, Path],
    llama_server: Path,
    gguf_files: dict[str, Path],
    tmp_path: Path,
) -> Callable[..., Any]:
    """Start DynLLM with transformers models (linked into this test's folder) and a llama."""
    mdir = tmp_path / "models"
    mdir.mkdir()
    for name, src in hf_models.items():
        (mdir / name).symlink_to(src, target_is_directory=True)
    (mdir / "tiny-chat.gguf").symlink_to(gguf_files["chat"])

    def start(extra: list[dict[str, Any]] | None = None, budget: int = 1000, **llm: Any) -> Any:
        models = [
            {
                "name": "tiny",
                "path": str(mdir / "tiny-llama"),
                "backend": "transformers",
                "vram_mb": 600,
                "device": "cpu",
                "dtype": "float32",
                **llm,
            },
            {
                "name": "whisper",
                "path": str(mdir / "tiny-whisper"),
                "backend": "transformers",
                "model_type": "transcription",
                "vram_mb": 300,
            },
            {
                "name": "llama",
                "path": str(mdir / "tiny-chat.gguf"),
                "backend": "llamacpp",
                "vram_mb": 600,
                "context_size": 512,
                "extra_args": ["-t", "1"],
            },
            *(extra or []),
        ]
        return dynllm(
            models,
            total_vram_mb=budget,
            enabled_backends=["llamacpp", "transformers"],
            backend={
                "llamacpp_binary": str(llama_server),
                "transformers_binary": str(transformers_cli),
                "stop_timeout_seconds": 5,
                "load_timeout_seconds": 120,
            },
        )

    return start


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")


def test_chat_alias_rewrite_stream_and_argv(tf, request: pytest.FixtureRequest) -> None:
    d = tf()
    client = OpenAI(base_url=d.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    request.addfinalizer(client.close)
    msgs = [{"role": "user", "content": "Hello"}]
    full = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6)
    assert full.model == "tiny"  # the backend echoed its local path; DynLLM names the alias
    text = full.choices[0].message.content
    assert text and full.choices[0].finish_reason == "length"

    pid = d.backend_pids()["tiny"]
    argv = cmdline(pid)
    i = argv.index("serve")
    port = d.admin()["tiny"]["port"]
    assert argv[i:] == [
        "serve",
        str(Path(d.config.parent) / "models" / "tiny-llama"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--dtype",
        "float32",
    ]

    chunks = list(
        client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, stream=True)
    )
    assert chunks and all(c.model == "tiny" for c in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # greedy decoding: same answer either way

    raw = d.chat("tiny", stream=True, max_tokens=3, messages=msgs)
    assert raw.status_code == 200
    assert "/tiny-llama" not in raw.text  # no trace of the local path reaches the client
    events = sse_events(raw)
    # transformers serve leaves out the closing [DONE]; DynLLM adds it, once.
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"

    comp = d.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 3})
    assert comp.status_code == 200, comp.text
    assert comp.json()["model"] == "tiny"
    assert "Content-Length" not in comp.headers or int(comp.headers["Content-Length"]) == len(
        comp.content
    )


def test_startup_logs_the_torch_backends_of_the_transformers_environment(tf) -> None:
    d = tf()
    line = wait_for(
        lambda: next((x for x in d.log().splitlines() if "torch backends" in x), None), 60
    )
    assert "torch 2.13.0+cpu" in line and "['cpu']" in line, line


def test_revision_is_rendered_as_path_at_revision(tf) -> None:
    d = tf(revision="main")
    r = d.chat("tiny", max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "tiny"
    argv = cmdline(d.backend_pids()["tiny"])
    assert argv[argv.index("serve") + 1].endswith("/models/tiny-llama@main")


def test_transcription_upload_with_alias_rewrite(tf) -> None:
    d = tf()
    audio = wav_bytes(1.0)
    r = d.post(
        "/v1/audio/transcriptions",
        data={"model": "whisper"},
        files={"file": ("speech.wav", audio, "audio/wav")},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["text"], str) and r.json()["text"].strip()
    with OpenAI(base_url=d.url + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
        out = client.audio.transcriptions.create(
            model="whisper", file=("a.wav", audio, "audio/wav")
        )
    assert out.text == r.json()["text"]
    # The chat model is not a transcription model: refused before anything starts.
    bad = d.post(
        "/v1/audio/transcriptions",
        data={"model": "tiny"},
        files={"file": ("speech.wav", audio, "audio/wav")},
    )
    assert bad.status_code == 400
    assert "/v1/chat/completions" in bad.json()["error"]["message"]
    assert "tiny" not in d.backend_pids()
    # transformers serve has no translation route: refused before a request is sent.
    tr = d.post(
        "/v1/audio/translations",
        data={"model": "whisper"},
        files={"file": ("speech.wav", audio, "audio/wav")},
    )
    assert tr.status_code == 400, tr.text
    assert "it serves: /v1/audio/transcriptions" in tr.json()["error"]["message"]


def test_eviction_between_transformers_and_llamacpp(tf) -> None:
    d = tf(budget=1000)
    msgs = [{"role": "user", "content": "Hi"}]
    assert d.chat("tiny", max_tokens=2, messages=msgs).status_code == 200
    tf_pid = d.backend_pids()["tiny"]
    assert d.chat("llama", max_tokens=2, messages=msgs).status_code == 200
    assert d.state("tiny") == "unloaded" and not pid_alive(tf_pid)
    llama_pid = d.backend_pids()["llama"]
    started = time.monotonic()
    assert d.chat("tiny", max_tokens=2, messages=msgs).status_code == 200
    assert d.state("llama") == "unloaded" and not pid_alive(llama_pid)
    assert time.monotonic() - started < 120
    loaded = [m for m in d.admin().values() if m["state"] == "loaded"]
    assert [m["name"] for m in loaded] == ["tiny"]


def test_quantization_without_bitsandbytes_fails_with_its_reason(tf) -> None:
    d = tf(quantization="bnb-4bit")
    r = d.chat("tiny", max_tokens=2, messages=[{"role": "user", "content": "Hi"}], timeout=120)
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "backend_load_failed"
    assert "bitsandbytes" in err["message"]
    assert d.state("tiny") == "failed"
