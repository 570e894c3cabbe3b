"""OpenVINO Model Server models through DynLLM, against the fake ``ovms`` executable.

The fake checks its argv against the real flag table and reads the config file
DynLLM wrote, so these tests run DynLLM's real argv, config-file and readiness
code for both OVMS start-up flows.
"""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.support.harness import (
    FAKE_OVMS,
    pid_alive,
    sse_events,
    vm_peak_kib,
    wav_bytes,
)


def upload(d, path: str, model: str, audio: bytes, **fields: str) -> requests.Response:  # noqa: ANN001
    data = {"model": model, **fields}
    return d.post(path, data=data, files={"file": ("speech.wav", audio, "audio/wav")})


def test_llm_config_flow_argv_config_file_chat_and_stream(dynllm, ov_spec, ovms_models, tmp_path):
    d = dynllm([ov_spec("phi", target_device="GPU", ovms_shape="auto")])
    assert d.state("phi") == "unloaded"
    r = d.chat("phi", max_tokens=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "phi"
    assert body["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "

    ((pid, rec),) = ovms_models.starts("phi")
    conf = str(tmp_path / "run" / "phi.ovms.json")
    assert rec["argv"][1:] == [
        "--config_path",
        conf,
        "--port",
        "0",
        "--rest_port",
        str(d.admin()["phi"]["port"]),
        "--rest_bind_address",
        "127.0.0.1",
    ]
    expected = {
        "model_config_list": [
            {
                "config": {
                    "name": "phi",
                    "base_path": str(ovms_models.root / "phi"),
                    "target_device": "GPU",
                    "shape": "auto",
                }
            }
        ]
    }
    assert rec["config"] == expected
    assert json.loads(Path(conf).read_text()) == expected
    assert d.backend_pids() == {"phi": pid}

    s = d.chat("phi", stream=True, max_tokens=4)
    events = sse_events(s)
    assert events[-1] == "[DONE]"
    text = "".join(
        json.loads(e)["choices"][0]["delta"].get("content") or ""
        for e in events[:-1]
        if json.loads(e).get("choices")
    )
    assert text == "tok0 tok1 tok2 tok3 "
    assert "request POST /v3/chat/completions" in " ".join(ovms_models.events("phi"))


def test_embeddings_rerank_and_completions_map_to_v3(dynllm, ov_spec, ovms_models):
    d = dynllm(
        [
            ov_spec("emb", model_type="embedding", servable="embeddings", embedding_dim=4),
            ov_spec("rr", model_type="rerank", servable="rerank"),
            ov_spec("gen"),
        ]
    )
    e = d.post("/v1/embeddings", json={"model": "emb", "input": ["a", "b"]})
    assert e.status_code == 200, e.text
    assert [len(x["embedding"]) for x in e.json()["data"]] == [4, 4]
    r = d.post("/v1/rerank", json={"model": "rr", "query": "q", "documents": ["x", "y", "z"]})
    assert r.status_code == 200, r.text
    assert sorted(x["index"] for x in r.json()["results"]) == [0, 1, 2]
    c = d.post("/v1/completions", json={"model": "gen", "prompt": "hi", "max_tokens": 2})
    assert c.status_code == 200, c.text
    assert any("/v3/embeddings" in ev for ev in ovms_models.events("emb"))
    assert any("/v3/rerank" in ev for ev in ovms_models.events("rr"))
    assert any("/v3/completions" in ev for ev in ovms_models.events("gen"))


@pytest.mark.parametrize(
    ("model_type", "task", "probe"),
    [
        ("transcription", "speech2text", "/v3/audio/transcriptions"),
        ("speech", "text2speech", "/v3/audio/speech"),
        ("image_generation", "image_generation", "/v3/images/generations"),
    ],
)
def test_task_mode_argv_and_options_probe(dynllm, ov_spec, ovms_models, model_type, task, probe):
    d = dynllm([ov_spec("t", model_type=model_type, target_device="CPU")])
    r = d.post("/admin/models/load", json={"model": "t"})
    assert r.status_code == 200, r.text
    ((_, rec),) = ovms_models.starts("t")
    port = str(d.admin()["t"]["port"])
    assert rec["argv"][1:] == [
        "--model_path",
        str(ovms_models.root / "t"),
        "--model_name",
        "t",
        "--task",
        task,
        "--target_device",
        "CPU",
        "--port",
        "0",
        "--rest_port",
        port,
        "--rest_bind_address",
        "127.0.0.1",
    ]
    assert rec["config"] is None
    assert f"request OPTIONS {probe}" in " ".join(ovms_models.events("t"))


def test_transcription_and_translation_upload_arrives_intact(dynllm, ov_spec, ovms_models):
    d = dynllm([ov_spec("whisper", model_type="transcription")])
    audio = wav_bytes(1.0)
    digest = hashlib.sha256(audio).hexdigest()
    for path, route in (
        ("/v1/audio/transcriptions", "/v3/audio/transcriptions"),
        ("/v1/audio/translations", "/v3/audio/translations"),
    ):
        r = upload(d, path, "whisper", audio, language="en")
        assert r.status_code == 200, r.text
        text = r.json()["text"]
        assert f"bytes={len(audio)}" in text and f"sha256={digest}" in text
        assert "model=whisper" in text
        assert f"request POST {route}" in " ".join(ovms_models.events("whisper"))
    # The model field may come after the file, as some clients send it.
    body, ctype = _multipart([("file", audio, "a.wav"), ("model", b"whisper", None)])
    r = d.post("/v1/audio/transcriptions", data=body, headers={"Content-Type": ctype})
    assert r.status_code == 200, r.text
    assert f"sha256={digest}" in r.json()["text"]


def test_multipart_errors_are_clear_400s(dynllm, ov_spec, ovms_models):
    d = dynllm([ov_spec("whisper", model_type="transcription"), ov_spec("phi")])
    audio = wav_bytes(0.1)
    r = d.post("/v1/audio/transcriptions", files={"file": ("a.wav", audio, "audio/wav")})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "missing_model"
    r = d.post("/v1/audio/transcriptions", json={"model": "whisper"})
    assert r.status_code == 400
    assert "multipart/form-data" in r.json()["error"]["message"]
    r = upload(d, "/v1/audio/transcriptions", "nope", audio)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    r = upload(d, "/v1/audio/transcriptions", "phi", audio)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "model_type_mismatch"
    assert "/v1/chat/completions" in err["message"]
    assert ovms_models.starts("whisper") == [] and ovms_models.starts("phi") == []


def test_speech_binary_passes_through_with_content_type(dynllm, ov_spec):
    d = dynllm([ov_spec("tts", model_type="speech")])
    r = d.post("/v1/audio/speech", json={"model": "tts", "input": "Hello from DynLLM"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("audio/wav")
    assert r.content[:4] == b"RIFF" and r.content[8:12] == b"WAVE"
    again = d.post("/v1/audio/speech", json={"model": "tts", "input": "Hello from DynLLM"})
    assert again.content == r.content  # the fake is deterministic: nothing lost or added


def test_image_generation_json_in_json_out(dynllm, ov_spec):
    d = dynllm([ov_spec("sd", model_type="image_generation")])
    r = d.post(
        "/v1/images/generations", json={"model": "sd", "prompt": "a cat", "size": "64x64", "n": 1}
    )
    assert r.status_code == 200, r.text
    png = base64.b64decode(r.json()["data"][0]["b64_json"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_kserve_ready_never_loads_infer_does(dynllm, ov_spec, ovms_models):
    d = dynllm([ov_spec("resnet", model_type="classification", servable="classic")])
    r = d.get("/v2/models/resnet/ready")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "model_not_ready"
    assert d.state("resnet") == "unloaded" and ovms_models.starts("resnet") == []

    infer = {
        "id": "7",
        "inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}],
    }
    r = d.post("/v2/models/resnet/infer", json=infer)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "7" and out["model_name"] == "resnet"
    assert out["outputs"][0]["data"] == [2, 4, 6]

    r = d.get("/v2/models/resnet/ready")
    assert r.status_code == 200
    meta = d.get("/v2/models/resnet")
    assert meta.status_code == 200 and meta.json()["name"] == "resnet"
    r = d.post("/v2/models/resnet/versions/1/infer", json=infer)
    assert r.status_code == 200, r.text
    assert "request POST /v2/models/resnet/versions/1/infer" in " ".join(
        ovms_models.events("resnet")
    )
    assert len(ovms_models.starts("resnet")) == 1


def test_kserve_errors(dynllm, ov_spec, spec):
    d = dynllm([ov_spec("resnet", model_type="classification", servable="classic"), spec("llama")])
    assert d.get("/v2/models/nope/ready").status_code == 404
    r = d.post("/v2/models/llama/infer", json={"inputs": []})
    assert r.status_code == 400
    assert "/v1/chat/completions" in r.json()["error"]["message"]
    assert d.get("/v2/models/resnet/infer").status_code == 405
    assert d.post("/v2/models/resnet/ready").status_code == 405
    assert d.get("/v2/health/live").status_code == 200
    assert d.get("/v2/health/ready").status_code == 200


def test_kserve_names_with_slashes_and_url_characters(dynllm, ov_spec, ovms_models):
    d = dynllm(
        [
            ov_spec("org", model_type="classification", servable="classic"),
            {**ov_spec("org/resnet#1", model_type="classification", servable="classic")},
        ]
    )
    infer = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [5]}]}
    r = d.post("/v2/models/org/resnet%231/infer", json=infer)
    assert r.status_code == 200, r.text
    assert r.json()["model_name"] == "org/resnet#1" and r.json()["outputs"][0]["data"] == [10]
    assert d.state("org/resnet#1") == "loaded" and d.state("org") == "unloaded"
    assert d.get("/v2/models/org/resnet%231/ready").status_code == 200
    assert d.get("/v2/models/org/ready").status_code == 503  # the other model, not loaded
    r = d.get("/v2/models/nothing/versions/3/ready")
    assert r.status_code == 404 and "'nothing'" in r.json()["error"]["message"]


def test_eviction_across_backends_in_one_budget(dynllm, ov_spec, spec, ovms_models):
    d = dynllm([spec("llama", vram_mb=600), ov_spec("phi", vram_mb=600)], total_vram_mb=1000)
    assert d.chat("llama", max_tokens=1).status_code == 200
    llama_pid = d.backend_pids()["llama"]
    assert d.chat("phi", max_tokens=1).status_code == 200
    assert d.state("llama") == "unloaded" and not pid_alive(llama_pid)
    ovms_pid = d.backend_pids()["phi"]
    assert d.chat("llama", max_tokens=1).status_code == 200
    assert d.state("phi") == "unloaded" and not pid_alive(ovms_pid)


def test_config_flow_model_that_fails_to_load_fails_fast_with_the_log(dynllm, ov_spec):
    # Real OVMS keeps running when a config-flow model fails to load; only its
    # ready route says so. DynLLM must not wait for the load timeout.
    d = dynllm([ov_spec("bad", fail_start=True)], backend={"load_timeout_seconds": 60})
    started = time.monotonic()
    r = d.chat("bad", max_tokens=1)
    assert time.monotonic() - started < 20
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "backend_load_failed"
    assert "started but cannot serve the model" in err["message"]
    assert "GET /v2/models/bad/ready answered 404" in err["message"]
    assert d.state("bad") == "failed"
    assert d.backend_pids() == {}  # the still-running ovms was stopped


@pytest.mark.parametrize("model_type", ["llm", "transcription"])
def test_ovms_that_exits_during_load_reports_its_log(dynllm, ov_spec, model_type):
    d = dynllm([ov_spec("bad", model_type=model_type, exit_during_load=True)])
    r = d.post("/admin/models/load", json={"model": "bad"})
    assert r.status_code == 503
    assert "exited during load" in r.json()["error"]["message"]
    assert d.state("bad") == "failed"


def test_task_mode_on_ovms_older_than_2026_2_fails_with_its_reason(dynllm, ov_spec):
    d = dynllm([ov_spec("w", model_type="transcription", ovms_version="2025.4")])
    r = d.post("/admin/models/load", json={"model": "w"})
    assert r.status_code == 503
    msg = r.json()["error"]["message"]
    assert "exited during load with code 64" in msg
    assert "model_repository_path parameter is required for pull mode" in msg


def test_ovms_that_ignores_sigterm_is_killed(dynllm, ov_spec):
    d = dynllm([ov_spec("stubborn", ignore_sigterm=True)])
    assert d.chat("stubborn", max_tokens=1).status_code == 200
    pid = d.backend_pids()["stubborn"]
    r = d.post("/admin/models/unload", json={"model": "stubborn"})
    assert r.status_code == 200, r.text
    assert not pid_alive(pid)
    assert d.stop(signal.SIGTERM) == 0


def test_100mb_upload_streams_through_in_bounded_memory(dynllm, ov_spec, tmp_path):
    d = dynllm([ov_spec("whisper", model_type="transcription")], server={"max_body_mb": 200})
    small = wav_bytes(0.1)
    assert upload(d, "/v1/audio/transcriptions", "whisper", small).status_code == 200  # warm
    before = vm_peak_kib(d.pid)

    size = 100 * 1000 * 1000
    audio_path = tmp_path / "big.bin"
    h = hashlib.sha256()
    with audio_path.open("wb") as fh:
        block = bytes(range(256)) * 4096  # 1 MiB
        written = 0
        while written < size:
            piece = block[: size - written]
            fh.write(piece)
            h.update(piece)
            written += len(piece)
    boundary = "dynllm-test-boundary-7f3a"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    tail = (
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    body_path = tmp_path / "body.bin"
    with body_path.open("wb") as out, audio_path.open("rb") as src:
        out.write(head)
        while chunk := src.read(1 << 20):
            out.write(chunk)
        out.write(tail)
    audio_path.unlink()
    with body_path.open("rb") as fh:
        r = requests.post(
            d.url + "/v1/audio/transcriptions",
            data=fh,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            timeout=120,
        )
    assert r.status_code == 200, r.text
    assert f"bytes={size}" in r.json()["text"] and f"sha256={h.hexdigest()}" in r.json()["text"]
    grown_mib = (vm_peak_kib(d.pid) - before) / 1024
    assert grown_mib < 40, f"DynLLM's peak RSS grew by {grown_mib:.0f} MiB for a 100 MB upload"


def test_concurrent_uploads_and_chat(dynllm, ov_spec):
    d = dynllm([ov_spec("whisper", model_type="transcription"), ov_spec("phi")])
    audio = wav_bytes(0.5)
    results: list[int] = []

    def one() -> None:
        results.append(upload(d, "/v1/audio/transcriptions", "whisper", audio).status_code)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    assert d.chat("phi", max_tokens=2).status_code == 200
    for t in threads:
        t.join(60)
    assert results == [200] * 8


def test_fake_ovms_is_executable():
    assert FAKE_OVMS.stat().st_mode & 0o111


def _multipart(parts: list[tuple[str, bytes, str | None]]) -> tuple[bytes, str]:
    boundary = "b-" + hashlib.sha1(b"x").hexdigest()[:12]
    out = []
    for name, value, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.append(
            f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + value + b"\r\n"
        )
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"
