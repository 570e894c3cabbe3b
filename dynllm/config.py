"""Configuration: pydantic models for every key, and a loader whose errors name the key.

Structural checks (types, required fields, unknown keys) are pydantic's; the
checks that span several keys (duplicate names, enabled backends, preload
names, the port range) run afterwards so every message can say which model it
is about.  Problems that only matter once a model is requested (its file is
missing, it is larger than the whole budget) are warnings here and errors at
request time.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import re
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError

BackendName = Literal["llamacpp", "openvino", "transformers"]
ModelType = Literal[
    "llm",
    "transcription",
    "speech",
    "image_generation",
    "embedding",
    "rerank",
    "classification",
    "detection",
    "segmentation",
    "ocr",
]

#: Which model types each backend can serve.
BACKEND_MODEL_TYPES: dict[str, frozenset[str]] = {
    "llamacpp": frozenset({"llm", "embedding", "rerank"}),
    "openvino": frozenset(
        {
            "llm",
            "embedding",
            "rerank",
            "transcription",
            "speech",
            "image_generation",
            "classification",
            "detection",
            "segmentation",
            "ocr",
        }
    ),
    "transformers": frozenset({"llm", "transcription"}),
}

#: Fields that only one backend reads; setting them elsewhere earns a warning.
BACKEND_ONLY_FIELDS: dict[str, str] = {
    "n_gpu_layers": "llamacpp",
    "context_size": "llamacpp",
    "target_device": "openvino",
    "ovms_shape": "openvino",
    "device": "transformers",
    "dtype": "transformers",
    "quantization": "transformers",
    "trust_remote_code": "transformers",
    "compile_model": "transformers",
    "continuous_batching": "transformers",
    "attn_implementation": "transformers",
    "model_timeout": "transformers",
    "revision": "transformers",
}

#: Environment variables that add client keys (comma-separated) and set the admin key.
ENV_API_KEYS = "DYNLLM_API_KEYS"
ENV_ADMIN_KEY = "DYNLLM_ADMIN_API_KEY"

_NEVER_WORDS = {"inf", "+inf", ".inf", "infinity", "never", "-1"}


def _parse_timeout(value: Any) -> Any:
    """Accept ``-1``, ``inf``, ``.inf`` and ``"inf"`` as *never* (``math.inf``)."""
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds, -1 or inf")
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _NEVER_WORDS:
            return math.inf
        try:
            value = float(word)
        except ValueError:
            raise ValueError(f"must be a number of seconds, -1 or inf, not {value!r}") from None
    if isinstance(value, int | float):
        if value == -1 or value == math.inf:
            return math.inf
        if value < 0 or math.isnan(value):
            raise ValueError("must be >= 0, or -1/inf for never")
        return float(value)
    return value


Timeout = Annotated[float, BeforeValidator(_parse_timeout)]


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ServerConfig(_Strict):
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535, strict=True)
    #: waitress worker threads: every in-flight request (a stream included) holds one.
    threads: int = Field(128, ge=4, le=4096)
    #: Open client connections waitress accepts at once.
    connection_limit: int = Field(1024, ge=16)
    #: Largest request body accepted, in MiB.
    max_body_mb: float = Field(200, gt=0)
    #: On SIGTERM, how long in-flight requests may finish before backends stop.
    shutdown_grace_seconds: float = Field(5, ge=0)
    #: How often the idle sweeper looks for models to unload.
    sweep_interval_seconds: float = Field(30, gt=0)
    #: Address of a reverse proxy (e.g. ``127.0.0.1``, or ``*``) whose forwarded
    #: headers are believed; ``None``: such headers from anyone are ignored.
    trusted_proxy: str | None = None
    #: Which forwarded headers the trusted proxy sets.
    trusted_proxy_headers: list[
        Literal[
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-forwarded-port",
            "forwarded",
        ]
    ] = Field(default_factory=lambda: ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"])


class BackendSettings(_Strict):
    llamacpp_binary: str = "llama-server"
    ovms_binary: str = "ovms"
    transformers_binary: str = "transformers"
    port_range_start: int = Field(9100, ge=1, le=65535, strict=True)
    #: Inclusive.
    port_range_end: int = Field(9200, ge=1, le=65535, strict=True)
    #: How long a backend may take to become ready (per model override exists).
    load_timeout_seconds: float = Field(300, gt=0)
    #: SIGTERM grace before SIGKILL when a backend is stopped.
    stop_timeout_seconds: float = Field(10, ge=0)
    #: Longest silence tolerated from a backend while relaying a request.
    request_timeout_seconds: float = Field(600, gt=0)
    #: Where each backend's stdout/stderr is written; default ``logs/`` next to the db.
    log_dir: str | None = None


class ModelConfig(_Strict):
    name: str = Field(min_length=1, max_length=200)
    path: str = Field(min_length=1)
    backend: BackendName
    model_type: ModelType = "llm"
    vram_mb: int = Field(ge=0, strict=True)
    target_device: str = "CPU"
    n_gpu_layers: int = Field(-1, strict=True)
    context_size: int = Field(4096, ge=0, strict=True)
    ovms_shape: str | None = None
    device: str | None = None
    dtype: Annotated[
        Literal["auto", "float16", "bfloat16", "float32"] | None, BeforeValidator(_lower)
    ] = None
    quantization: Literal["none", "bnb-4bit", "bnb-8bit"] = "none"
    trust_remote_code: bool = False
    compile_model: bool = False
    continuous_batching: bool = False
    attn_implementation: (
        Literal["auto", "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"]
        | None
    ) = None
    model_timeout: int | None = Field(None, ge=1)
    revision: str | None = None
    unload_time: Timeout | None = None
    #: Extra backend command-line arguments, one argv item each (never a shell string).
    extra_args: list[str] = Field(default_factory=list)
    #: Overrides ``backend.load_timeout_seconds`` for this model.
    load_timeout_seconds: float | None = Field(None, gt=0)

    def resolved_path(self) -> Path:
        """The model path after :func:`load_config` resolved it."""
        return Path(self.path)


class Config(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    total_vram_mb: int = Field(8192, ge=0, strict=True)
    idle_timeout_seconds: Timeout = 300.0
    enabled_backends: list[BackendName] = Field(default_factory=lambda: ["llamacpp", "openvino"])
    models_dir: str | None = None
    db_path: str = "dynllm_state.db"
    log_level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = (
        "info"
    )
    preload_models: list[str] = Field(default_factory=list)
    #: Keys clients must send (``Authorization: Bearer KEY``) on /v1 and /v2;
    #: more come from $DYNLLM_API_KEYS (comma-separated).  Empty: no key needed.
    api_keys: list[SecretStr] = Field(default_factory=list)
    #: Key for /admin and the status page's buttons (also $DYNLLM_ADMIN_API_KEY).
    admin_api_key: SecretStr | None = None
    backend: BackendSettings = Field(default_factory=BackendSettings)
    models: list[ModelConfig] = Field(default_factory=list)

    def model(self, name: str) -> ModelConfig | None:
        for m in self.models:
            if m.name == name:
                return m
        return None

    def idle_timeout_for(self, model: ModelConfig) -> float:
        """Effective idle timeout in seconds (``math.inf`` = never)."""
        return self.idle_timeout_seconds if model.unload_time is None else model.unload_time

    def load_timeout_for(self, model: ModelConfig) -> float:
        return model.load_timeout_seconds or self.backend.load_timeout_seconds

    def log_dir(self) -> Path:
        if self.backend.log_dir:
            return Path(self.backend.log_dir)
        return Path(self.db_path).parent / "logs"

    def client_keys(self) -> list[str]:
        """Every accepted client key: ``api_keys`` plus ``$DYNLLM_API_KEYS``."""
        keys = [k.get_secret_value() for k in self.api_keys]
        keys += [k.strip() for k in os.environ.get(ENV_API_KEYS, "").split(",") if k.strip()]
        return keys

    def admin_key(self) -> str | None:
        """``admin_api_key``, or ``$DYNLLM_ADMIN_API_KEY``."""
        if self.admin_api_key is not None:
            return self.admin_api_key.get_secret_value()
        return os.environ.get(ENV_ADMIN_KEY, "").strip() or None

    def run_dir(self) -> Path:
        """Where files written for backends (such as OVMS config files) live."""
        return Path(self.db_path).parent / "run"

    def binary_for(self, backend: str) -> str:
        return {
            "llamacpp": self.backend.llamacpp_binary,
            "openvino": self.backend.ovms_binary,
            "transformers": self.backend.transformers_binary,
        }[backend]


class ConfigError(Exception):
    """The configuration cannot be used; ``errors`` lists every problem found."""

    def __init__(self, errors: list[str], source: str = "config") -> None:
        self.errors = errors
        self.source = source
        super().__init__(f"{source}: " + "; ".join(errors))

    def __str__(self) -> str:
        lines = "\n".join(f"  - {e}" for e in self.errors)
        return f"invalid configuration ({self.source}):\n{lines}"


def safe_filename(name: str) -> str:
    """A model name made safe to use in a file name, distinct for distinct names.

    A name that is already safe is kept as it is; any other gets a short hash of
    the exact name, so ``org/phi`` and ``org:phi`` never share a file.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:120]
    if safe == name and not name.startswith("."):
        return name
    digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{safe.lstrip('.') or 'model'}-{digest}"


_KEY_RE = re.compile(r"^[\x21-\x7e]+$")
_NAME_RE = re.compile(r"^[^\s\x00-\x1f\x7f]+$")


def _where(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    """``models[2] (llama3): vram_mb`` for a pydantic error location."""
    head = ""
    rest_loc = loc
    if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
        idx = loc[1]
        name = None
        models = raw.get("models")
        if isinstance(models, list) and idx < len(models) and isinstance(models[idx], dict):
            name = models[idx].get("name")
        head = f"models[{idx}]" + (f" ({name})" if isinstance(name, str) else "")
        rest_loc = loc[2:]
    rest = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest_loc).lstrip(".")
    if head and rest:
        return f"{head}: {rest}"
    return head or rest


def _format_pydantic(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    out = []
    for err in exc.errors():
        where = _where(tuple(err["loc"]), raw)
        if err["type"] == "extra_forbidden":
            key = err["loc"][-1]
            parent = _where(tuple(err["loc"][:-1]), raw) or "top level"
            out.append(f"{parent}: unknown key '{key}'")
            continue
        msg = err["msg"]
        if err["type"] == "missing":
            msg = "field required"
        elif err["type"] == "literal_error":
            msg = f"{msg}, not {err['input']!r}"
        out.append(f"{where}: {msg}" if where else msg)
    return out


def _model_label(i: int, m: ModelConfig) -> str:
    return f"models[{i}] ({m.name})"


def max_concurrent_models(models: list[ModelConfig], budget_mb: int) -> int:
    """How many models could be resident at once within ``budget_mb``."""
    total = 0
    count = 0
    for vram in sorted(m.vram_mb for m in models):
        if vram > budget_mb - total:
            break
        total += vram
        count += 1
    return count


def _semantic_errors(cfg: Config) -> list[str]:
    errors: list[str] = []
    seen: dict[str, int] = {}
    for i, m in enumerate(cfg.models):
        label = _model_label(i, m)
        if not _NAME_RE.match(m.name):
            errors.append(f"{label}: name: must not contain whitespace or control characters")
        if m.name in seen:
            errors.append(f"{label}: name: duplicate of models[{seen[m.name]}]")
        else:
            seen[m.name] = i
        if m.backend not in cfg.enabled_backends:
            errors.append(
                f"{label}: backend: '{m.backend}' is not in enabled_backends "
                f"{list(cfg.enabled_backends)}"
            )
        if m.model_type not in BACKEND_MODEL_TYPES[m.backend]:
            allowed = ", ".join(sorted(BACKEND_MODEL_TYPES[m.backend]))
            errors.append(
                f"{label}: model_type: '{m.model_type}' is not served by backend "
                f"'{m.backend}' (it serves: {allowed})"
            )
        for field, values in (("path", [m.path]), ("extra_args", m.extra_args)):
            if any("\x00" in v for v in values):
                errors.append(f"{label}: {field}: must not contain NUL characters")
        if m.backend == "transformers" and m.continuous_batching and m.model_type != "llm":
            errors.append(
                f"{label}: continuous_batching: transformers serve cannot transcribe with "
                "continuous batching; only model_type 'llm' may use it"
            )
        if m.quantization != "none" and m.model_type != "llm":
            errors.append(
                f"{label}: quantization: only model_type 'llm' can be quantized, "
                f"not '{m.model_type}'"
            )
    for i, key in enumerate(cfg.api_keys):
        if not _KEY_RE.match(key.get_secret_value()):
            errors.append(f"api_keys[{i}]: must be non-empty, without spaces or control characters")
    if cfg.admin_api_key is not None and not _KEY_RE.match(cfg.admin_api_key.get_secret_value()):
        errors.append("admin_api_key: must be non-empty, without spaces or control characters")
    for i, name in enumerate(cfg.preload_models):
        if name not in seen:
            errors.append(f"preload_models[{i}]: '{name}' is not a configured model name")
    proxy, headers = cfg.server.trusted_proxy, cfg.server.trusted_proxy_headers
    if proxy is not None and proxy not in ("*", "localhost"):
        try:
            ipaddress.ip_address(proxy)
        except ValueError:
            errors.append(
                f"server: trusted_proxy: '{proxy}' is not an IP address, '*' or localhost"
            )
    if proxy is not None and not headers:
        errors.append("server: trusted_proxy_headers: name at least one header the proxy sets")
    if "forwarded" in headers and len(headers) > 1:
        errors.append(
            "server: trusted_proxy_headers: 'forwarded' cannot be combined with x-forwarded-*"
        )
    b = cfg.backend
    if b.port_range_end < b.port_range_start:
        errors.append(
            f"backend: port_range_end ({b.port_range_end}) is below "
            f"port_range_start ({b.port_range_start})"
        )
    else:
        if b.port_range_start <= cfg.server.port <= b.port_range_end:
            errors.append(
                f"server: port {cfg.server.port} lies inside the backend port range "
                f"{b.port_range_start}-{b.port_range_end}"
            )
        size = b.port_range_end - b.port_range_start + 1
        need = max_concurrent_models(cfg.models, cfg.total_vram_mb)
        if size < need:
            errors.append(
                f"backend: port range {b.port_range_start}-{b.port_range_end} has {size} "
                f"port(s) but {need} models could be loaded at once"
            )
    return errors


def _resolve(base: Path, value: str) -> str:
    p = Path(os.path.expanduser(value))
    # Normalised: OVMS refuses any path that contains "..".
    return os.path.normpath(p if p.is_absolute() else (base / p))


def _resolve_paths(cfg: Config, base: Path) -> None:
    """Make relative paths absolute: models against ``models_dir``, the rest against ``base``."""
    if cfg.models_dir:
        cfg.models_dir = _resolve(base, cfg.models_dir)
    model_base = Path(cfg.models_dir) if cfg.models_dir else base
    for m in cfg.models:
        m.path = _resolve(model_base, m.path)
    # Under systemd (StateDirectory=) state goes where the service may write.
    state_base = (
        Path(os.environ["STATE_DIRECTORY"].split(":")[0])
        if os.environ.get("STATE_DIRECTORY")
        else base
    )
    cfg.db_path = _resolve(state_base, cfg.db_path)
    if cfg.backend.log_dir:
        cfg.backend.log_dir = _resolve(state_base, cfg.backend.log_dir)
    for key in ("llamacpp_binary", "ovms_binary", "transformers_binary"):
        value = getattr(cfg.backend, key)
        if "/" in value:  # a path, not a name looked up on PATH
            setattr(cfg.backend, key, _resolve(base, value))


def warnings_for(cfg: Config) -> list[str]:
    """Problems that do not stop DynLLM from starting but will fail a request."""
    out: list[str] = []
    for i, m in enumerate(cfg.models):
        label = _model_label(i, m)
        if m.vram_mb > cfg.total_vram_mb:
            out.append(
                f"{label}: vram_mb {m.vram_mb} exceeds total_vram_mb {cfg.total_vram_mb}; "
                "requests for it will be refused"
            )
        if not os.path.exists(m.path):
            out.append(f"{label}: path {m.path} does not exist; requests for it will fail")
        for field in sorted(m.model_fields_set):
            owner = BACKEND_ONLY_FIELDS.get(field)
            if owner and owner != m.backend:
                out.append(f"{label}: {field} is only used by backend '{owner}'; ignored")
        if (
            m.backend == "openvino"
            and "target_device" in m.model_fields_set
            and m.model_type in ("llm", "embedding", "rerank")
        ):
            out.append(
                f"{label}: target_device: OVMS takes the device of an {m.model_type} model from "
                "its graph.pbtxt (set when the model is exported), not from this setting"
            )
        if m.backend == "transformers":
            if m.model_timeout is not None:
                out.append(
                    f"{label}: model_timeout: transformers serve ignores it for the model it is "
                    "started with; unload_time/idle_timeout_seconds decide when DynLLM stops it"
                )
            if m.revision and os.path.isdir(m.path):
                out.append(
                    f"{label}: revision: '{m.revision}' has no effect on a local directory "
                    "(transformers loads the folder as it is)"
                )
    preload = [m for m in cfg.models if m.name in set(cfg.preload_models)]
    if sum(m.vram_mb for m in preload) > cfg.total_vram_mb:
        out.append(
            "preload_models: together they declare more than total_vram_mb; "
            "later ones will evict earlier ones"
        )
    for backend in sorted({m.backend for m in cfg.models}):
        binary = cfg.binary_for(backend)
        found = os.access(binary, os.X_OK) if "/" in binary else shutil.which(binary)
        if not found:
            out.append(f"backend '{backend}': binary '{binary}' not found or not executable")
    return out


def build_config(raw: Any, base_dir: Path, source: str = "config") -> Config:
    """Validate a parsed YAML document; raise :class:`ConfigError` listing every problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["top level: must be a mapping of keys"], source)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_pydantic(exc, raw), source) from None
    errors = _semantic_errors(cfg)
    if errors:
        raise ConfigError(errors, source)
    _resolve_paths(cfg, base_dir)
    return cfg


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML config file; relative paths resolve against its folder."""
    p = Path(path).expanduser().resolve()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror or exc}"], str(p)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(p)) from None
    return build_config(raw, p.parent, str(p))


def default_config(base_dir: Path | None = None) -> Config:
    """The built-in configuration used when no config file exists: no models."""
    return build_config({}, base_dir or Path.cwd(), "built-in default")
