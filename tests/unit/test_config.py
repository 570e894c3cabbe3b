from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from dynllm.config import ConfigError, build_config, load_config, warnings_for


def model(name: str = "m", **kw: Any) -> dict[str, Any]:
    return {"name": name, "path": f"{name}.gguf", "backend": "llamacpp", "vram_mb": 100, **kw}


def errors_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(raw, Path("/cfg"))
    return info.value.errors


def test_defaults_follow_the_spec() -> None:
    cfg = build_config({}, Path("/cfg"))
    assert cfg.server.host == "0.0.0.0"
    assert cfg.server.port == 8000
    assert cfg.server.threads >= 64
    assert cfg.total_vram_mb == 8192
    assert cfg.idle_timeout_seconds == 300
    assert cfg.enabled_backends == ["llamacpp", "openvino"]
    assert cfg.models_dir is None
    assert cfg.db_path == "/cfg/dynllm_state.db"
    assert cfg.log_level == "info"
    assert cfg.preload_models == []
    b = cfg.backend
    assert (b.llamacpp_binary, b.ovms_binary, b.transformers_binary) == (
        "llama-server",
        "ovms",
        "transformers",
    )
    assert (b.port_range_start, b.port_range_end) == (9100, 9200)


def test_model_defaults() -> None:
    m = build_config({"models": [model()]}, Path("/cfg")).models[0]
    assert m.model_type == "llm"
    assert m.target_device == "CPU"
    assert m.n_gpu_layers == -1
    assert m.context_size == 4096
    assert m.quantization == "none"
    assert m.unload_time is None
    assert m.extra_args == []


@pytest.mark.parametrize("value", [-1, "-1", "inf", ".inf", float("inf"), "Inf"])
def test_never_unload_spellings(value: Any) -> None:
    cfg = build_config(
        {"idle_timeout_seconds": value, "models": [model(unload_time=value)]}, Path("/c")
    )
    assert math.isinf(cfg.idle_timeout_seconds)
    assert math.isinf(cfg.models[0].unload_time or 0)


def test_yaml_dot_inf_is_never(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("idle_timeout_seconds: .inf\nmodels: []\n")
    assert math.isinf(load_config(p).idle_timeout_seconds)


@pytest.mark.parametrize("value", [-5, "soon", True])
def test_bad_timeouts_are_refused(value: Any) -> None:
    (err,) = errors_of({"models": [model("llama3", unload_time=value)]})
    assert err.startswith("models[0] (llama3): unload_time:")


def test_per_model_unload_time_overrides_global() -> None:
    cfg = build_config(
        {"idle_timeout_seconds": 60, "models": [model("a"), model("b", unload_time=5)]}, Path("/")
    )
    assert cfg.idle_timeout_for(cfg.models[0]) == 60
    assert cfg.idle_timeout_for(cfg.models[1]) == 5


def test_missing_field_names_model_and_key() -> None:
    raw = {
        "models": [model("a"), model("b"), {"name": "llama3", "path": "x", "backend": "llamacpp"}]
    }
    assert errors_of(raw) == ["models[2] (llama3): vram_mb: field required"]


def test_unknown_keys_are_named() -> None:
    raw = {"modles": [], "server": {"prot": 1}, "models": [model("a", vram=1)]}
    errs = errors_of(raw)
    assert "top level: unknown key 'modles'" in errs
    assert "server: unknown key 'prot'" in errs
    assert "models[0] (a): unknown key 'vram'" in errs


def test_duplicate_names() -> None:
    errs = errors_of({"models": [model("a"), model("a")]})
    assert errs == ["models[1] (a): name: duplicate of models[0]"]


def test_unknown_backend() -> None:
    (err,) = errors_of({"models": [model("a", backend="vllm")]})
    assert err.startswith("models[0] (a): backend:") and "'vllm'" in err


def test_backend_not_enabled() -> None:
    raw = {"enabled_backends": ["llamacpp"], "models": [model("t", backend="openvino")]}
    (err,) = errors_of(raw)
    assert "models[0] (t): backend: 'openvino' is not in enabled_backends" in err


def test_model_type_the_backend_cannot_serve() -> None:
    (err,) = errors_of({"models": [model("w", model_type="transcription")]})
    assert "models[0] (w): model_type: 'transcription' is not served by backend 'llamacpp'" in err


def test_quantization_only_for_llm() -> None:
    raw = {
        "enabled_backends": ["transformers"],
        "models": [
            model("w", backend="transformers", model_type="transcription", quantization="bnb-4bit")
        ],
    }
    (err,) = errors_of(raw)
    assert err.startswith("models[0] (w): quantization:")


def test_transformers_and_openvino_fields_are_validated() -> None:
    raw = {
        "enabled_backends": ["openvino", "transformers"],
        "models": [
            model("h", backend="transformers", dtype="float8", attn_implementation="magic"),
        ],
    }
    errs = errors_of(raw)
    assert any(e.startswith("models[0] (h): dtype:") for e in errs)
    assert any(e.startswith("models[0] (h): attn_implementation:") for e in errs)


def test_preload_must_name_a_model() -> None:
    (err,) = errors_of({"preload_models": ["ghost"], "models": [model("a")]})
    assert err == "preload_models[0]: 'ghost' is not a configured model name"


def test_port_range_must_hold_every_model_that_can_be_loaded_at_once() -> None:
    raw = {
        "total_vram_mb": 1000,
        "backend": {"port_range_start": 9000, "port_range_end": 9001},
        "models": [model("a", vram_mb=300), model("b", vram_mb=300), model("c", vram_mb=300)],
    }
    (err,) = errors_of(raw)
    assert "has 2 port(s) but 3 models could be loaded at once" in err
    raw["total_vram_mb"] = 600
    build_config(raw, Path("/"))  # only two fit at once: fine


def test_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    p = tmp_path / "cfg" / "config.yaml"
    p.write_text(
        "models_dir: models\n"
        "db_path: state/dynllm.db\n"
        "backend: {llamacpp_binary: bin/llama-server}\n"
        "models:\n"
        "  - {name: a, path: a.gguf, backend: llamacpp, vram_mb: 1}\n"
        "  - {name: b, path: /abs/b.gguf, backend: llamacpp, vram_mb: 1}\n"
    )
    cfg = load_config(p)
    base = tmp_path / "cfg"
    assert cfg.models[0].path == str(base / "models" / "a.gguf")
    assert cfg.models[1].path == "/abs/b.gguf"
    assert cfg.db_path == str(base / "state" / "dynllm.db")
    assert cfg.backend.llamacpp_binary == str(base / "bin" / "llama-server")


def test_binary_name_without_slash_stays_a_name() -> None:
    cfg = build_config({}, Path("/cfg"))
    assert cfg.backend.llamacpp_binary == "llama-server"


def test_warnings_for_oversized_model_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "ok.gguf").write_bytes(b"")
    cfg = build_config(
        {
            "total_vram_mb": 1000,
            "models_dir": str(tmp_path),
            "backend": {"llamacpp_binary": "/bin/true"},
            "models": [
                {"name": "big", "path": "ok.gguf", "backend": "llamacpp", "vram_mb": 2000},
                {"name": "gone", "path": "nope.gguf", "backend": "llamacpp", "vram_mb": 10},
            ],
        },
        tmp_path,
    )
    w = warnings_for(cfg)
    assert any("models[0] (big): vram_mb 2000 exceeds total_vram_mb 1000" in x for x in w)
    assert any("models[1] (gone): path" in x and "does not exist" in x for x in w)
    assert len(w) == 2


def test_warnings_for_transformers_options_it_ignores(tmp_path: Path) -> None:
    (tmp_path / "hf").mkdir()
    cfg = build_config(
        {
            "enabled_backends": ["transformers"],
            "backend": {"transformers_binary": "/bin/true"},
            "models": [
                {
                    "name": "t",
                    "path": str(tmp_path / "hf"),
                    "backend": "transformers",
                    "vram_mb": 1,
                    "model_timeout": 60,
                    "revision": "v2",
                }
            ],
        },
        tmp_path,
    )
    w = warnings_for(cfg)
    assert any(x.startswith("models[0] (t): model_timeout: transformers serve ignores") for x in w)
    assert any(x.startswith("models[0] (t): revision: 'v2' has no effect") for x in w)
    assert len(w) == 2


def test_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(p)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "config.example.yaml"
    cfg = load_config(example)
    assert cfg.models, "the example should show models"


def test_nul_bytes_are_refused() -> None:
    errs = errors_of({"models": [model("a", extra_args=["-x", "a\x00b"])]})
    assert errs == ["models[0] (a): extra_args: must not contain NUL characters"]


def test_server_port_inside_backend_range_is_refused() -> None:
    (err,) = errors_of({"server": {"port": 9150}})
    assert "lies inside the backend port range 9100-9200" in err


def test_booleans_are_not_numbers() -> None:
    (err,) = errors_of({"models": [model("a", vram_mb=True)]})
    assert err.startswith("models[0] (a): vram_mb:")


def test_api_keys_from_config_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNLLM_API_KEYS", "k2, k3,,")
    monkeypatch.setenv("DYNLLM_ADMIN_API_KEY", "envadmin")
    cfg = build_config({"api_keys": ["k1"]}, Path("/"))
    assert cfg.client_keys() == ["k1", "k2", "k3"]
    assert cfg.admin_key() == "envadmin"
    assert "k1" not in repr(cfg) and "k1" not in str(cfg.model_dump())  # SecretStr hides it
    assert build_config({"admin_api_key": "cfgadmin"}, Path("/")).admin_key() == "cfgadmin"
    with pytest.raises(ConfigError) as err:
        build_config({"api_keys": ["has space"], "admin_api_key": ""}, Path("/"))
    assert "api_keys[0]: must be non-empty" in str(err.value)
    assert "admin_api_key: must be non-empty" in str(err.value)
    assert "has space" not in str(err.value)


def test_open_server_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from dynllm.auth import warn_if_open

    monkeypatch.delenv("DYNLLM_API_KEYS", raising=False)
    monkeypatch.delenv("DYNLLM_ADMIN_API_KEY", raising=False)
    with caplog.at_level(logging.WARNING, logger="dynllm.auth"):
        warn_if_open(build_config({"server": {"host": "127.0.0.1"}}, Path("/")))
        warn_if_open(build_config({"server": {"host": "localhost"}}, Path("/")))
        warn_if_open(build_config({"server": {"host": "0.0.0.0"}, "api_keys": ["k"]}, Path("/")))
        assert caplog.records == []
        warn_if_open(build_config({"server": {"host": "0.0.0.0"}}, Path("/")))
    (rec,) = caplog.records
    assert "no api_keys configured and listening on 0.0.0.0" in rec.getMessage()


def test_trusted_proxy_settings_are_checked() -> None:
    assert build_config({"server": {"trusted_proxy": "127.0.0.1"}}, Path("/"))
    assert build_config({"server": {"trusted_proxy": "*"}}, Path("/"))
    for server, msg in (
        ({"trusted_proxy": "nginx.local"}, "is not an IP address"),
        ({"trusted_proxy": "::1", "trusted_proxy_headers": []}, "name at least one header"),
        ({"trusted_proxy_headers": ["forwarded", "x-forwarded-for"]}, "cannot be combined"),
    ):
        with pytest.raises(ConfigError, match=msg):
            build_config({"server": server}, Path("/"))


def test_relative_state_paths_go_to_the_systemd_state_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    cfg = build_config({"db_path": "dynllm_state.db", "models_dir": "m"}, Path("/opt/dynllm"))
    assert cfg.db_path == str(tmp_path / "state" / "dynllm_state.db")
    assert cfg.models_dir == "/opt/dynllm/m"  # models stay relative to the config
    assert build_config({"db_path": "/x/s.db"}, Path("/opt")).db_path == "/x/s.db"
