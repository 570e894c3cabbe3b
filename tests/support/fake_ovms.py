#!/usr/bin/env python3
"""Fake ``ovms`` (OpenVINO Model Server) for DynLLM's integration tests.

Standard library only (Python 3.11+).  It imitates OVMS release 2025.4 (read from
the C++ sources of openvinotoolkit/model_server at tag v2025.4; the research notes
with file references live in the report that came with this file) closely enough
that DynLLM's real argv-building, config-file, spawn, readiness and relay code can
run against it.

Command line (cxxopts 3.1.1 rules, like the real binary)
--------------------------------------------------------
* the full 2025.4 flag table is accepted; ``--flag value`` and ``--flag=value``
  both work; bool flags take no separate value (``--metrics_enable`` or
  ``--metrics_enable=false``); integer flags are unsigned.
* an unknown flag or stray value prints
  ``error parsing options - unmatched arguments: --foo, `` to stderr and exits 64
  (EX_USAGE); a bad number ``error parsing options: Argument ‘x’ failed to parse``;
  a missing value ``error parsing options: Option ‘rest_port’ is missing an argument``.
* refused combinations exit 64 with the real message, e.g. ``Use either
  config_path or model_path with model_name``, ``Use config_path or model_path
  with model_name``, ``Model parameters in CLI are exclusive with the config
  file``, ``port and rest_port cannot both be unset``, ``port and rest_port cannot
  have the same values``, ``rest_port number out of range from 0 to 65535``.
  ``--port 0`` (the default) means "no gRPC"; ``--rest_port 0`` means "no REST".

Start-up modes (as real ovms)
-----------------------------
* config flow: ``--config_path FILE --port 0 --rest_port P [--rest_bind_address A]``.
  The file is read after the REST port is bound and checked against the real,
  strict JSON schema (``{"model_config_list": [{"config": {"name", "base_path",
  "target_device", "shape", ...}}]}``; unknown keys are refused).  A missing or
  invalid file exits 1.  A missing ``base_path`` directory, a ``..`` in it, or a
  model whose load fails does NOT end the process: the server becomes ready and
  that model's ready route answers 404 (real behaviour).
* single model: ``--model_path DIR --model_name NAME --rest_port P``.  A missing
  DIR or a failed load exits 1 (after the port was bound).  For a graph servable
  (anything but ``classic``) only model_name/model_path/plugin_config may be given
  on the CLI; e.g. ``--target_device`` is refused with exit 64 after binding.
* task mode, 2025.4 semantics (default): ``--task T`` means "pull and start": it
  needs ``--source_model S`` (or ``--model_name``) and ``--model_repository_path
  R`` (or env ``OVMS_MODEL_REPOSITORY_PATH``), serves ``R/S`` and ignores
  ``--model_path``.  ``--model_path DIR --model_name N --task T`` alone therefore
  exits 64 with ``model_repository_path parameter is required for pull mode``.
  If ``R/S`` exists the "download" is skipped and ``R/S/graph.pbtxt`` is
  (re)written, before the REST port is bound; if it is missing the clone fails
  and the process exits 1.
* task mode, 2026.2+ semantics: with env ``FAKE_OVMS_VERSION=2026.2`` (or later),
  or knob ``"ovms_version": "2026.2"`` in ``<--model_path>/fake_ovms.json``,
  ``--task T --model_path DIR [--model_name N]`` without ``--source_model`` serves
  DIR directly (2026.2's in-memory graph mode); nothing is written into DIR.

The served directory is ``base_path`` (config flow), ``--model_path`` (single
model, 2026.2 task mode) or ``R/S`` (2025.4 task mode).  No graph.pbtxt or model
files are needed.

Test knobs: ``<dir>/fake_ovms.json`` (JSON object; missing/invalid = defaults)
---------------------------------------------------------------------------
  servable          "llm" | "embeddings" | "rerank" | "classic" (KServe-only model)
                    | "speech2text" | "text2speech" | "image_generation"   ["llm"]
                    (ignored in task mode, where --task decides)
  load_delay        float  seconds the load takes                           [0]
  never_ready       bool   the load never ends                              [false]
  fail_start        bool   after load_delay log a realistic load error; single
                           model / task mode: exit 1; config flow: stay up with
                           the model unavailable (as real ovms)             [false]
  exit_during_load  bool   after load_delay log a crash line and exit 1      [false]
  tokens            int    tokens per completion                            [8]
  token_delay       float  seconds before each generated token              [0]
  ignore_sigterm    bool   SIGTERM/SIGINT are ignored (any served dir)      [false]
  embedding_dim     int    embedding length                                 [8]
  record_requests   bool   write ``request`` lines to fake_ovms.events      [true]
  ovms_version      str    see task mode above                  [env or "2025.4"]

Side files (each line one O_APPEND write)
-----------------------------------------
  <dir>/fake_ovms.starts   ``<pid> <json>`` first thing at every start (before any
                           argv check), json = ``{"argv": sys.argv, "config":
                           <parsed --config_path JSON or null>}``; written into
                           every existing directory the argv/config names.
  <dir>/fake_ovms.events   ``request <METHOD> <path> <pid>`` per HTTP request (into
                           every served dir), ``stream_done <pid>`` /
                           ``stream_aborted <pid>`` (into the streaming model's dir).

Routes (REST; bodies and status codes as ovms 2025.4)
----------------------------------------------------
* ``GET /v2/health/live`` 200; ``GET /v2/health/ready`` 500 ``{"error":"Error while
  loading a model"}`` while loading, then 200 (empty body).
* ``GET /v2/models/{name}[/versions/N]/ready``: 200 (empty) when loaded; 404
  ``{"error":"Model with requested name is not found"}`` for unknown names and for
  graphs still loading; 404 ``... version is not loaded yet`` for failed graphs;
  404 ``... version is not found`` for a config-flow model whose dir is missing.
* ``GET /v2/models/{name}[/versions/N]`` KServe metadata; ``POST
  /v2/models/{name}[/versions/N]/infer`` (classic servable: output ``output`` =
  first input doubled, ``id`` echoed; bad JSON 412; missing inputs 400).
* ``GET /v2``, ``GET /v1/config``, ``GET /v1/models/{name}``, ``GET /metrics``
  (with ``--metrics_enable``).
* ``POST /v3/...`` is routed by the JSON ``model`` field (Content-Type must contain
  application/json) or multipart ``model`` field; otherwise, or for an unknown
  name, 404 ``{"error":"Mediapipe graph definition with requested name is not
  found"}``.  LLM: ``/v3/[v1/]chat/completions``, ``/v3/[v1/]completions`` (tokens
  "tok0 ", "tok1 ", ...; n = min(max_tokens, knob tokens); SSE chunks end with
  ``data: [DONE]``).  Embeddings and rerank answer on any /v3 path (e.g.
  ``/v3/embeddings``, ``/v3/v1/rerank``).  speech2text: ``/v3/audio/transcriptions``
  and ``/v3/audio/translations`` (multipart streamed and hashed, never held in
  memory; ``{"text": "bytes=<n> sha256=<hex> model=<model> task=..."}``);
  text2speech: ``/v3/audio/speech`` (a small deterministic WAV, sent with
  Content-Type application/json exactly like real ovms); image_generation:
  ``/v3/images/generations`` (``{"data":[{"b64_json": <tiny PNG>}]}``).  Servable
  errors are 400 ``{"error":"Mediapipe execution failed. MP status -
  INVALID_ARGUMENT: ..."}``.
* ``GET /v3/models``, ``GET /v3/models/{name}`` (unknown: 500 ``{"error":"Model not
  found"}``).
* ``OPTIONS`` on any path: 200, empty body, CORS headers — as soon as the port is
  bound, whatever the model state (real ovms does not look at the model).
* ``--api_key_file`` / env ``API_KEY`` guard ``POST /v3/...`` (500 when wrong).

Multipart quirk kept from real ovms: ``language`` and ``stream`` are only seen when sent
as file parts (drogon's file map); as plain form fields they are ignored.

Not imitated: config.json hot reload, gRPC (``--port N`` is only logged), the 5 s
wait before a busy REST port makes real ovms exit 1, audio/model file contents,
``--add_to_config``/``--remove_from_config``.

Signals: SIGTERM/SIGINT only set a flag that is honoured once loading has ended
(real ovms loads on its main thread), then the process exits 0.  During a load
(``load_delay``, ``never_ready``) only SIGKILL ends it at once.  Logs go to stdout
in spdlog format; usage errors go to stderr.
"""

import base64
import contextlib
import hashlib
import json
import math
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from urllib.parse import unquote

if __package__:  # imported as tests.support.fake_ovms
    from . import fake_common
else:  # run by path: this file's folder is sys.path[0]
    import fake_common

PROJECT_NAME = "OpenVINO Model Server"
DEFAULT_VERSION = "2025.4"
EX_USAGE = 64
MAX_BODY = 1024 * 1024 * 1024  # drogon setClientMaxBodySize(1GB)
KNOBS_FILE = "fake_ovms.json"
CPU_COUNT = os.cpu_count() or 1

# ---------------------------------------------------------------------------
# The real 2025.4 flag table (src/cli_parser.cpp).  type: bool | u32 | u64 | str | float
# ---------------------------------------------------------------------------
FLAGS = {
    "help": "bool",
    "version": "bool",
    "port": "u32",
    "grpc_bind_address": "str",
    "rest_port": "u32",
    "rest_bind_address": "str",
    "grpc_workers": "u32",
    "grpc_max_threads": "u32",
    "grpc_memory_quota": "u64",
    "rest_workers": "u32",
    "log_level": "str",
    "log_path": "str",
    "grpc_channel_arguments": "str",
    "file_system_poll_wait_seconds": "u32",
    "sequence_cleaner_poll_wait_minutes": "u32",
    "custom_node_resources_cleaner_interval_seconds": "u32",
    "cache_dir": "str",
    "metrics_enable": "bool",
    "metrics_list": "str",
    "cpu_extension": "str",
    "allowed_local_media_path": "str",
    "allow_credentials": "bool",
    "allowed_origins": "str",
    "allowed_methods": "str",
    "allowed_headers": "str",
    "api_key_file": "str",
    "config_path": "str",
    "list_models": "bool",
    "add_to_config": "bool",
    "remove_from_config": "bool",
    "pull": "bool",
    "source_model": "str",
    "gguf_filename": "str",
    "overwrite_models": "bool",
    "model_repository_path": "str",
    "task": "str",
    "weight-format": "str",
    "extra_quantization_params": "str",
    "vocoder": "str",
    "model_name": "str",
    "model_path": "str",
    "batch_size": "str",
    "shape": "str",
    "layout": "str",
    "model_version_policy": "str",
    "nireq": "u32",
    "target_device": "str",
    "plugin_config": "str",
    "stateful": "bool",
    "idle_sequence_cleanup": "bool",
    "low_latency_transformation": "bool",
    "max_sequence_number": "u32",
}
SHORT_FLAGS = {"h": "help"}
DEFAULTS = {
    "port": 0,
    "grpc_bind_address": "0.0.0.0",
    "rest_port": 0,
    "rest_bind_address": "0.0.0.0",
    "grpc_workers": 1,
    "log_level": "INFO",
    "file_system_poll_wait_seconds": 1,
    "sequence_cleaner_poll_wait_minutes": 5,
    "custom_node_resources_cleaner_interval_seconds": 300,
    "metrics_enable": False,
    "metrics_list": "",
    "cpu_extension": "",
    "allow_credentials": False,
    "allowed_origins": "*",
    "allowed_methods": "*",
    "allowed_headers": "*",
    "api_key_file": "",
    "list_models": False,
    "add_to_config": False,
    "remove_from_config": False,
    "pull": False,
    "overwrite_models": False,
    "model_repository_path": os.environ.get("OVMS_MODEL_REPOSITORY_PATH", ""),
    "weight-format": "int8",
    "target_device": "CPU",
    "stateful": False,
    "idle_sequence_cleanup": True,
    "low_latency_transformation": False,
}

# Options of the per-task graph parsers (src/graph_export/*_cli_parser.cpp)
TASK_FLAGS = {
    "text_generation": {
        "max_num_seqs": "u32",
        "pipeline_type": "str",
        "enable_prefix_caching": "str",
        "max_num_batched_tokens": "u32",
        "cache_size": "u32",
        "draft_source_model": "str",
        "dynamic_split_fuse": "str",
        "reasoning_parser": "str",
        "tool_parser": "str",
        "enable_tool_guided_generation": "str",
        "max_prompt_len": "u32",
        "kv_cache_precision": "str",
        "model_distribution_policy": "str",
    },
    "embeddings": {"num_streams": "u32", "normalize": "str", "truncate": "str", "pooling": "str"},
    "rerank": {"num_streams": "u32", "max_allowed_chunks": "u64"},
    "image_generation": {
        "resolution": "str",
        "max_resolution": "str",
        "default_resolution": "str",
        "num_images_per_prompt": "u32",
        "guidance_scale": "float",
        "max_num_images_per_prompt": "u32",
        "default_num_inference_steps": "u32",
        "max_num_inference_steps": "u32",
        "num_streams": "u32",
    },
    "text2speech": {"num_streams": "u32"},
    "speech2text": {"num_streams": "u32"},
}
TASK_DEFAULTS = {
    "text_generation": {"enable_prefix_caching": "true", "dynamic_split_fuse": "true"},
    "embeddings": {"normalize": "true", "truncate": "false"},
}
TASK_TO_SERVABLE = {
    "text_generation": "llm",
    "embeddings": "embeddings",
    "rerank": "rerank",
    "image_generation": "image_generation",
    "text2speech": "text2speech",
    "speech2text": "speech2text",
}
SERVABLES = {
    "llm",
    "embeddings",
    "rerank",
    "classic",
    "speech2text",
    "text2speech",
    "image_generation",
}
# graph node names as written by demos/common/export_models/export_model.py
NODE_NAMES = {
    "llm": "LLMExecutor",
    "embeddings": "EmbeddingsExecutor",
    "rerank": "RerankExecutor",
    "speech2text": "S2tExecutor",
    "text2speech": "T2sExecutor",
    "image_generation": "ImageGenExecutor",
}
# user CLI settings refused when a single model is a MediaPipe graph
GRAPH_DISALLOWED_CLI = (
    "max_sequence_number",
    "batch_size",
    "shape",
    "layout",
    "model_version_policy",
    "nireq",
    "target_device",
    "stateful",
    "idle_sequence_cleanup",
    "low_latency_transformation",
)

_OPTION_RE = re.compile(r"--([A-Za-z0-9][-_A-Za-z0-9.]+)(=(.*))?|-([A-Za-z0-9].*)", re.S)
_INT_RE = re.compile(r"(-)?(0x)?([0-9a-zA-Z]+)|((0x)?0)")
_TRUE_RE = re.compile(r"(t|T)(rue)?|1")
_FALSE_RE = re.compile(r"(f|F)(alse)?|0")


class UsageError(Exception):
    """Printed to stderr as-is; the process exits 64."""


def _q(text):
    return f"\u2018{text}\u2019"


def _parse_value(kind, text):
    if kind == "str":
        return text
    if kind == "bool":
        if _TRUE_RE.fullmatch(text):
            return True
        if _FALSE_RE.fullmatch(text):
            return False
        raise UsageError(f"Argument {_q(text)} failed to parse")
    if kind == "float":
        try:
            return float(text.split()[0]) if text.strip() else float("x")
        except ValueError:
            raise UsageError(f"Argument {_q(text)} failed to parse") from None
    m = _INT_RE.fullmatch(text)
    if not m or m.group(1):
        raise UsageError(f"Argument {_q(text)} failed to parse")
    if m.group(4):
        return 0
    base = 16 if m.group(2) else 10
    try:
        value = int(m.group(3), base)
    except ValueError:
        raise UsageError(f"Argument {_q(text)} failed to parse") from None
    limit = 2**32 - 1 if kind == "u32" else 2**64 - 1
    if value > limit:
        raise UsageError(f"Argument {_q(text)} failed to parse")
    return value


def cxxopts_parse(argv, table, short=None):
    """Parse like cxxopts 3.1.1 with allow_unrecognised_options().

    Returns (values, counts, unmatched); raises UsageError with cxxopts' text.
    """
    short = short or {}
    values, counts, unmatched = {}, {}, []
    i = 0
    n = len(argv)

    def take(name, kind, inline):
        nonlocal i
        if inline is not None:
            values[name] = _parse_value(kind, inline)
        elif kind == "bool":
            values[name] = True
        elif i + 1 >= n:
            raise UsageError(f"Option {_q(name)} is missing an argument")
        else:
            values[name] = _parse_value(kind, argv[i + 1])
            i += 1
        counts[name] = counts.get(name, 0) + 1

    while i < n:
        arg = argv[i]
        if arg == "--":
            unmatched.extend(argv[i + 1 :])
            break
        m = _OPTION_RE.fullmatch(arg)
        if not m:
            unmatched.append(arg)
        elif m.group(4) is not None:  # -abc grouping
            group = m.group(4)
            for j, ch in enumerate(group):
                name = short.get(ch)
                if name is None:
                    unmatched.append("-" + ch)
                    continue
                take(name, table[name], None if j + 1 == len(group) else "true")
        else:
            name = m.group(1)
            kind = table.get(name)
            if kind is None:
                unmatched.append(arg)
            else:
                take(name, kind, m.group(3) if m.group(2) is not None else None)
        i += 1
    return values, counts, unmatched


class Args:
    """Parsed ovms command line: ``args.get(name)`` with real defaults, ``args.given(name)``."""

    def __init__(self, values, counts, task_values=None):
        self.values = values
        self.counts = counts
        self.task_values = task_values or {}

    def get(self, name, default=None):
        if name in self.values:
            return self.values[name]
        return DEFAULTS.get(name, default)

    def given(self, name):
        return self.counts.get(name, 0) > 0


def parse_cli(argv):
    """CLIParser::parse + prepare + Config::validate.  Raises UsageError / SystemExit."""
    try:
        values, counts, unmatched = cxxopts_parse(argv, FLAGS, SHORT_FLAGS)
        task_values = {}
        pull_or_task = counts.get("pull") or counts.get("task")
        if pull_or_task:
            if counts.get("task"):
                task = values["task"]
                if task not in TASK_FLAGS:
                    raise UsageError(
                        f"error parsing options - --task parameter unsupported value: {task}"
                    )
                tv, _tc, left = cxxopts_parse(unmatched, TASK_FLAGS[task])
                task_values = dict(TASK_DEFAULTS.get(task, {}))
                task_values.update(tv)
                if left:
                    raise UsageError(
                        f"task: {task} - error parsing options - unmatched arguments : "
                        + "".join(a + ", " for a in left)
                        + "\n"
                    )
            else:
                raise UsageError("error parsing options - --task parameter wasn't passed")
        elif unmatched:
            raise UsageError(
                "error parsing options - unmatched arguments: "
                + "".join(a + ", " for a in unmatched)
                + "\n"
            )
    except UsageError as e:
        msg = str(e)
        if not msg.startswith(("error parsing options -", "task: ")):
            msg = f"error parsing options: {msg}\n"
        raise UsageError(msg) from None
    args = Args(values, counts, task_values)
    for other, text in (
        ("list_models", "--list_models cannot be used with --pull or --task"),
        ("remove_from_config", "--remove_from_config cannot be used with --pull or --task"),
        ("add_to_config", "--add_to_config cannot be used with --pull or --task"),
    ):
        if pull_or_task and args.given(other):
            raise UsageError(f"error parsing options - {text}\n")
    if args.given("add_to_config") and args.given("list_models"):
        raise UsageError(
            "error parsing options - --list_models cannot be used with --add_to_config\n"
        )
    if args.given("remove_from_config") and args.given("list_models"):
        raise UsageError(
            "error parsing options - --list_models cannot be used with --remove_from_config\n"
        )
    if args.given("remove_from_config") and args.given("model_path"):
        raise UsageError(
            "error parsing options - --model_path cannot be used with --remove_from_config\n"
        )
    return args


def validate(args, version):
    """Config::validate (src/config.cpp), in the real order; returns the server mode."""
    newer = version >= (2026, 2)
    in_memory = newer and args.given("task") and not args.given("source_model")
    in_memory = in_memory and not args.given("pull")
    if args.given("pull"):
        mode = "pull"
    elif args.given("task"):
        mode = "in_memory" if in_memory else "pull_and_start"
    elif args.given("list_models"):
        mode = "list_models"
    elif args.given("add_to_config") or args.given("remove_from_config"):
        mode = "modify_config"
    else:
        mode = "serve"

    api_key_file = args.get("api_key_file")
    if api_key_file:
        try:
            with open(api_key_file, encoding="utf-8", errors="replace") as fh:
                key = fh.readline()
        except OSError:
            raise UsageError(
                "filesystem error: Error reading API key file: Unable to open file : "
                f"No such file or directory [{api_key_file}]"
            ) from None
        args.api_key = key.rstrip(" \n\r\t")
    else:
        args.api_key = os.environ.get("API_KEY", "")
    if not (args.given("pull") or args.given("task")):
        if args.given("weight-format"):
            raise UsageError(
                "--weight-format parameter unsupported for Openvino huggingface organization"
                " models."
            )
        if args.given("extra_quantization_params"):
            raise UsageError(
                "--extra_quantization_params parameter unsupported for Openvino huggingface"
                " organization models."
            )

    source = args.get("source_model") or ""
    if not source and args.given("model_name") and not (in_memory and args.given("model_path")):
        source = args.get("model_name")
    args.source_model = source
    repo = args.get("model_repository_path") or ""
    model_name = args.get("model_name") or ""
    model_path = args.get("model_path") or ""
    if mode in ("pull", "pull_and_start", "in_memory"):
        if not (mode == "in_memory" and model_path):
            if not source:
                raise UsageError("source_model parameter is required for pull mode")
            if not repo:
                raise UsageError("model_repository_path parameter is required for pull mode")
        task = args.get("task")
        if task == "text_generation":
            tv = args.task_values
            pt = tv.get("pipeline_type")
            if pt is not None and pt not in ("LM", "LM_CB", "VLM", "VLM_CB", "AUTO"):
                raise UsageError(
                    f"pipeline_type: {pt} is not allowed. Supported types: LM, LM_CB, VLM,"
                    " VLM_CB, AUTO\n"
                )
            dev = args.get("target_device")
            ok = dev in ("CPU", "GPU", "NPU", "AUTO") or dev.startswith(("HETERO", "AUTO"))
            if dev.startswith("GPU."):
                ok = dev[4:].isdigit()
            if not ok:
                raise UsageError(
                    f"target_device: {dev} is not allowed. Supported devices: CPU, GPU, NPU,"
                    " HETERO, AUTO\n"
                )
            for key in ("enable_prefix_caching", "dynamic_split_fuse"):
                if tv.get(key) not in ("true", "false"):
                    raise UsageError(
                        f"{key}: {tv.get(key)} is not allowed. Supported values: true, false\n"
                    )
        if task == "embeddings":
            for key in ("normalize", "truncate"):
                if args.task_values.get(key) not in ("true", "false"):
                    raise UsageError(
                        f"{key}: {args.task_values.get(key)} is not allowed. Supported values:"
                        " true, false\n"
                    )
        if mode == "pull":
            return mode
        if mode == "pull_and_start":
            model_name = model_name or source
            model_path = os.path.join(repo, source)
        else:
            model_name = model_name or source
    args.model_name = model_name
    args.model_path = model_path
    if mode == "list_models":
        if not repo:
            raise UsageError("Use --list_models with --model_repository_path\n")
        return mode
    config_path = args.get("config_path") or ""
    if mode != "modify_config":
        if config_path and (model_name or model_path):
            raise UsageError("Use either config_path or model_path with model_name\n")
        if not config_path and not (model_name and model_path):
            raise UsageError("Use config_path or model_path with model_name\n")
        if config_path and (
            args.given("batch_size")
            or args.get("shape")
            or args.get("nireq", 0)
            or args.get("model_version_policy")
            or args.given("target_device")
            or args.get("plugin_config")
        ):
            raise UsageError("Model parameters in CLI are exclusive with the config file\n")
        gw = args.get("grpc_workers")
        if gw > CPU_COUNT or gw < 1:
            raise UsageError(
                f"grpc_workers count should be from 1 to CPU core count : {CPU_COUNT}\n"
            )
        if args.get("metrics_enable") and args.get("rest_port") == 0:
            raise UsageError("rest_port setting is missing, metrics are enabled on rest port\n")
        if not args.get("metrics_enable") and args.get("metrics_list"):
            raise UsageError(
                "metrics_enable setting is missing, required when metrics_list is provided\n"
            )
        if args.get("rest_port") == 0 and args.get("port") == 0:
            raise UsageError("port and rest_port cannot both be unset\n")
    else:
        raise UsageError("this fake ovms does not imitate --add_to_config/--remove_from_config\n")
    rest_workers = args.get("rest_workers", CPU_COUNT)
    if rest_workers > 10000 or rest_workers < 2:
        raise UsageError("rest_workers count should be from 2 to 10000\n")
    if args.given("rest_workers") and args.get("rest_port") == 0:
        raise UsageError(
            "rest_workers is set but rest_port is not set. rest_port is required to start rest"
            " servers\n"
        )
    if args.get("port") > 65535:
        raise UsageError("port number out of range from 0 to 65535\n")
    if args.get("rest_port") > 65535:
        raise UsageError("rest_port number out of range from 0 to 65535\n")
    if not check_hostname_or_ip(args.get("rest_bind_address")):
        raise UsageError(
            "rest_bind_address has invalid format: proper hostname or IP address expected.\n"
        )
    if not check_hostname_or_ip(args.get("grpc_bind_address")):
        raise UsageError(
            "grpc_bind_address has invalid format: proper hostname or IP address expected.\n"
        )
    if args.get("port") == args.get("rest_port") and args.get("port") != 0:
        raise UsageError("port and rest_port cannot have the same values\n")
    ext = args.get("cpu_extension")
    if ext and not os.path.exists(ext):
        raise UsageError(
            "File path provided as an --cpu_extension parameter does not exist in the"
            f" filesystem: {ext}\n"
        )
    if args.get("log_level") not in ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR"):
        raise UsageError("log_level should be one of: TRACE, DEBUG, INFO, WARNING, ERROR\n")
    if (
        args.given("low_latency_transformation")
        or args.given("max_sequence_number")
        or args.given("idle_sequence_cleanup")
    ) and not args.get("stateful"):
        raise UsageError(
            "Setting low_latency_transformation, max_sequence_number and idle_sequence_cleanup"
            " require setting stateful flag for the model.\n"
        )
    return mode


_IPV4_RE = re.compile(
    r"((\d|[1-9]\d|1\d{2}|2[0-4]\d|25[0-5])\.){3}(\d|[1-9]\d|1\d{2}|2[0-4]\d|25[0-5])"
)
_HOST_RE = re.compile(
    r"(([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9])\.)*"
    r"([A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9\-]*[A-Za-z0-9])"
)


def check_hostname_or_ip(text):
    parts = text.split(",")
    if len(parts) > 1:
        return all(check_hostname_or_ip(p) for p in parts)
    if len(text) > 255:
        return False
    if all(c in ".:" or c in "0123456789abcdefABCDEF" for c in text):
        if _IPV4_RE.fullmatch(text):
            return True
        try:
            socket.inet_pton(socket.AF_INET6, text)
            return True
        except OSError:
            return False
    return bool(_HOST_RE.fullmatch(text))


# ---------------------------------------------------------------------------
# logging (spdlog pattern "[%Y-%m-%d %T.%e][%t][%n][%l][%s:%#] %v", to stdout)
# ---------------------------------------------------------------------------
LOG_LEVELS = {"TRACE": 0, "DEBUG": 1, "INFO": 2, "WARNING": 3, "ERROR": 4}
LOG_MIN = 2
LOG_FILE_FD = None


def log(logger, level, where, msg):
    lvl = {"trace": 0, "debug": 1, "info": 2, "warning": 3, "error": 4}[level]
    if lvl < LOG_MIN:
        return
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    line = (
        f"[{stamp}.{int(now * 1000) % 1000:03d}][{threading.get_native_id()}][{logger}]"
        f"[{level}][{where}] {msg}\n"
    ).encode("utf-8", "replace")
    with contextlib.suppress(OSError):
        os.write(1, line)
    if LOG_FILE_FD is not None:
        with contextlib.suppress(OSError):
            os.write(LOG_FILE_FD, line)


def say(text):
    """A plain std::cout line (not a log line)."""
    fake_common.write_line(1, text)


# ---------------------------------------------------------------------------
# knobs
# ---------------------------------------------------------------------------
DEFAULT_KNOBS = {"servable": "llm", **fake_common.BASE_KNOBS, "ovms_version": None}


def read_knobs(directory):
    knobs, data = fake_common.read_knob_file(os.path.join(directory, KNOBS_FILE), DEFAULT_KNOBS)
    if data.get("servable") in SERVABLES:
        knobs["servable"] = data["servable"]
    if isinstance(data.get("ovms_version"), str):
        knobs["ovms_version"] = data["ovms_version"]
    return knobs


def parse_version(text):
    nums = re.findall(r"\d+", text or "")
    if len(nums) >= 2:
        return (int(nums[0]), int(nums[1]))
    return (2025, 4)


# ---------------------------------------------------------------------------
# config file (src/schema.cpp MODELS_CONFIG_SCHEMA, strict)
# ---------------------------------------------------------------------------
TOP_KEYS = {
    "custom_loader_config_list",
    "model_config_list",
    "pipeline_config_list",
    "mediapipe_config_list",
    "custom_node_library_config_list",
    "monitoring",
}


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _shape_ok(v):
    return isinstance(v, str) or (
        isinstance(v, dict) and all(isinstance(x, str) for x in v.values())
    )


CONFIG_KEYS = {
    "name": lambda v: isinstance(v, str),
    "base_path": lambda v: isinstance(v, str),
    "batch_size": lambda v: isinstance(v, str) or (_is_int(v) and v >= 0),
    "graph_path": lambda v: isinstance(v, str),
    "subconfig": lambda v: isinstance(v, str),
    "model_version_policy": lambda v: isinstance(v, dict) and len(v) == 1,
    "shape": _shape_ok,
    "layout": _shape_ok,
    "nireq": lambda v: _is_int(v) and v >= 0,
    "target_device": lambda v: isinstance(v, str),
    "allow_cache": lambda v: isinstance(v, bool),
    "plugin_config": lambda v: (
        isinstance(v, dict) and all(isinstance(x, (str, bool)) or _is_num(x) for x in v.values())
    ),
    "stateful": lambda v: isinstance(v, bool),
    "idle_sequence_cleanup": lambda v: isinstance(v, bool),
    "low_latency_transformation": lambda v: isinstance(v, bool),
    "max_sequence_number": lambda v: _is_int(v) and v >= 0,
    "custom_loader_options": lambda v: isinstance(v, dict) and "loader_name" in v,
}


def schema_error(doc):
    """None if ``doc`` passes the real schema, else the real-looking error text."""

    def err(schema, keyword, key):
        return f"JSON schema parse error:{schema}. Keyword:{keyword} Key: {key}"

    if not isinstance(doc, dict):
        return err("#", "type", "#")
    for k in doc:
        if k not in TOP_KEYS:
            return err("#", "additionalProperties", "#")
    if "model_config_list" not in doc:
        return err("#", "required", "#")
    for k in TOP_KEYS - {"monitoring"}:
        if k in doc and not isinstance(doc[k], list):
            return err(f"#/properties/{k}", "type", f"#/{k}")
    if "monitoring" in doc and not isinstance(doc["monitoring"], dict):
        return err("#/properties/monitoring", "type", "#/monitoring")
    for i, item in enumerate(doc["model_config_list"]):
        where = f"#/model_config_list/{i}"
        if not isinstance(item, dict):
            return err("#/definitions/model_config", "type", where)
        if len(item) > 1:
            return err("#/definitions/model_config", "maxProperties", where)
        if "config" not in item:
            return err("#/definitions/model_config", "required", where)
        cfg = item["config"]
        schema = "#/definitions/model_config/properties/config"
        if not isinstance(cfg, dict):
            return err(schema, "type", where + "/config")
        if "name" not in cfg:
            return err(schema, "required", where + "/config")
        for k, v in cfg.items():
            check = CONFIG_KEYS.get(k)
            if check is None:
                return err(schema, "additionalProperties", where + "/config")
            if not check(v):
                return err(f"{schema}/properties/{k}", "type", f"{where}/config/{k}")
    return None


def is_path_escaped(path):
    lhs = path.find("../")
    rhs = path.find("/..")
    return (
        lhs == 0
        or (rhs != -1 and rhs == len(path) - 3)
        or "/../" in path
        or path.find("..\\") == 0
        or "\\..\\" in path
    )


def scan_argv(argv):
    """Last value of each string flag in argv, without validating anything."""
    found = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            if eq:
                found[name] = val
            elif FLAGS.get(name) not in (None, "bool") and i + 1 < len(argv):
                found[name] = argv[i + 1]
                i += 1
        i += 1
    return found


def read_config_quiet(path):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def config_dirs(config_path, doc):
    out = []
    if not isinstance(doc, dict) or not isinstance(doc.get("model_config_list"), list):
        return out
    root = os.path.dirname(os.path.abspath(config_path))
    for item in doc["model_config_list"]:
        cfg = item.get("config") if isinstance(item, dict) else None
        if not isinstance(cfg, dict) or not isinstance(cfg.get("name"), str):
            continue
        base = cfg.get("base_path")
        if not isinstance(base, str) or not base:
            base = cfg["name"]
        out.append(base if os.path.isabs(base) else os.path.join(root, base))
    return out


# ---------------------------------------------------------------------------
# servables
# ---------------------------------------------------------------------------
class Servable:
    def __init__(self, name, directory, kind, knobs, node=None):
        self.name = name
        self.dir = directory
        self.kind = kind
        self.knobs = knobs
        self.node = node or NODE_NAMES.get(kind, name)
        # pending -> loading -> available | failed ; missing = dir absent (config flow)
        self.state = "pending"
        self.events = fake_common.SideFile(os.path.join(directory, "fake_ovms.events"))
        self.record = bool(knobs["record_requests"]) and os.path.isdir(directory)

    @property
    def graph(self):
        return self.kind != "classic"


class App:
    def __init__(self, args, mode, version):
        self.args = args
        self.mode = mode
        self.version = version
        self.pid = os.getpid()
        self.pid_s = str(self.pid)
        self.servables = []  # in load order
        self.by_name = {}
        self.server_ready = False
        self.api_key = getattr(args, "api_key", "")
        self.metrics = bool(args.get("metrics_enable"))
        self.cors = [
            (b"Access-Control-Allow-Origin", args.get("allowed_origins")),
            (b"Access-Control-Allow-Methods", args.get("allowed_methods")),
            (b"Access-Control-Allow-Headers", args.get("allowed_headers")),
        ]
        if args.get("allow_credentials"):
            self.cors.insert(0, (b"Access-Control-Allow-Credentials", "true"))
        self.cors_bytes = b"".join(
            b"%s: %s\r\n" % (k, v.encode("latin-1", "replace")) for k, v in self.cors if v
        )
        self.requests_ok = 0

    def add(self, servable):
        if servable.name in self.by_name:
            log(
                "modelmanager",
                "warning",
                "modelmanager.cpp:903",
                f"Duplicated model names: {servable.name} defined in config file. Only first "
                "definition will be loaded.",
            )
            return
        self.servables.append(servable)
        self.by_name[servable.name] = servable

    def record_request(self, method, path):
        line = f"request {method} {path} {self.pid_s}"
        for s in self.servables:
            if s.record:
                s.events.write(line)

    def available(self):
        return [s for s in self.servables if s.state == "available"]


APP = None  # type: App
SHUTDOWN = threading.Event()
LOADING_DONE = threading.Event()


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------
JSON_CT = fake_common.JSON_CT
TEXT_CT = b"text/plain; charset=utf-8"
REASONS = {
    200: b"OK",
    201: b"Created",
    400: b"Bad Request",
    404: b"Not Found",
    406: b"Not Acceptable",
    412: b"Precondition Failed",
    413: b"Request Entity Too Large",
    500: b"Internal Server Error",
}


_dumps = fake_common.dumps


def err_body(text):
    return _dumps({"error": text})


E_NAME_MISSING = "Model with requested name is not found"
E_VERSION_MISSING = "Model with requested version is not found"
E_NOT_LOADED_YET = "Model with requested version is not loaded yet"
E_GRAPH_MISSING = "Mediapipe graph definition with requested name is not found"
E_GRAPH_NOT_LOADED = "Mediapipe is not loaded yet"
E_INVALID_URL = "Invalid request URL"
E_UNSUPPORTED_METHOD = "Unsupported method"
E_JSON = "The file is not valid json"


class ServableError(Exception):
    """A calculator's absl::InvalidArgumentError: 400 with the MediaPipe wrapper."""

    def __init__(self, node, message, code="INVALID_ARGUMENT"):
        super().__init__(message)
        self.text = (
            f"Mediapipe execution failed. MP status - {code}: CalculatorGraph::Run() failed: "
            f'\nCalculator::Process() for node "{node}" failed: {message}'
        )


class HttpError(Exception):
    def __init__(self, status, text):
        super().__init__(text)
        self.status = status
        self.text = text


class BadMultipart(Exception):
    pass


class BodyReader:
    """Lazy request body: Content-Length or chunked, read in bounded pieces."""

    def __init__(self, handler, headers):
        self.h = handler
        self.rfile = handler.rfile
        self.expect = fake_common.wants_continue(headers)
        self.started = False
        self.done = False
        self.chunked = fake_common.is_chunked(headers)
        self.remaining = 0
        self.chunk_left = 0
        if not self.chunked:
            cl = headers.get(b"content-length")
            try:
                self.remaining = int(cl) if cl is not None else 0
            except ValueError:
                self.remaining = 0
            if self.remaining <= 0:
                self.done = True
        self.length = None if self.chunked else self.remaining

    def _start(self):
        if not self.started:
            self.started = True
            if self.expect and not self.h.http10 and not self.done:
                self.h.wfile.write(fake_common.CONTINUE_100)

    def read(self, size=262144):
        if self.done:
            return b""
        self._start()
        if not self.chunked:
            data = self.rfile.read(min(size, self.remaining))
            if not data:
                raise ConnectionError("short body")
            self.remaining -= len(data)
            if self.remaining == 0:
                self.done = True
            return data
        if self.chunk_left == 0:
            line = self.rfile.readline(fake_common.LINE_LIMIT + 1)
            if not line:
                raise ConnectionError("eof in chunked body")
            try:
                self.chunk_left = fake_common.chunk_size(line)
            except ValueError:
                raise ConnectionError("bad chunk size") from None
            if self.chunk_left == 0:
                fake_common.skip_trailers(self.rfile)
                self.done = True
                return b""
        data = self.rfile.read(min(size, self.chunk_left))
        if not data:
            raise ConnectionError("short chunk")
        self.chunk_left -= len(data)
        if self.chunk_left == 0:
            self.rfile.readline(3)
        return data

    def read_all(self):
        parts = []
        while True:
            d = self.read()
            if not d:
                return b"".join(parts)
            parts.append(d)

    def drain(self):
        while not self.done:
            self.read(1 << 20)


RE_PREDICT = re.compile(
    r"(.?)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/(\w+)))?:(classify|regress|predict)"
)
RE_MODELSTATUS = re.compile(
    r"(.?)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/(\w+)))?(?:/(metadata))?"
)
RE_CONFIG_RELOAD = re.compile(r"(.?)/v1/config/reload")
RE_CONFIG_STATUS = re.compile(r"(.?)/v1/config")
RE_KFS_READY = re.compile(r"/v2/models/([^/]+)(?:/versions/([0-9]+))?(?:/(ready))")
RE_KFS_META = re.compile(r"/v2/models/([^/]+)(?:/versions/([0-9]+))?(?:/)?")
RE_KFS_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([0-9]+))?(?:/(infer))")
RE_V3 = re.compile(r"/v3/.*?(/|$)", re.S)
RE_V3_LIST = re.compile(r"/v3/(v1/)?models")
RE_V3_GET = re.compile(r"/v3/(v1/)?models/(.+)", re.S)
RE_METRICS = re.compile(r"(.?)/metrics(\?(.*))?")
GET_ONLY = (
    RE_MODELSTATUS,
    RE_CONFIG_STATUS,
    re.compile("/v2/health/live"),
    re.compile("/v2/health/ready"),
    re.compile("/v2"),
    RE_KFS_META,
    RE_KFS_READY,
    RE_V3_LIST,
    RE_V3_GET,
    RE_METRICS,
)


def url_decode(text):
    return unquote(text, errors="surrogateescape")


class Handler(fake_common.FakeRequestHandler):
    rbufsize = 262144

    def handle_one_request(self):
        line = self.read_request_line()
        if line is None:
            return
        parts = line.split()
        if (
            len(parts) != 3
            or not parts[2].startswith(b"HTTP/")
            or len(line) > fake_common.LINE_LIMIT
        ):
            self.close_connection = True
            self.http10 = False
            self._reply(400, b"", close=True)
            return
        method, target, version = parts
        try:
            # every malformed head (too many lines included) is a 400 with no body here
            headers = self.read_headers(check_length=False)
        except fake_common.HeadError:
            self.http10 = False
            self._reply(400, b"", close=True)
            return
        if headers is None:
            return
        self.accept_request(line, method, target, version, headers)
        self.body = BodyReader(self, headers)
        if self.body.length is not None and self.body.length > MAX_BODY:
            self._reply(413, b"", close=True)
            return
        try:
            self._dispatch()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, ConnectionError):
            self.close_connection = True
            return
        except OSError:
            self.close_connection = True
            return
        if not self.close_connection and not self.body.done:
            if self.body.expect and not self.body.started:
                self.close_connection = True
            else:
                try:
                    self.body.drain()
                except (OSError, ConnectionError):
                    self.close_connection = True

    # -- responses --
    def _reply(self, status, body, ctype=JSON_CT, close=False, extra=b""):
        if close:
            self.close_connection = True
        cors = APP.cors_bytes if APP is not None else b""
        head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s%s%s\r\n" % (
            status,
            REASONS.get(status, b"Unknown"),
            ctype,
            len(body),
            cors,
            extra,
            b"connection: close\r\n" if self.close_connection else b"",
        )
        self.wfile.write(head + body)

    def _error(self, status, text, ctype=JSON_CT):
        self._reply(status, err_body(text), ctype=ctype)

    def log_message(self, format, *args):
        pass

    # -- routing (HttpRestApiHandler::parseRequestComponents) --
    def _dispatch(self):
        app = APP
        raw_path = self.path.split("?", 1)[0]
        app.record_request(self.command, raw_path)
        path = raw_path
        if is_path_escaped(path):
            self._error(400, "The provided base path is invalid or doesn't exists")
            return
        method = self.command
        if method == "OPTIONS":
            self._reply(200, b"")
            return
        if method == "POST":
            m = RE_PREDICT.fullmatch(path)
            if m:
                self.r_tfs_predict(url_decode(m.group(2)), m.group(3))
                return
            m = RE_KFS_INFER.fullmatch(path)
            if m:
                self.r_kfs_infer(url_decode(m.group(1)), m.group(2))
                return
            if RE_V3.fullmatch(path):
                self.r_v3(path)
                return
            if RE_CONFIG_RELOAD.fullmatch(path):
                self.r_config_status()
                return
            if any(r.fullmatch(path) for r in GET_ONLY):
                self._error(406, E_UNSUPPORTED_METHOD)
            else:
                self._error(400, E_INVALID_URL)
            return
        if method != "GET":
            self._error(406, E_UNSUPPORTED_METHOD)
            return
        m = RE_MODELSTATUS.fullmatch(path)
        if m:
            self.r_tfs_status(url_decode(m.group(2) or ""), m.group(3), m.group(5))
            return
        if RE_CONFIG_STATUS.fullmatch(path):
            self.r_config_status()
            return
        if path == "/v2/health/live":
            self._reply(200, b"")
            return
        if path == "/v2/health/ready":
            if app.server_ready:
                self._reply(200, b"")
            else:
                self._error(500, "Error while loading a model")
            return
        if path == "/v2":
            self._reply(200, _dumps({"name": PROJECT_NAME, "version": f"{DEFAULT_VERSION}.0.fake"}))
            return
        m = RE_KFS_META.fullmatch(path)
        if m:
            self.r_kfs_metadata(url_decode(m.group(1)), m.group(2))
            return
        m = RE_KFS_READY.fullmatch(path)
        if m:
            self.r_kfs_ready(url_decode(m.group(1)), m.group(2))
            return
        if RE_PREDICT.fullmatch(path):
            self._error(406, E_UNSUPPORTED_METHOD)
            return
        if RE_METRICS.fullmatch(path):
            self.r_metrics()
            return
        if RE_V3_LIST.fullmatch(path):
            self.r_v3_models()
            return
        m = RE_V3_GET.fullmatch(path)
        if m:
            self.r_v3_model(url_decode(m.group(2)))
            return
        if (
            RE_KFS_INFER.fullmatch(path)
            or RE_CONFIG_RELOAD.fullmatch(path)
            or RE_PREDICT.fullmatch(path)
        ):
            self._error(406, E_UNSUPPORTED_METHOD)
            return
        self._error(400, E_INVALID_URL)

    # -- KServe --
    def _find_kfs(self, name, version):
        """(servable, error) for the KServe routes, by the real lookup order."""
        s = APP.by_name.get(name)
        if s is None or s.state == "pending" or (s.graph and s.state == "loading"):
            return None, (404, E_NAME_MISSING)
        if not s.graph and s.state == "missing":
            return None, (404, E_VERSION_MISSING)
        if version is not None and version != "1" and not s.graph:
            return None, (404, E_VERSION_MISSING)
        return s, None

    def r_kfs_ready(self, name, version):
        s, e = self._find_kfs(name, version)
        if e:
            self._error(*e)
            return
        if s.state == "available":
            self._reply(200, b"")
        elif s.graph and s.state == "missing":
            self._error(404, E_VERSION_MISSING)
        else:
            self._error(404, E_NOT_LOADED_YET)

    def r_kfs_metadata(self, name, version):
        s, e = self._find_kfs(name, version)
        if e:
            self._error(*e)
            return
        if s.state != "available":
            if s.graph:
                self._error(500, E_GRAPH_NOT_LOADED)
            else:
                self._error(404, E_NOT_LOADED_YET)
            return
        if s.graph:
            tensor = {"datatype": "INVALID", "shape": []}
            meta = {
                "name": s.name,
                "versions": ["1"],
                "platform": "OpenVINO",
                "inputs": [{"name": "input", **tensor}],
                "outputs": [{"name": "output", **tensor}],
            }
        else:
            meta = {
                "name": s.name,
                "versions": ["1"],
                "platform": "OpenVINO",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, -1]}],
                "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, -1]}],
            }
        self._reply(200, _dumps(meta))

    def r_kfs_infer(self, name, version):
        raw = self.body.read_all()
        try:
            text = raw.decode("utf-8")
            data = json.loads(text)
        except (UnicodeDecodeError, ValueError) as exc:
            pos = getattr(exc, "pos", 0) or 0
            detail = "The document is empty." if not raw.strip() else "Invalid value."
            self._error(412, f"{E_JSON} - Error: {detail} Offset: {pos}")
            return
        if not isinstance(data, dict):
            self._error(400, "Request body should be JSON object")
            return
        if "inputs" not in data:
            self._error(400, "Invalid JSON structure, missing inputs")
            return
        inputs = data["inputs"]
        if not isinstance(inputs, list) or not all(isinstance(x, dict) for x in inputs):
            self._error(400, "Invalid JSON structure. One of inputs is not a JSON object.")
            return
        s = APP.by_name.get(name)
        if s is None or s.state in ("pending", "missing") or (s.graph and s.state == "loading"):
            self._error(404, E_NAME_MISSING if s is None or s.graph else E_VERSION_MISSING)
            return
        if s.graph:
            if s.state != "available":
                self._error(500, E_GRAPH_NOT_LOADED)
                return
            self._error(
                400,
                ServableError(
                    s.node, "KServe inference requests are not supported by this graph"
                ).text,
            )
            return
        if version is not None and version != "1":
            self._error(404, E_VERSION_MISSING)
            return
        if s.state != "available":
            self._error(404, E_NOT_LOADED_YET)
            return
        if not inputs:
            self._error(400, "Invalid number of inputs - Expected: 1; Actual: 0")
            return
        first = inputs[0]
        values = first.get("data")
        shape = first.get("shape")
        dtype = first.get("datatype")
        if (
            not isinstance(values, list)
            or not isinstance(shape, list)
            or not all(_is_int(d) for d in shape)
            or not isinstance(dtype, str)
        ):
            self._error(400, "Could not parse input content. Not valid ndarray detected")
            return
        flat = _flatten(values)
        if flat is None:
            self._error(400, "Could not parse input content. Not valid ndarray detected")
            return
        expected = math.prod(shape) if shape else 1
        if expected != len(flat):
            self._error(
                400,
                "Invalid number of values in tensor proto container - Expected: "
                f"{expected}; Actual: {len(flat)}",
            )
            return
        cast = float if dtype.startswith("FP") else int
        out = [cast(v) * 2 for v in flat]
        resp = {"model_name": s.name}
        rid = data.get("id")
        if isinstance(rid, str) and rid:
            resp["id"] = rid
        resp["model_version"] = "1"
        resp["outputs"] = [{"name": "output", "shape": shape, "datatype": dtype, "data": out}]
        APP.requests_ok += 1
        self._reply(200, pretty_single_line_arrays(resp).encode())

    def r_tfs_predict(self, name, version):
        self.body.read_all()
        s = APP.by_name.get(name)
        if s is None or s.graph or s.state in ("pending", "missing"):
            self._error(404, E_NAME_MISSING)
            return
        self._error(400, "Could not parse instance content. Not valid ndarray detected")

    def _status_obj(self, s):
        if s.state == "available":
            state, code = "AVAILABLE", "OK"
        elif s.state == "failed":
            state, code = "LOADING", "FAILED_PRECONDITION"
        else:
            state, code = "LOADING", "OK"
        return {
            "model_version_status": [
                {
                    "version": "1",
                    "state": state,
                    "status": {"error_code": code, "error_message": code},
                }
            ]
        }

    def _listed(self):
        return [
            s
            for s in APP.servables
            if s.state not in ("pending", "missing") and not (s.graph and s.state == "loading")
        ]

    def r_tfs_status(self, name, version, sub):
        if not name:
            self._error(404, E_NAME_MISSING)
            return
        s = next((x for x in self._listed() if x.name == name), None)
        if s is None:
            self._error(404, E_NAME_MISSING)
            return
        if sub == "metadata":
            self._error(404, E_NAME_MISSING if s.graph else E_VERSION_MISSING)
            return
        self._reply(200, json.dumps(self._status_obj(s), indent=1).encode() + b"\n")

    def r_config_status(self):
        self.body.read_all()
        listed = sorted(self._listed(), key=lambda s: s.name)
        if not listed:
            self._reply(200, b"{}")
            return
        parts = [f'"{s.name}" : \n' + json.dumps(self._status_obj(s), indent=1) for s in listed]
        self._reply(200, ("{\n" + ",\n".join(parts) + "\n}").encode())

    def r_metrics(self):
        if not APP.metrics:
            self._error(400, E_INVALID_URL, ctype=TEXT_CT)
            return
        lines = [
            "# HELP ovms_requests_success Number of successful requests to a model or a DAG.",
            "# TYPE ovms_requests_success counter",
        ]
        for s in APP.servables:
            lines.append(
                f'ovms_requests_success{{api="KServe",interface="REST",method="ModelInfer",'
                f'name="{s.name}"}} {APP.requests_ok}'
            )
        self._reply(200, ("\n".join(lines) + "\n").encode(), ctype=TEXT_CT)

    # -- /v3/models --
    def r_v3_models(self):
        now = int(time.time())
        items = b",".join(
            _dumps({"id": s.name, "object": "model", "created": now, "owned_by": "OVMS"})
            for s in APP.available()
        )
        self._reply(200, b'{"object":"list","data":[' + items + b'],"object":"list"}')

    def r_v3_model(self, name):
        s = APP.by_name.get(name)
        if s is None or s.state != "available":
            self._reply(500, _dumps({"error": "Model not found"}))
            return
        obj = {"id": s.name, "object": "model", "created": int(time.time()), "owned_by": "OVMS"}
        self._reply(200, _dumps(obj))

    # -- /v3 (HttpRestApiHandler::processV3) --
    def r_v3(self, path):
        app = APP
        if app.api_key:
            auth = self.hdrs.get(b"authorization", b"").decode("latin-1")
            if auth != "Bearer " + app.api_key:
                self._error(500, "Unauthorized request due to invalid or missing api-key")
                return
        ctype = self.hdrs.get(b"content-type", b"").decode("latin-1")
        is_json = "application/json" in ctype
        is_multipart = "multipart/form-data" in ctype
        payload = None
        multipart = None
        model = ""
        stream = False
        if is_multipart:
            try:
                multipart = parse_multipart(self.body, ctype)
            except BadMultipart:
                self.close_connection = True
                self._error(500, "Request of multipart type but failed to parse")
                return
            model = multipart.fields.get("model", "")
        elif is_json:
            raw = self.body.read_all()
            try:
                payload = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                self._error(412, f"{E_JSON} - Cannot parse JSON body")
                return
            if not isinstance(payload, dict):
                self._error(412, f"{E_JSON} - JSON body must be an object")
                return
            if "model" not in payload:
                self._error(412, f"{E_JSON} - model field is missing in JSON body")
                return
            if not isinstance(payload["model"], str):
                self._error(412, f"{E_JSON} - model field is not a string")
                return
            if "completions" in path and "stream" in payload:
                if not isinstance(payload["stream"], bool):
                    self._error(412, f"{E_JSON} - stream field is not a boolean")
                    return
                stream = payload["stream"]
            model = payload["model"]
        if not model:
            if len(path) <= 4:
                self._error(500, "Failed to deduce model name from all possible ways")
                return
            model = path[4:]
        s = app.by_name.get(model)
        if s is None or not s.graph or s.state in ("pending", "missing", "loading"):
            self._error(404, E_GRAPH_MISSING)
            return
        if s.state != "available":
            self._error(500, E_GRAPH_NOT_LOADED)
            return
        try:
            if s.kind == "llm":
                self.v3_llm(s, path, payload, stream)
            elif s.kind == "embeddings":
                self.v3_embeddings(s, payload)
            elif s.kind == "rerank":
                self.v3_rerank(s, payload)
            elif s.kind == "speech2text":
                self.v3_speech2text(s, path, multipart)
            elif s.kind == "text2speech":
                self.v3_text2speech(s, path, payload)
            else:
                self.v3_images(s, path, payload, multipart)
        except ServableError as e:
            self._error(400, e.text)

    # -- LLM --
    def v3_llm(self, s, path, data, stream):
        if data is None:
            raise ServableError(s.node, "Non-json request received in text generation calculator")
        if path in ("/v3/chat/completions", "/v3/v1/chat/completions"):
            chat = True
        elif path in ("/v3/completions", "/v3/v1/completions"):
            chat = False
        else:
            raise ServableError(
                s.node, "Wrong endpoint. Allowed endpoints: /v3/chat/completions, /v3/completions"
            )
        so = data.get("stream_options")
        include_usage = False
        if so is not None:
            if not stream:
                raise ServableError(s.node, "stream_options provided, but stream not set to true")
            if not isinstance(so, dict):
                raise ServableError(s.node, "stream_options is not an object")
            if "include_usage" in so:
                if not isinstance(so["include_usage"], bool):
                    raise ServableError(s.node, "stream_options.include_usage is not a boolean")
                include_usage = so["include_usage"]
            if set(so) - {"include_usage"}:
                raise ServableError(
                    s.node,
                    "Found unexpected stream options. Properties accepted in stream_options: "
                    "include_usage",
                )
        max_tokens = None
        if "max_tokens" in data:
            v = data["max_tokens"]
            if not _is_int(v) or v < 0:
                raise ServableError(s.node, "max_tokens is not an unsigned integer")
            max_tokens = v
        if chat:
            msgs = data.get("messages")
            if msgs is None:
                raise ServableError(s.node, "Messages missing in request")
            if not isinstance(msgs, list):
                raise ServableError(s.node, "Messages are not an array")
            if not msgs:
                raise ServableError(s.node, "Messages array cannot be empty")
            if not all(isinstance(m, dict) for m in msgs):
                raise ServableError(s.node, "Message is not a JSON object")
            v = data.get("max_completion_tokens")
            if v is not None:
                if not _is_int(v) or v < 0:
                    raise ServableError(s.node, "max_completion_tokens is not an unsigned integer")
                max_tokens = v
            prompt_tokens = fake_common.count_words(msgs)
        else:
            prompt = data.get("prompt")
            if prompt is not None and not isinstance(prompt, str):
                raise ServableError(s.node, "prompt is not a string")
            if not prompt:
                raise ServableError(s.node, "prompt is missing")
            prompt_tokens = max(1, len(prompt.split()))
        if max_tokens == 0:
            raise ServableError(s.node, "max_tokens value should be greater than 0")
        knob = s.knobs["tokens"]
        if max_tokens is not None and max_tokens <= knob:
            n, finish = max_tokens, "length"
        else:
            n, finish = knob, "stop"
        created = int(time.time())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": n}
        usage["total_tokens"] = prompt_tokens + n
        delay = s.knobs["token_delay"]
        if stream:
            self._stream(s, chat, data["model"], created, n, finish, usage, include_usage, delay)
            return
        if delay and n:
            time.sleep(delay * n)
        text = "".join(fake_common.tok_text(i) for i in range(n))
        choice = {"finish_reason": finish, "index": 0, "logprobs": None}
        if chat:
            choice["message"] = {"content": text, "role": "assistant", "tool_calls": []}
        else:
            choice["text"] = text
        obj = {
            "choices": [choice],
            "created": created,
            "model": data["model"],
            "object": "chat.completion" if chat else "text_completion",
            "usage": usage,
        }
        self._reply(200, _dumps(obj))

    def _stream(self, s, chat, model, created, n, finish, usage, include_usage, delay):
        http10 = self.http10
        if http10:
            self.close_connection = True
        obj_name = "chat.completion.chunk" if chat else "text_completion.chunk"
        tail = b',"created":%d,"model":%s,"object":"%s"%s}' % (
            created,
            _dumps(model),
            obj_name.encode(),
            b',"usage":null' if include_usage else b"",
        )

        def chunk(text, fin):
            fin_b = b"null" if fin is None else b'"%s"' % fin.encode()
            body = _dumps(text)
            if chat:
                c = b'{"finish_reason":%s,"index":0,"logprobs":null,"delta":{"content":%s}}' % (
                    fin_b,
                    body,
                )
            else:
                c = b'{"finish_reason":%s,"index":0,"logprobs":null,"text":%s}' % (fin_b, body)
            return b'data: {"choices":[' + c + b"]" + tail + b"\n\n"

        write = self.wfile.write
        try:
            write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"cache-control: no-cache\r\n"
                + APP.cors_bytes
                + (
                    b"connection: close\r\n\r\n"
                    if http10
                    else b"connection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n"
                )
            )

            def send(ev):
                write(ev if http10 else fake_common.frame_chunk(ev))

            if n == 0:
                send(chunk("", finish))
            for i in range(n):
                if delay:
                    time.sleep(delay)
                send(chunk(fake_common.tok_text(i), finish if i == n - 1 else None))
            final = b""
            if include_usage:
                final += (
                    b'data: {"choices":[],"created":%d,"model":%s,"object":"%s","usage":%s}\n\n'
                    % (created, _dumps(model), obj_name.encode(), _dumps(usage))
                )
            final += b"data: [DONE]\n\n"
            send(final)
            if not http10:
                write(fake_common.LAST_CHUNK)
        except OSError:
            self.close_connection = True
            s.events.write(f"stream_aborted {APP.pid_s}")
            return
        s.events.write(f"stream_done {APP.pid_s}")

    # -- embeddings --
    def v3_embeddings(self, s, data):
        if data is None:
            raise ServableError(s.node, "Non-json request received in embeddings calculator")
        inputs = _tokenize_input(s.node, data, "input")
        fmt = data.get("encoding_format", "float")
        if not isinstance(fmt, str):
            raise ServableError(s.node, "encoding_format should be string")
        if fmt not in ("float", "base64"):
            raise ServableError(s.node, "encoding_format should either base64 or float")
        dim = s.knobs["embedding_dim"]
        out = []
        total = 0
        for i, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            total += len(text.split()) if isinstance(item, str) else len(item)
            vec = fake_common.embed(text, dim)
            emb = fake_common.embedding_b64(vec) if fmt == "base64" else vec
            out.append({"object": "embedding", "embedding": emb, "index": i})
        body = {
            "object": "list",
            "data": out,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }
        self._reply(200, _dumps(body))

    # -- rerank --
    def v3_rerank(self, s, data):
        if data is None:
            raise ServableError(s.node, "Non-json request received in rerank calculator")
        if "model" in data and not isinstance(data["model"], str):
            raise ServableError(s.node, "model accepts string values")
        if "query" not in data:
            raise ServableError(s.node, "query field is missing in request")
        query = data["query"]
        if not isinstance(query, str):
            raise ServableError(s.node, "query is not a string")
        if "documents" not in data:
            raise ServableError(s.node, "documents field is missing in request")
        docs = data["documents"]
        if not isinstance(docs, list):
            raise ServableError(s.node, "documents is not an array")
        texts, as_map = [], False
        for d in docs:
            if isinstance(d, str):
                if as_map:
                    raise ServableError(
                        s.node, "all documents have to be the same type (string or objects)"
                    )
                texts.append(d)
            elif isinstance(d, dict):
                if texts and not as_map:
                    raise ServableError(
                        s.node, "all documents have to be the same type (string or objects)"
                    )
                as_map = True
                if "title" not in d:
                    raise ServableError(s.node, "document title field is missing")
                if not isinstance(d["title"], str):
                    raise ServableError(s.node, "document title field have to be string")
                if "text" not in d:
                    raise ServableError(s.node, "document text field is missing")
                if not isinstance(d["text"], str):
                    raise ServableError(s.node, "document text field have to be string")
                texts.append(d["text"])
            else:
                raise ServableError(s.node, "documents array element is neither string nor object")
        top_n = data.get("top_n")
        if top_n is not None and not _is_int(top_n):
            raise ServableError(s.node, "top_n accepts integer values")
        if top_n is None:
            top_n = len(texts)
        ret = data.get("return_documents")
        if ret is not None and not isinstance(ret, bool):
            raise ServableError(s.node, "return_documents accepts boolean values")
        qwords = set(query.lower().split())
        scores = [fake_common.rerank_score(qwords, set(t.lower().split()), t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -scores[i])
        results = []
        for rank, i in enumerate(order):
            if rank >= top_n:
                break
            r = {"index": i, "relevance_score": scores[i]}
            if ret:
                if as_map:
                    raise ServableError(s.node, "document map not supported")
                r["document"] = {"text": texts[i]}
            results.append(r)
        self._reply(200, _dumps({"results": results}))

    # -- speech2text --
    def v3_speech2text(self, s, path, mp):
        if path.startswith("/v3/audio/transcriptions"):
            task = "transcribe"
        elif path.startswith("/v3/audio/translations"):
            task = "translate"
        else:
            raise ServableError(s.node, f"Unsupported URI: {path}")
        if mp is None:
            raise ServableError(s.node, "Failed to parse multipart data")
        if mp.file_field("stream"):
            raise ServableError(s.node, "streaming is not supported")
        f = mp.files.get("file")
        if f is None or f.size == 0:
            raise ServableError(s.node, "File parsing fails")
        text = f"bytes={f.size} sha256={f.sha256} model={s.name} task={task}"
        if task == "transcribe":
            lang = mp.file_field("language")
            if lang:
                if len(lang) > 3:
                    raise ServableError(s.node, "Invalid language code.")
                text += f" language={lang}"
        self._reply(200, _dumps({"text": text}))

    # -- text2speech --
    def v3_text2speech(self, s, path, data):
        if not path.startswith("/v3/audio/speech"):
            raise ServableError(s.node, f"Unsupported URI: {path}")
        if data is None:
            raise ServableError(s.node, "Failed to parse JSON")
        if "input" not in data:
            raise ServableError(s.node, "input field is missing in JSON body")
        if not isinstance(data["input"], str):
            raise ServableError(s.node, "input field is not a string")
        if "stream_format" in data:
            raise ServableError(s.node, "streaming is not supported")
        # real ovms sends the WAV bytes with Content-Type application/json
        self._reply(200, make_wav(data["input"]))

    # -- image generation --
    def v3_images(self, s, path, data, mp):
        if path.startswith("/v3/images/generations"):
            if data is None:
                raise ServableError(s.node, "Failed to parse JSON")
            prompt_key = "prompt field is missing in JSON body"
            fields = data
            accepted = {
                "prompt",
                "prompt_2",
                "prompt_3",
                "image",
                "negative_prompt",
                "negative_prompt_2",
                "negative_prompt_3",
                "size",
                "height",
                "width",
                "n",
                "num_images_per_prompt",
                "response_format",
                "num_inference_steps",
                "rng_seed",
                "strength",
                "guidance_scale",
                "max_sequence_length",
                "model",
            }
            if "prompt" not in data:
                raise ServableError(s.node, prompt_key)
            if not isinstance(data["prompt"], str):
                raise ServableError(s.node, "prompt field is not a string")
            for k in data:
                if k not in accepted:
                    raise ServableError(s.node, f"Unhandled parameter: {k}")
        elif path.startswith("/v3/images/edits"):
            if mp is None:
                raise ServableError(s.node, "Failed to parse multipart data")
            fields = dict(mp.fields)
            if not fields.get("prompt"):
                raise ServableError(s.node, "prompt field is missing in multipart body")
        else:
            raise ServableError(s.node, f"Unsupported URI: {path}")
        fmt = fields.get("response_format")
        if fmt is not None and fmt != "b64_json":
            raise ServableError(
                s.node, f"Unsupported response_format: {fmt}. Only b64_json is supported."
            )
        count = fields.get("n", fields.get("num_images_per_prompt", 1))
        try:
            count = int(count)
        except (TypeError, ValueError):
            count = 1
        if count <= 0:
            raise ServableError(s.node, "num_images_per_prompt/n must be higher than 0")
        width = height = 8
        size = fields.get("size")
        if isinstance(size, str) and re.fullmatch(r"\d+x\d+", size):
            width, height = (min(64, max(1, int(v))) for v in size.split("x"))
        prompt = str(fields.get("prompt"))
        images = [
            base64.b64encode(make_png(width, height, f"{prompt}#{i}")).decode("ascii")
            for i in range(min(count, 8))
        ]
        body = '{"data":[' + ",\n".join(f'{{"b64_json":"{b}"}}' for b in images) + "]}\n"
        self._reply(200, body.encode())


def pretty_single_line_arrays(obj, level=0):
    """rapidjson PrettyWriter with kFormatSingleLineArray (4-space indent)."""
    pad = "    " * (level + 1)
    if isinstance(obj, dict):
        items = [
            f"{pad}{json.dumps(k)}: {pretty_single_line_arrays(v, level + 1)}"
            for k, v in obj.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + "    " * level + "}"
    if isinstance(obj, list):
        return "[" + ", ".join(pretty_single_line_arrays(v, level + 1) for v in obj) + "]"
    return json.dumps(obj)


def _flatten(values):
    out = []
    stack = [values]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(reversed(v))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(v)
        elif isinstance(v, bool):
            out.append(int(v))
        else:
            return None
    return out


def _tokenize_input(node, data, field):
    """TokenizeParser::parseInput (src/tokenize/tokenize_parser.cpp)."""
    if field not in data:
        raise ServableError(node, f"{field} field is required")
    v = data[field]
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list):
        raise ServableError(
            node, f"{field} should be string, array of strings or array of integers"
        )
    if not v:
        raise ServableError(node, f"{field} array should not be empty")
    kinds = set()
    for item in v:
        if isinstance(item, str):
            kinds.add("str")
        elif _is_int(item):
            kinds.add("int")
        elif isinstance(item, list) and item and all(_is_int(x) for x in item):
            kinds.add("ints")
        elif isinstance(item, list) and item and all(isinstance(x, str) for x in item):
            kinds.add("strs")
        else:
            raise ServableError(
                node, f"every element in {field} array should be either string or int"
            )
    if len(kinds) > 1:
        raise ServableError(node, f"{field} must be homogeneous")
    kind = kinds.pop()
    if kind == "str":
        return v
    if kind == "int":
        return [v]
    if kind == "ints":
        return v
    raise ServableError(node, "input must be either array of strings or array of array of integers")


def make_wav(text):
    """16 kHz mono 16-bit PCM, deterministic from ``text``."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    rate = 16000
    n = int(rate * min(2.0, 0.05 + 0.005 * len(text)))
    freq = 200 + digest[0] * 4
    step = 2 * math.pi * freq / rate
    pcm = struct.pack(f"<{n}h", *(int(8000 * math.sin(step * i)) for i in range(n)))
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(pcm))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", len(pcm))
        + pcm
    )


def make_png(width, height, seed):
    color = hashlib.sha256(seed.encode("utf-8")).digest()[:3]
    raw = b"".join(b"\x00" + color * width for _ in range(height))

    def chunk(tag, data):
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------
# multipart/form-data, streamed: file parts are hashed, never kept in memory
# ---------------------------------------------------------------------------
FIELD_LIMIT = 1 << 20


class FilePart:
    def __init__(self, filename):
        self.filename = filename
        self.size = 0
        self._h = hashlib.sha256()
        self.head = bytearray()  # first bytes, for small file fields like "language"

    def update(self, data):
        self.size += len(data)
        self._h.update(data)
        if len(self.head) < 64:
            self.head += data[: 64 - len(self.head)]

    @property
    def sha256(self):
        return self._h.hexdigest()


class Multipart:
    def __init__(self):
        self.fields = {}  # name -> str (parts without filename)
        self.files = {}  # name -> FilePart (parts with filename)

    def file_field(self, name):
        """getFileContentByFieldName: only parts sent as files count (real drogon parser)."""
        f = self.files.get(name)
        if f is None:
            return ""
        return bytes(f.head).decode("utf-8", "replace")


def _boundary(ctype):
    m = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', ctype, re.I)
    if not m:
        return None
    return (m.group(1) or m.group(2)).encode("latin-1", "replace")


def parse_multipart(reader, ctype):
    boundary = _boundary(ctype)
    if not boundary:
        reader.drain()
        raise BadMultipart()
    delim = b"--" + boundary
    sep = b"\r\n" + delim
    keep = len(sep) - 1
    buf = bytearray()
    out = Multipart()

    def fill():
        data = reader.read()
        if not data:
            return False
        buf.extend(data)
        return True

    # preamble, up to the first delimiter
    while True:
        idx = buf.find(delim)
        if idx >= 0:
            del buf[: idx + len(delim)]
            break
        if len(buf) > keep:
            del buf[: len(buf) - keep]
        if not fill():
            raise BadMultipart()
    while True:
        while len(buf) < 2:
            if not fill():
                raise BadMultipart()
        if buf[:2] == b"--":
            reader.drain()
            return out
        if buf[:2] != b"\r\n":
            reader.drain()
            raise BadMultipart()
        del buf[:2]
        while True:
            idx = buf.find(b"\r\n\r\n")
            if idx >= 0:
                break
            if len(buf) > 65536 or not fill():
                reader.drain()
                raise BadMultipart()
        head = bytes(buf[:idx]).decode("utf-8", "replace")
        del buf[: idx + 4]
        name = filename = None
        for line in head.split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-disposition":
                nm = re.search(r'(?:^|;)\s*name="([^"]*)"', value) or re.search(
                    r"(?:^|;)\s*name=([^;\s]+)", value
                )
                fm = re.search(r'(?:^|;)\s*filename="([^"]*)"', value) or re.search(
                    r"(?:^|;)\s*filename=([^;\s]+)", value
                )
                name = nm.group(1) if nm else None
                filename = fm.group(1) if fm else None
        if name is None:
            reader.drain()
            raise BadMultipart()
        if filename is not None:
            part = FilePart(filename)
            sink = part.update
        else:
            acc = bytearray()

            def sink(data, acc=acc):
                if len(acc) < FIELD_LIMIT:
                    acc.extend(data[: FIELD_LIMIT - len(acc)])

        while True:
            idx = buf.find(sep)
            if idx >= 0:
                if idx:
                    sink(bytes(buf[:idx]))
                del buf[: idx + len(sep)]
                break
            if len(buf) > keep:
                cut = len(buf) - keep
                sink(bytes(buf[:cut]))
                del buf[:cut]
            if not fill():
                raise BadMultipart()
        if filename is not None:
            out.files.setdefault(name, part)
        else:
            out.fields.setdefault(name, bytes(acc).decode("utf-8", "replace"))


# ---------------------------------------------------------------------------
# start-up
# ---------------------------------------------------------------------------
def _on_signal(signum, frame):
    SHUTDOWN.set()


def _usage_exit(msg):
    with contextlib.suppress(OSError):
        os.write(2, msg.encode("utf-8", "replace"))
    os._exit(EX_USAGE)


def _fail_exit(messages, code=1):
    for logger, where, msg in messages:
        log(logger, "error", where, msg)
    os._exit(code)


def record_start(argv):
    """``<pid> {"argv", "config"}`` into every existing directory the argv names."""
    found = scan_argv(argv)
    dirs = []
    config = None
    if "config_path" in found:
        config = read_config_quiet(found["config_path"])
        dirs.extend(config_dirs(found["config_path"], config))
    if "model_path" in found:
        dirs.append(found["model_path"])
    repo = found.get("model_repository_path") or os.environ.get("OVMS_MODEL_REPOSITORY_PATH", "")
    source = found.get("source_model") or found.get("model_name")
    if repo and source:
        dirs.append(os.path.join(repo, source))
    line = f"{os.getpid()} {json.dumps({'argv': sys.argv, 'config': config})}"
    seen = set()
    for d in dirs:
        key = os.path.realpath(d)
        if key in seen or not os.path.isdir(d):
            continue
        seen.add(key)
        fake_common.SideFile(os.path.join(d, "fake_ovms.starts")).write(line)
    return found


def help_text():
    return (
        "OpenVINO Model Server\n"
        "Usage:\n  ovms [OPTION...]\n\n"
        "  -h, --help     Show this help message and exit\n"
        "      --version  Show binary version\n"
        "  (fake ovms: accepts the flags of OpenVINO Model Server 2025.4)\n"
    )


def build_servables(app, args, mode):
    """Servables for single-model / task modes (config flow is read after binding)."""
    if mode in ("pull_and_start", "in_memory"):
        kind = TASK_TO_SERVABLE[args.get("task")]
        knobs = read_knobs(args.model_path)
        node = NODE_NAMES[kind] if kind in ("llm", "image_generation") else args.model_name
        app.add(Servable(args.model_name, args.model_path, kind, knobs, node))
    elif mode == "serve" and not args.get("config_path"):
        knobs = read_knobs(args.model_path)
        app.add(Servable(args.model_name, args.model_path, knobs["servable"], knobs))


def load_config_file(app, path):
    """ModelManager::startFromFile: a bad file ends the process (exit 1)."""
    doc = None
    for _ in range(3):
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            log("modelmanager", "error", "schema.cpp:568", f"Configuration file is invalid {path}")
            time.sleep(0.01)
            continue
        try:
            doc = json.loads(text)
            break
        except ValueError:
            log(
                "serving",
                "error",
                "schema.cpp:579",
                "Configuration file is not a valid JSON file. Error: Invalid value.",
            )
            time.sleep(0.01)
            doc = ValueError
            continue
    if doc is None or doc is ValueError:
        reason = "Configuration file not found or cannot open" if doc is None else E_JSON
        _fail_exit(
            [
                ("modelmanager", "modelmanager.cpp:184", "Couldn't start model manager"),
                (
                    "serving",
                    "servablemanagermodule.cpp:54",
                    f"ovms::ModelManager::Start() Error: {reason}",
                ),
            ]
        )
    problem = schema_error(doc)
    if problem:
        _fail_exit(
            [
                ("serving", "schema.cpp:625", problem),
                (
                    "modelmanager",
                    "modelmanager.cpp:1047",
                    "Configuration file is not in valid configuration format",
                ),
                ("modelmanager", "modelmanager.cpp:184", "Couldn't start model manager"),
                (
                    "serving",
                    "servablemanagermodule.cpp:54",
                    f"ovms::ModelManager::Start() Error: {E_JSON}",
                ),
            ]
        )
    root = os.path.dirname(os.path.abspath(path))
    for item in doc["model_config_list"]:
        cfg = item["config"]
        base = cfg.get("base_path")
        if base is None or base == "":
            base = cfg["name"]
        full = base if os.path.isabs(base) else os.path.join(root, base)
        knobs = read_knobs(full) if not is_path_escaped(base) else dict(DEFAULT_KNOBS)
        s = Servable(cfg["name"], full, knobs["servable"], knobs)
        s.escaped = is_path_escaped(base)
        app.add(s)


def load_one(app, s, config_flow):
    """Load one servable on the main thread; returns only when done (or exits)."""
    knobs = s.knobs
    where = "modelmanager.cpp:1443"
    if getattr(s, "escaped", False) or not os.path.isdir(s.dir):
        if getattr(s, "escaped", False):
            log(
                "modelmanager",
                "error",
                "modelmanager.cpp:1433",
                f"Path {s.dir} escape with .. is forbidden.",
            )
        else:
            log("modelmanager", "error", where, f"Directory does not exist: {s.dir}")
        if config_flow:
            s.state = "missing"
            return
        _fail_exit(
            [
                ("modelmanager", "modelmanager.cpp:184", "Couldn't start model manager"),
                (
                    "serving",
                    "servablemanagermodule.cpp:54",
                    "ovms::ModelManager::Start() Error: The provided base path is invalid or "
                    "doesn't exists",
                ),
            ]
        )
    s.state = "loading"
    if s.graph:
        log(
            "modelmanager",
            "info",
            "mediapipegraphdefinition.cpp:421",
            f"MediapipeGraphDefinition initializing graph nodes ({s.name})",
        )
    else:
        log(
            "modelmanager",
            "info",
            "modelinstance.cpp:1092",
            f"Loading model: {s.name}, version: 1, from path: {s.dir}/1, with target device: "
            f"{APP.args.get('target_device')} ...",
        )
    if knobs["never_ready"]:
        while True:
            time.sleep(3600)
    if knobs["load_delay"]:
        time.sleep(knobs["load_delay"])
    if knobs["exit_during_load"]:
        log(
            "serving", "error", "ov_utils.cpp:120", "Caught exception while loading: std::bad_alloc"
        )
        os._exit(1)
    if knobs["fail_start"]:
        if s.kind == "llm":
            lines = [
                (
                    "modelmanager",
                    "servable_initializer.cpp:228",
                    f"Error during llm node initialization for models_path: {s.dir}/./ "
                    "exception: Exception from src/inference/src/cpp/core.cpp:109: Check "
                    "'false' failed: Could not open the file: \""
                    f'{s.dir}/openvino_model.xml"',
                ),
                (
                    "modelmanager",
                    "mediapipegraphdefinition.cpp:467",
                    f"Failed to process LLM node graph {s.name}",
                ),
            ]
            reason = "The LLM Node resource initialization failed"
        elif s.graph:
            lines = [
                (
                    "modelmanager",
                    "mediapipegraphdefinition.cpp:119",
                    f"Failed to initialize mediapipe graph: {s.name}",
                )
            ]
            reason = "Failed to initialize mediapipe graph"
        else:
            lines = [
                (
                    "modelmanager",
                    "modelinstance.cpp:842",
                    f"Error occurred while loading model: {s.name}, version: 1; error: Cannot "
                    f"compile model into target device; error: Exception from "
                    f"src/inference/src/cpp/core.cpp:121; model: {s.name}; version: 1; device: "
                    f"{APP.args.get('target_device')}",
                )
            ]
            reason = "Cannot compile model into target device"
        for logger, w, msg in lines:
            log(logger, "error", w, msg)
        if config_flow:
            s.state = "failed"
            return
        _fail_exit(
            [
                ("modelmanager", "modelmanager.cpp:184", "Couldn't start model manager"),
                (
                    "serving",
                    "servablemanagermodule.cpp:54",
                    f"ovms::ModelManager::Start() Error: {reason}",
                ),
            ]
        )
    s.state = "available"
    if s.graph:
        log(
            "modelmanager",
            "info",
            "mediapipegraphdefinition.cpp:421",
            f"Mediapipe: {s.name} loaded",
        )
    else:
        log(
            "serving",
            "info",
            "modelversionstatus.cpp:155",
            f'STATUS CHANGE: Version 1 of model {s.name} status change. New status: ( "state": '
            '"AVAILABLE", "error_code": "OK" )',
        )


def bind_rest(args):
    port = args.get("rest_port")
    servers = []
    for host in args.get("rest_bind_address").split(","):
        log(
            "serving",
            "info",
            "drogon_http_server.cpp:131",
            f"Binding REST server to address: {host}:{port}",
        )
        try:
            servers.append(fake_common.bind_server(host, port, Handler))
        except (OSError, OverflowError, ValueError):
            log(
                "serving",
                "error",
                "drogon_http_server.cpp:138",
                "Exception occurred during drogon::run()",
            )
            log("serving", "error", "http_server.cpp:268", "Failed to start Drogon server")
            log(
                "serving",
                "error",
                "httpservermodule.cpp:45",
                f"Failed to start REST server - at {args.get('rest_bind_address')}:{port}",
            )
            os._exit(1)
    return servers


def main(argv=None):
    global APP, LOG_MIN, LOG_FILE_FD
    argv = sys.argv[1:] if argv is None else argv
    # 1. record the start first thing, before any argv check
    found = record_start(argv)
    try:
        args = parse_cli(argv)
    except UsageError as e:
        _usage_exit(str(e))
    if args.get("version"):
        say(f"{PROJECT_NAME} {DEFAULT_VERSION}.0.fake")
        say(f"OpenVINO backend {DEFAULT_VERSION}.0-fake")
        say("Bazel build flags: --config=fake")
        return 0
    if args.get("help") or not argv:
        sys.stdout.write(help_text())
        sys.stdout.flush()
        return 0
    env_version = os.environ.get("FAKE_OVMS_VERSION") or DEFAULT_VERSION
    version = parse_version(env_version)
    if found.get("model_path"):
        knob_version = read_knobs(found["model_path"]).get("ovms_version")
        if knob_version:
            version = parse_version(knob_version)
    try:
        mode = validate(args, version)
    except UsageError as e:
        _usage_exit(str(e))
    LOG_MIN = LOG_LEVELS.get(args.get("log_level"), 2)
    if args.get("log_path"):
        with contextlib.suppress(OSError):
            LOG_FILE_FD = os.open(
                args.get("log_path"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
            )

    app = APP = App(args, mode, version)
    fake_common.on_term_signals(_on_signal)

    if mode == "list_models":
        say("Listing models in repository...")
        say(f"Model repository path: {args.get('model_repository_path')}")
        return 0
    log("serving", "info", "server.cpp:89", f"{PROJECT_NAME} {DEFAULT_VERSION}.0.fake")
    log("serving", "info", "server.cpp:90", f"OpenVINO backend {DEFAULT_VERSION}.0-fake")

    if mode in ("pull", "pull_and_start"):
        target = args.model_path
        if os.path.isdir(target) and not args.get("overwrite_models"):
            say(f"Path already exists on local filesystem. Skipping download to path: {target}")
        else:
            _fail_exit(
                [
                    (
                        "serving",
                        "libgit2.cpp:226",
                        "Libgit2 clone error: 6 message: failed to resolve address for "
                        "huggingface.co: Name or service not known",
                    ),
                    ("serving", "server.cpp:434", "Failed in libgit2 execution of clone method"),
                ]
            )
        say(f"Model: {args.source_model} downloaded to: {target}")
        with contextlib.suppress(OSError), open(os.path.join(target, "graph.pbtxt"), "w") as fh:
            fh.write(f"# graph written by fake ovms for task {args.get('task')}\n")
        say(f"Graph: graph.pbtxt created in: {target}")
        if mode == "pull":
            return 0

    build_servables(app, args, mode)
    if any(s.knobs["ignore_sigterm"] for s in app.servables):
        fake_common.on_term_signals(signal.SIG_IGN)

    # 2. modules: gRPC (off with port 0), then REST bound BEFORE loading
    log("serving", "info", "grpcservermodule.cpp:114", "GRPCServerModule started")
    if args.get("port") == 0:
        log(
            "serving",
            "info",
            "grpcservermodule.cpp:115",
            "Port was not set. GRPC server will not be started.",
        )
    else:
        log(
            "serving",
            "info",
            "grpcservermodule.cpp:193",
            f"Started gRPC server on port {args.get('port')} (fake: not listening)",
        )
    if args.get("rest_port"):
        workers = args.get("rest_workers", CPU_COUNT)
        log("serving", "info", "httpservermodule.cpp:33", f"Will start {workers} REST workers")
        for httpd in bind_rest(args):
            fake_common.serve_in_background(httpd)
        log(
            "serving",
            "info",
            "drogon_http_server.cpp:166",
            f"REST server listening on port {args.get('rest_port')} with {workers} unary threads "
            f"and {workers} streaming threads",
        )
        log("serving", "info", "httpservermodule.cpp:59", "HTTPServerModule started")
        log(
            "serving",
            "info",
            "httpservermodule.cpp:60",
            f"Started REST server at {args.get('rest_bind_address')}:{args.get('rest_port')}",
        )

    # 3. servable manager: loads synchronously on this (main) thread
    log("serving", "info", "servablemanagermodule.cpp:51", "ServableManagerModule starting")
    config_flow = bool(args.get("config_path"))
    if config_flow:
        load_config_file(app, args.get("config_path"))
        if any(s.knobs["ignore_sigterm"] for s in app.servables):
            fake_common.on_term_signals(signal.SIG_IGN)
    elif mode == "serve" and app.servables and app.servables[0].graph:
        bad = [k for k in GRAPH_DISALLOWED_CLI if args.given(k)]
        if bad:
            log(
                "modelmanager",
                "error",
                "modelmanager.cpp:473",
                "Starting mediapipe graph with unsupported model settings: "
                + "".join(b + ", " for b in bad)
                + "The settings should be set in subconfig.json file.",
            )
            log("modelmanager", "error", "modelmanager.cpp:184", "Couldn't start model manager")
            log(
                "serving",
                "error",
                "servablemanagermodule.cpp:54",
                "ovms::ModelManager::Start() Error: options validation error",
            )
            os._exit(EX_USAGE)
    for s in app.servables:
        load_one(app, s, config_flow)
    app.server_ready = True
    LOADING_DONE.set()
    log("serving", "info", "servablemanagermodule.cpp:55", "ServableManagerModule started")

    # 4. main loop: the shutdown flag is polled every 200 ms
    while not SHUTDOWN.wait(0.2):
        pass
    log("serving", "info", "grpcservermodule.cpp:204", "GRPCServerModule shutting down")
    log("serving", "info", "httpservermodule.cpp:66", "HTTPServerModule shutting down")
    log("serving", "info", "httpservermodule.cpp:72", "Shutdown HTTP server")
    log("serving", "info", "servablemanagermodule.cpp:63", "ServableManagerModule shutting down")
    log("serving", "info", "servablemanagermodule.cpp:69", "ServableManagerModule shutdown")
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
