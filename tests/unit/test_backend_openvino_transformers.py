"""argv, written files, readiness probes, routes and model names of the OVMS and
transformers backends (pure functions of the config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dynllm.backends import Probe, get_backend
from dynllm.config import ConfigError, build_config
from dynllm.endpoints import PATHS, Endpoint


def cfg_with(**model: Any):  # noqa: ANN201
    base = {"name": "qwen", "path": "/m/model", "vram_mb": 1}
    return build_config(
        {
            "backend": {
                "ovms_binary": "/opt/ovms/bin/ovms",
                "transformers_binary": "/venv/bin/transformers",
            },
            "enabled_backends": ["llamacpp", "openvino", "transformers"],
            "db_path": "/var/lib/dynllm/state.db",
            "models": [{**base, **model}],
        },
        Path("/"),
    )


# --------------------------------------------------------------------------- OpenVINO

CONFIG_FLOW = ["llm", "embedding", "rerank", "classification", "detection", "segmentation", "ocr"]


@pytest.mark.parametrize("model_type", CONFIG_FLOW)
def test_openvino_config_flow_argv_and_file(model_type: str) -> None:
    cfg = cfg_with(
        backend="openvino",
        model_type=model_type,
        target_device="GPU",
        ovms_shape="auto",
        extra_args=["--log_level", "DEBUG"],
    )
    b = get_backend("openvino")
    m = cfg.models[0]
    conf = "/var/lib/dynllm/run/qwen.ovms.json"
    assert b.argv(cfg, m, 9150) == [
        "/opt/ovms/bin/ovms",
        "--config_path",
        conf,
        "--port",
        "0",
        "--rest_port",
        "9150",
        "--rest_bind_address",
        "127.0.0.1",
        "--log_level",
        "DEBUG",
    ]
    files = b.files(cfg, m)
    assert list(files) == [conf]
    assert json.loads(files[conf]) == {
        "model_config_list": [
            {
                "config": {
                    "name": "qwen",
                    "base_path": "/m/model",
                    "target_device": "GPU",
                    "shape": "auto",
                }
            }
        ]
    }
    assert b.readiness(m) == (
        Probe("GET", "/v2/health/ready"),
        Probe("GET", "/v2/models/qwen/ready", final=True),
    )
    assert b.upstream_model(m) is None  # OVMS serves it under the public name
    assert b.env(cfg, m) == {"API_KEY": None}  # never inherited: DynLLM sends no key


def test_distinct_names_never_share_a_config_file() -> None:
    from dynllm.config import safe_filename

    names = ["org/phi", "org:phi", "org_phi", "org_phi-" + "0" * 8, ".hidden", "x" * 121, "x" * 122]
    files = {safe_filename(n) for n in names}
    assert len(files) == len(names)
    assert safe_filename("org_phi") == "org_phi"  # safe names stay readable
    assert all("/" not in f and not f.startswith(".") for f in files)


def test_relative_model_paths_are_normalised_for_ovms(tmp_path: Path) -> None:
    cfg = build_config(
        {
            "models_dir": "../models",
            "models": [
                {"name": "p", "path": "./ov/../ov/phi", "backend": "openvino", "vram_mb": 1}
            ],
        },
        tmp_path / "etc",
    )
    base = json.loads(next(iter(get_backend("openvino").files(cfg, cfg.models[0]).values())))
    assert base["model_config_list"][0]["config"]["base_path"] == str(tmp_path / "models/ov/phi")


def test_openvino_config_defaults_and_quoted_probe() -> None:
    cfg = cfg_with(backend="openvino", name="org/phi-3:int4")
    b = get_backend("openvino")
    m = cfg.models[0]
    (text,) = b.files(cfg, m).values()
    entry = json.loads(text)["model_config_list"][0]["config"]
    assert entry == {"name": "org/phi-3:int4", "base_path": "/m/model", "target_device": "CPU"}
    assert "/var/lib/dynllm/run/org_phi-3_int4-d1b709b6.ovms.json" in b.argv(cfg, m, 9100)
    assert b.readiness(m)[-1].path == "/v2/models/org%2Fphi-3%3Aint4/ready"


@pytest.mark.parametrize(
    ("model_type", "task", "route"),
    [
        ("transcription", "speech2text", "/v3/audio/transcriptions"),
        ("speech", "text2speech", "/v3/audio/speech"),
        ("image_generation", "image_generation", "/v3/images/generations"),
    ],
)
def test_openvino_task_mode(model_type: str, task: str, route: str) -> None:
    cfg = cfg_with(backend="openvino", model_type=model_type, target_device="NPU")
    b = get_backend("openvino")
    m = cfg.models[0]
    assert b.argv(cfg, m, 9101) == [
        "/opt/ovms/bin/ovms",
        "--model_path",
        "/m/model",
        "--model_name",
        "qwen",
        "--task",
        task,
        "--target_device",
        "NPU",
        "--port",
        "0",
        "--rest_port",
        "9101",
        "--rest_bind_address",
        "127.0.0.1",
    ]
    assert b.files(cfg, m) == {}
    assert b.readiness(m) == (
        Probe("OPTIONS", route, frozenset({200, 204})),
        Probe("GET", "/v2/health/ready"),
    )


def test_openvino_routes() -> None:
    cfg = cfg_with(backend="openvino")
    b = get_backend("openvino")
    m = cfg.models[0]
    expected = {
        Endpoint.CHAT: "/v3/chat/completions",
        Endpoint.COMPLETIONS: "/v3/completions",
        Endpoint.EMBEDDINGS: "/v3/embeddings",
        Endpoint.RERANK: "/v3/rerank",
        Endpoint.TRANSCRIPTIONS: "/v3/audio/transcriptions",
        Endpoint.TRANSLATIONS: "/v3/audio/translations",
        Endpoint.SPEECH: "/v3/audio/speech",
        Endpoint.IMAGES: "/v3/images/generations",
    }
    for endpoint, route in expected.items():
        assert b.upstream_path(m, endpoint, PATHS[endpoint]) == route
    for path in ("/v2/models/qwen", "/v2/models/qwen/infer", "/v2/models/qwen/versions/2/infer"):
        assert b.upstream_path(m, Endpoint.KSERVE, path) == path


# --------------------------------------------------------------------------- transformers


def test_transformers_minimal_argv_passes_no_unset_flags() -> None:
    cfg = cfg_with(backend="transformers")
    b = get_backend("transformers")
    m = cfg.models[0]
    assert b.argv(cfg, m, 9120) == [
        "/venv/bin/transformers",
        "serve",
        "/m/model",
        "--host",
        "127.0.0.1",
        "--port",
        "9120",
    ]
    assert b.readiness(m) == (Probe("GET", "/health"),)
    assert b.upstream_model(m) == "/m/model"
    assert b.files(cfg, m) == {}
    assert b.upstream_path(m, Endpoint.CHAT, "/v1/chat/completions") == "/v1/chat/completions"


def test_transformers_every_flag() -> None:
    cfg = cfg_with(
        backend="transformers",
        device="cuda:0",
        dtype="BFloat16",
        quantization="bnb-4bit",
        trust_remote_code=True,
        compile_model=True,
        continuous_batching=True,
        attn_implementation="sdpa",
        model_timeout=120,
        revision="v1.2",
        extra_args=["--log-level", "debug"],
    )
    b = get_backend("transformers")
    m = cfg.models[0]
    assert b.argv(cfg, m, 9120) == [
        "/venv/bin/transformers",
        "serve",
        "/m/model@v1.2",
        "--host",
        "127.0.0.1",
        "--port",
        "9120",
        "--device",
        "cuda:0",
        "--dtype",
        "bfloat16",
        "--quantization",
        "bnb-4bit",
        "--trust-remote-code",
        "--compile",
        "--continuous-batching",
        "--attn-implementation",
        "sdpa",
        "--model-timeout",
        "120",
        "--log-level",
        "debug",
    ]
    assert b.upstream_model(m) == "/m/model@v1.2"


def test_continuous_batching_is_refused_for_transcription() -> None:
    with pytest.raises(ConfigError) as err:
        cfg_with(backend="transformers", model_type="transcription", continuous_batching=True)
    assert "continuous_batching: transformers serve cannot transcribe" in str(err.value)


def test_quantization_is_refused_for_non_llm_models() -> None:
    with pytest.raises(ConfigError) as err:
        cfg_with(backend="transformers", model_type="transcription", quantization="bnb-8bit")
    assert "models[0] (qwen): quantization: only model_type 'llm' can be quantized" in str(
        err.value
    )


def test_backend_not_enabled_is_refused_at_load() -> None:
    with pytest.raises(ConfigError) as err:
        build_config(
            {"models": [{"name": "t", "path": "/m", "backend": "transformers", "vram_mb": 1}]},
            Path("/"),
        )
    assert "models[0] (t): backend: 'transformers' is not in enabled_backends" in str(err.value)


@pytest.mark.parametrize(
    ("backend", "model_type"),
    [("transformers", "embedding"), ("transformers", "speech"), ("llamacpp", "transcription")],
)
def test_model_type_the_backend_cannot_serve(backend: str, model_type: str) -> None:
    with pytest.raises(ConfigError) as err:
        cfg_with(backend=backend, model_type=model_type)
    assert f"model_type: '{model_type}' is not served by backend '{backend}'" in str(err.value)
