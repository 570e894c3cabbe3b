#!/usr/bin/env python3
"""Fake ``llama-server`` for DynLLM's integration tests and benchmarks.

Standard library only (Python 3.11+).  It imitates the llama.cpp HTTP server
(modelled on release b10434) closely enough that DynLLM's real argv-building,
spawn, readiness and relay code can run against it:

* the command line is checked against the real binary's full flag table
  (from ``llama-server --help``); an unknown flag prints
  ``error: invalid argument: --foo`` to stderr and exits 1, exactly like the
  real one.  Values are always the next argv token (``--port=1`` is invalid,
  as in llama.cpp); ``_`` in a ``--long_flag`` is read as ``-``.
* the port is bound BEFORE the model "loads"; while loading, every route
  (``/health`` and ``/v1/models`` included) answers 503 ``Loading model``.
* OpenAI-compatible routes: ``/v1/chat/completions``, ``/v1/completions``,
  ``/v1/embeddings`` (+ ``/embeddings``), ``/v1/rerank`` (+ ``/rerank``,
  ``/v1/reranking``, ``/reranking``), ``/v1/models`` (+ ``/models``),
  ``/health`` (+ ``/v1/health``), ``/metrics`` (with ``--metrics``).

Test knobs are read from the ``-m`` file itself, a JSON object (an empty or
non-JSON file means "all defaults"):

  load_delay        float  seconds spent loading (health 503) before ready [0]
  never_ready       bool   stay in the loading state forever              [false]
  fail_start        bool   after load_delay print a model-load error, exit 1
  exit_during_load  bool   after load_delay print a crash line, exit 1
  tokens            int    tokens per completion when max_tokens is absent [8]
  token_delay       float  seconds before each streamed token (summed for
                           non-streamed answers)                           [0]
  crash_after_tokens int   stream: after sending that many tokens print
                           ``GGML_ASSERT(...) failed`` and ``os._exit(134)``
                           (connection cut, no final chunk, no [DONE]);
                           non-stream: same crash before answering.  Only when
                           the answer has at least that many tokens.
  ignore_sigterm    bool   ignore SIGTERM/SIGINT (only SIGKILL ends it)    [false]
  embedding_dim     int    length of embedding vectors                     [8]
  record_requests   bool   write ``request`` lines to <model>.events       [true]

Side files next to the model file (append-only, one line each, written with a
single O_APPEND write so they are flushed immediately):

  <model>.starts   ``<pid> <json argv>`` at every process start, first thing
                   (before argv checks and before binding); argv is the full
                   sys.argv, argv[0] included
  <model>.events   ``request <path> <pid>`` per HTTP request (path without
                   query string), ``stream_done <pid>`` when a stream
                   completes, ``stream_aborted <pid>`` when the client went
                   away mid-stream.

Token text is deterministic: "tok0 ", "tok1 ", ...; the number of tokens is
min(max_tokens, knob ``tokens``).  finish_reason is "length" when the request's
max_tokens (or max_completion_tokens / n_predict) is <= ``tokens``, else "stop".

Other behaviour: a missing model file exits 1 right after binding; a busy port
prints ``couldn't bind HTTP server socket, hostname: H, port: P`` and exits 1;
SIGTERM/SIGINT exit 0 at once; ``--log-disable`` silences every log line (as in
llama.cpp; argv errors and GGML_ASSERT still reach stderr); ``--verbose`` logs
each request; ``--api-key`` guards every route except /health and /models;
chat/completions on an ``--embeddings``/``--reranking`` server answer 500.
"""

import argparse
import itertools
import json
import os
import signal
import sys
import time

if __package__:  # imported as tests.support.fake_llama_server
    from . import fake_common
else:  # run by path: this file's folder is sys.path[0]
    import fake_common

BUILD_NUMBER = 10434
FINGERPRINT = f"b{BUILD_NUMBER}-fake"
PY_VERSION = sys.version.split()[0]

# ---------------------------------------------------------------------------
# The real llama-server b10434 flag table, generated from `llama-server --help`.
# Each entry is "<number of values>:<comma-separated spellings>".
# ---------------------------------------------------------------------------
_REAL_FLAGS = """
    0:-h,--help,--usage 0:--version 0:-cl,--cache-list 0:--completion-bash 1:-t,--threads
    1:-tb,--threads-batch 1:-C,--cpu-mask 1:-Cr,--cpu-range 1:--cpu-strict 1:--prio 1:--poll
    1:-Cb,--cpu-mask-batch 1:-Crb,--cpu-range-batch 1:--cpu-strict-batch 1:--prio-batch
    1:--poll-batch 1:-c,--ctx-size 1:-n,--predict,--n-predict 1:-b,--batch-size 1:-ub,--ubatch-size
    1:--keep 0:--swa-full 1:-fa,--flash-attn 0:--perf,--no-perf 0:-e,--escape,--no-escape
    1:--rope-scaling 1:--rope-scale 1:--rope-freq-base 1:--rope-freq-scale 1:--yarn-orig-ctx
    1:--yarn-ext-factor 1:--yarn-attn-factor 1:--yarn-beta-slow 1:--yarn-beta-fast
    0:-kvo,--kv-offload,-nkvo,--no-kv-offload 0:--repack,-nr,--no-repack 0:--no-host
    1:-ctk,--cache-type-k 1:-ctv,--cache-type-v 1:-dt,--defrag-thold 1:--rpc 0:--mlock
    0:--mmap,--no-mmap 0:-dio,--direct-io,-ndio,--no-direct-io 1:-lm,--load-mode 1:--numa
    1:-dev,--device 0:--list-devices 1:-ot,--override-tensor 0:-cmoe,--cpu-moe 1:-ncmoe,--n-cpu-moe
    1:-ngl,--gpu-layers,--n-gpu-layers 1:-sm,--split-mode 1:-ts,--tensor-split 1:-mg,--main-gpu
    1:-fit,--fit 1:-fitt,--fit-target 1:-fitc,--fit-ctx 0:--check-tensors 1:--override-kv
    0:--op-offload,--no-op-offload 1:--lora 1:--lora-scaled 1:--control-vector
    1:--control-vector-scaled 2:--control-vector-layer-range 1:-m,--model 1:-mu,--model-url
    1:-dr,--docker-repo 1:-hf,-hfr,--hf-repo 1:-hff,--hf-file 1:-hft,--hf-token 0:--log-disable
    1:--log-file 1:--log-colors 0:-v,--verbose,--log-verbose 0:--offline
    1:-lv,--verbosity,--log-verbosity 0:--log-prefix,--no-log-prefix
    0:--log-timestamps,--no-log-timestamps 1:--spec-draft-type-k,-ctkd,--cache-type-k-draft
    1:--spec-draft-type-v,-ctvd,--cache-type-v-draft 1:--samplers 1:-s,--seed
    1:--sampler-seq,--sampling-seq 0:--ignore-eos 1:--temp,--temperature 1:--top-k 1:--top-p
    1:--min-p 1:--top-nsigma,--top-n-sigma 1:--xtc-probability 1:--xtc-threshold
    1:--typical,--typical-p 1:--repeat-last-n 1:--repeat-penalty 1:--presence-penalty
    1:--frequency-penalty 1:--dry-multiplier 1:--dry-base 1:--dry-allowed-length
    1:--dry-penalty-last-n 1:--dry-sequence-breaker 1:--adaptive-target 1:--adaptive-decay
    1:--dynatemp-range 1:--dynatemp-exp 1:--mirostat 1:--mirostat-lr 1:--mirostat-ent
    1:-l,--logit-bias 1:--grammar 1:--grammar-file 1:-j,--json-schema 1:-jf,--json-schema-file
    0:-bs,--backend-sampling 1:--spec-draft-hf,-hfd,-hfrd,--hf-repo-draft
    1:--spec-draft-threads,-td,--threads-draft
    1:--spec-draft-threads-batch,-tbd,--threads-batch-draft
    1:--spec-draft-cpu-mask,-Cd,--cpu-mask-draft 1:--spec-draft-cpu-range,-Crd,--cpu-range-draft
    1:--spec-draft-cpu-strict,--cpu-strict-draft 1:--spec-draft-prio,--prio-draft
    1:--spec-draft-poll,--poll-draft 1:--spec-draft-cpu-mask-batch,-Cbd,--cpu-mask-batch-draft
    1:--spec-draft-cpu-strict-batch,--cpu-strict-batch-draft
    1:--spec-draft-prio-batch,--prio-batch-draft 1:--spec-draft-poll-batch,--poll-batch-draft
    1:--spec-draft-override-tensor,-otd,--override-tensor-draft
    0:--spec-draft-cpu-moe,-cmoed,--cpu-moe-draft
    1:--spec-draft-n-cpu-moe,--spec-draft-ncmoe,-ncmoed,--n-cpu-moe-draft 1:--spec-draft-n-max
    1:--spec-draft-n-min 1:--spec-draft-p-split,--draft-p-split 1:--spec-draft-p-min,--draft-p-min
    0:--spec-draft-backend-sampling,--no-spec-draft-backend-sampling
    1:--spec-draft-device,-devd,--device-draft
    1:--spec-draft-ngl,-ngld,--gpu-layers-draft,--n-gpu-layers-draft
    1:--spec-draft-model,-md,--model-draft 1:--spec-type 1:--spec-ngram-mod-n-min
    1:--spec-ngram-mod-n-max 1:--spec-ngram-mod-n-match 1:--spec-ngram-simple-size-n
    1:--spec-ngram-simple-size-m 1:--spec-ngram-simple-min-hits 1:--spec-ngram-map-k-size-n
    1:--spec-ngram-map-k-size-m 1:--spec-ngram-map-k-min-hits 1:--spec-ngram-map-k4v-size-n
    1:--spec-ngram-map-k4v-size-m 1:--spec-ngram-map-k4v-min-hits 1:--draft,--draft-n,--draft-max
    1:--draft-min,--draft-n-min 1:--spec-ngram-size-n 1:--spec-ngram-size-m 1:--spec-ngram-min-hits
    1:-lcs,--lookup-cache-static 1:-lcd,--lookup-cache-dynamic
    1:-ctxcp,--ctx-checkpoints,--swa-checkpoints 1:-cms,--checkpoint-min-step 1:-cram,--cache-ram
    0:-kvu,--kv-unified,-no-kvu,--no-kv-unified 0:--cache-idle-slots,--no-cache-idle-slots
    0:--context-shift,--no-context-shift 1:-r,--reverse-prompt 0:-sp,--special
    0:--warmup,--no-warmup 0:--spm-infill 1:--pooling 1:-np,--parallel
    0:-cb,--cont-batching,-nocb,--no-cont-batching 1:-mm,--mmproj 1:-mmu,--mmproj-url
    0:--mmproj-auto,--no-mmproj,--no-mmproj-auto 0:--mmproj-offload,--no-mmproj-offload
    1:--image-min-tokens 1:--image-max-tokens 1:--mtmd-batch-max-tokens 1:-a,--alias 1:--tags
    1:--embd-normalize 1:--host 1:--port 0:--reuse-port 1:--path 1:--cors-origins 1:--cors-methods
    1:--cors-headers 0:--cors-credentials,--no-cors-credentials 1:--api-prefix
    1:--ui-config,--webui-config 1:--ui-config-file,--webui-config-file
    0:--ui-mcp-proxy,--webui-mcp-proxy,--no-ui-mcp-proxy,--no-webui-mcp-proxy 1:--tools
    1:--tools-runtime 1:--mcp-servers-config 1:--mcp-servers-json 0:-ag,--agent,-no-ag,--no-agent
    0:--ui,--webui,--no-ui,--no-webui 0:--embedding,--embeddings 0:--rerank,--reranking 1:--api-key
    1:--api-key-file 1:--ssl-key-file 1:--ssl-cert-file 1:--chat-template-kwargs 1:-to,--timeout
    1:--sse-ping-interval 1:--threads-http 0:--cache-prompt,--no-cache-prompt 1:--cache-reuse
    0:--metrics 0:--props 0:--slots,--no-slots 1:--slot-save-path 1:--media-path 1:--models-dir
    1:--models-preset 1:--models-max 0:--models-autoload,--no-models-autoload 0:--jinja,--no-jinja
    1:--reasoning-format 1:-rea,--reasoning 1:--reasoning-effort 1:--reasoning-budget
    1:--reasoning-budget-message 0:--reasoning-preserve,--no-reasoning-preserve 1:--chat-template
    1:--chat-template-file 0:--skip-chat-parsing,--no-skip-chat-parsing
    0:--prefill-assistant,--no-prefill-assistant 1:-sps,--slot-prompt-similarity
    0:--lora-init-without-apply 1:--sleep-idle-seconds 1:--log-prompts-dir 0:--embd-gemma-default
    0:--fim-qwen-1.5b-default 0:--fim-qwen-3b-default 0:--fim-qwen-7b-default 0:--fim-qwen-7b-spec
    0:--fim-qwen-14b-spec 0:--fim-qwen-30b-default 0:--gpt-oss-20b-default 0:--gpt-oss-120b-default
    0:--vision-gemma-4b-default 0:--vision-gemma-12b-default 0:--spec-default
"""

# flags the real binary still parses but rejects in their handler
_REMOVED_FLAGS = {
    "--draft": "--spec-draft-n-max or --spec-ngram-mod-n-max",
    "--draft-n": "--spec-draft-n-max or --spec-ngram-mod-n-max",
    "--draft-max": "--spec-draft-n-max or --spec-ngram-mod-n-max",
    "--draft-min": "--spec-draft-n-min or --spec-ngram-mod-n-min",
    "--draft-n-min": "--spec-draft-n-min or --spec-ngram-mod-n-min",
    "--spec-ngram-size-n": "--spec-ngram-*-size-n or --spec-ngram-mod-n-match",
    "--spec-ngram-size-m": "--spec-ngram-*-size-m",
    "--spec-ngram-min-hits": "--spec-ngram-*-min-hits",
}


def _flag_table():
    table = {}
    for entry in _REAL_FLAGS.split():
        n, names = entry.split(":", 1)
        for name in names.split(","):
            table[name] = int(n)
    return table


FLAG_NARGS = _flag_table()


class _ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # never argparse's own exit(2)
        raise _ArgError(message)


_TRUTHY = {"on", "enabled", "true", "1"}
_FALSEY = {"off", "disabled", "false", "0"}
_AUTOY = {"auto", "-1"}


def _tri_state(value):
    v = value.lower()
    if v in _TRUTHY:
        return "on"
    if v in _FALSEY:
        return "off"
    if v in _AUTOY:
        return "auto"
    raise ValueError(f"unknown value: '{value}'")


def _gpu_layers(value):
    if value in ("auto", "all"):
        return value
    return int(value)


def _build_parser():
    p = _Parser(prog="llama-server", add_help=False, allow_abbrev=False)
    a = p.add_argument
    a("-m", "--model", dest="model", default=None)
    a("--host", dest="host", default="127.0.0.1")
    a("--port", dest="port", type=int, default=8080)
    a(
        "-ngl",
        "--gpu-layers",
        "--n-gpu-layers",
        dest="n_gpu_layers",
        type=_gpu_layers,
        default="auto",
    )
    a("-c", "--ctx-size", dest="ctx_size", type=int, default=0)
    a("--pooling", dest="pooling", choices=["none", "mean", "cls", "last", "rank"], default=None)
    a("-np", "--parallel", dest="parallel", type=int, default=-1)
    a("-t", "--threads", dest="threads", type=int, default=-1)
    a("-tb", "--threads-batch", dest="threads_batch", type=int, default=-1)
    a("-a", "--alias", dest="alias", default=None)
    a("--api-key", dest="api_key", action="append", default=[])
    a("-b", "--batch-size", dest="batch_size", type=int, default=2048)
    a("-ub", "--ubatch-size", dest="ubatch_size", type=int, default=512)
    a("--temp", "--temperature", dest="temp", type=float, default=0.8)
    a("-fa", "--flash-attn", dest="flash_attn", type=_tri_state, default="auto")
    a("-n", "--predict", "--n-predict", dest="n_predict", type=int, default=-1)
    a("-s", "--seed", dest="seed", type=int, default=-1)
    a("-to", "--timeout", dest="timeout", type=int, default=3600)
    a("--threads-http", dest="threads_http", type=int, default=-1)
    a("--embd-normalize", dest="embd_normalize", type=int, default=2)
    a("-lv", "--verbosity", "--log-verbosity", dest="verbosity", type=int, default=3)
    a("--log-colors", dest="log_colors", type=_tri_state, default="auto")
    a("-fit", "--fit", dest="fit", type=_tri_state, default="on")
    a("--log-file", dest="log_file", default=None)
    a("--embedding", "--embeddings", dest="embedding", action="store_true")
    a("--rerank", "--reranking", dest="reranking", action="store_true")
    a("--ui", "--webui", dest="ui", action="store_true", default=True)
    a("--no-ui", "--no-webui", dest="ui", action="store_false")
    a("--jinja", dest="jinja", action="store_true", default=True)
    a("--no-jinja", dest="jinja", action="store_false")
    a("--metrics", dest="metrics", action="store_true")
    a("--log-disable", dest="log_disable", action="store_true")
    a("-v", "--verbose", "--log-verbose", dest="verbose", action="store_true")
    a("-h", "--help", "--usage", dest="help", action="store_true")
    a("--version", dest="version", action="store_true")
    a("--list-devices", dest="list_devices", action="store_true")
    return p


def _fatal(msg):
    sys.stderr.write(msg.rstrip("\n") + "\n")
    sys.stderr.flush()
    os._exit(1)


def parse_cli(argv):
    """Validate argv like common_params_parse() does, then type it with argparse."""
    parser = _build_parser()
    known = parser._option_string_actions
    canon = []
    seen = set()
    extra = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            arg = arg.replace("_", "-")
        nargs = FLAG_NARGS.get(arg)
        if nargs is None:
            _fatal(f"error: invalid argument: {arg}")
        if arg in seen:
            sys.stderr.write(
                f"W DEPRECATED: argument '{arg}' specified multiple times, use "
                "comma-separated values instead (only last value will be used)\n"
            )
        seen.add(arg)
        if i + nargs >= len(argv):
            _fatal(
                f'error while handling argument "{arg}": expected value for argument\n\n'
                "to show complete usage, run with -h"
            )
        values = argv[i + 1 : i + 1 + nargs]
        i += 1 + nargs
        if arg in _REMOVED_FLAGS:
            _fatal(
                f'error while handling argument "{arg}": the argument has been removed. '
                f"use {_REMOVED_FLAGS[arg]}\n\n"
                "to show complete usage, run with -h"
            )
        action = known.get(arg)
        if action is None:
            extra[arg] = values
            continue
        if nargs == 0:
            canon.append(arg)
        else:
            long_name = next(s for s in action.option_strings if s.startswith("--"))
            canon.append(f"{long_name}={values[0]}")
    try:
        args = parser.parse_args(canon)
    except _ArgError as e:
        _fatal(f"error while handling argument: {e}\n\nto show complete usage, run with -h")
    args.extra = extra
    return args


# ---------------------------------------------------------------------------
# logging
# ---------------------------------------------------------------------------
LOG_ENABLED = True


def log(line):
    if LOG_ENABLED:
        fake_common.write_line(2, line)


def raw_stderr(line):
    fake_common.write_line(2, line)


# ---------------------------------------------------------------------------
# knobs
# ---------------------------------------------------------------------------
DEFAULT_KNOBS = {**fake_common.BASE_KNOBS, "crash_after_tokens": None}


def read_knobs(path):
    knobs, _data = fake_common.read_knob_file(
        path, DEFAULT_KNOBS, numbers=(("crash_after_tokens", int),)
    )
    return knobs


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------
JSON_CT = fake_common.JSON_CT

REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    411: b"Length Required",
    413: b"Payload Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
}


_dumps = fake_common.dumps


def error_body(code, message, etype):
    return _dumps({"error": {"code": code, "message": message, "type": etype}})


BODY_HEALTH_OK = b'{"status":"ok"}'
BODY_LOADING = b'{"error":{"message":"Loading model","type":"unavailable_error","code":503}}'
BODY_NOT_FOUND = error_body(404, "File Not Found", "not_found_error")
BODY_UNAUTHORIZED = (
    b'{"error":{"message":"Invalid API Key","type":"authentication_error","code":401}}'
)
BODY_NO_EMBD = error_body(
    501,
    "This server does not support embeddings. Start it with `--embeddings`",
    "not_supported_error",
)
BODY_NO_RERANK = error_body(
    501,
    "This server does not support reranking. Start it with `--reranking`",
    "not_supported_error",
)
BODY_NO_COMPLETION = error_body(
    500, "This server does not support completions. Start it without `--embeddings`", "server_error"
)
BODY_NO_METRICS = error_body(
    501,
    "This server does not support metrics endpoint. Start it with `--metrics`",
    "not_supported_error",
)
BODY_POOLING_NONE = error_body(
    400,
    "Pooling type 'none' is not OAI compatible. Please use a different pooling type",
    "invalid_request_error",
)

PUBLIC_PATHS = frozenset({"/health", "/v1/health", "/models", "/v1/models", "/api/tags"})

tok_text = fake_common.tok_text
tok_bytes = fake_common.tok_bytes


class BadRequest(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.message = message


class App:
    """Process-wide state shared by the request handlers."""

    def __init__(self, args, knobs, model_path):
        self.args = args
        self.knobs = knobs
        self.ready = False
        self.pid = os.getpid()
        self.pid_s = str(self.pid)
        aliases = [a.strip() for a in (args.alias or "").split(",") if a.strip()]
        self.aliases = aliases
        self.model_id = aliases[0] if aliases else model_path
        self.model_path = model_path
        self.embedding = bool(args.embedding or args.reranking)
        self.rerank = bool(args.reranking or (args.embedding and args.pooling == "rank"))
        self.pooling = "rank" if args.reranking else args.pooling
        self.api_keys = [k for v in args.api_key for k in v.split(",") if k]
        self.verbose = bool(args.verbose)
        self.events = fake_common.SideFile(model_path + ".events")
        self.record_requests = bool(knobs["record_requests"])
        self.ids = itertools.count(1)
        self.started = int(time.time())
        self.n_tokens = 0
        n_ctx = args.ctx_size if args.ctx_size > 0 else 4096
        self.models_body = _dumps(
            {
                "models": [
                    {
                        "name": self.model_id,
                        "model": self.model_id,
                        "modified_at": "",
                        "size": "",
                        "digest": "",
                        "type": "model",
                        "description": "",
                        "tags": [""],
                        "capabilities": ["embedding"] if self.embedding else ["completion"],
                        "parameters": "",
                        "details": {
                            "parent_model": "",
                            "format": "gguf",
                            "family": "",
                            "families": [""],
                            "parameter_size": "",
                            "quantization_level": "",
                        },
                    }
                ],
                "object": "list",
                "data": [
                    {
                        "id": self.model_id,
                        "aliases": aliases,
                        "tags": [],
                        "object": "model",
                        "created": self.started,
                        "owned_by": "llamacpp",
                        "meta": {
                            "vocab_type": 2,
                            "n_vocab": 32000,
                            "n_ctx_train": n_ctx,
                            "n_embd": knobs["embedding_dim"],
                            "n_params": 1000000,
                            "size": 1000000,
                        },
                    }
                ],
            }
        )
        self.model_b = json.dumps(self.model_id, ensure_ascii=False).encode("utf-8")

    def event(self, what):
        self.events.write(f"{what} {self.pid_s}")

    def crash(self):
        raw_stderr(
            "/llama.cpp/src/llama-context.cpp:1042: "
            "GGML_ASSERT(n_tokens_all <= cparams.n_batch) failed"
        )
        raw_stderr("/usr/local/bin/libggml-base.so(+0x16a2b)[0x7f5a1c3e2a2b]")
        raw_stderr("/usr/local/bin/libggml-base.so(ggml_abort+0x15f)[0x7f5a1c3e2e1f]")
        os._exit(134)


APP = None  # type: App


def _verbose():
    return APP is not None and APP.verbose


class Handler(fake_common.FakeRequestHandler):
    server_version = "llama.cpp"
    rbufsize = 65536

    # -- request parsing (a lean replacement for BaseHTTPRequestHandler's) --
    def handle_one_request(self):
        line = self.read_request_line()
        if line is None:
            return
        if len(line) > fake_common.LINE_LIMIT:
            self._reply(414, error_body(414, "URI Too Long", "invalid_request_error"), close=True)
            return
        self.raw_requestline = line
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            self._reply(400, error_body(400, "Bad Request", "invalid_request_error"), close=True)
            return
        method, target, version = parts
        bad = None
        try:
            headers = self.read_headers()
        except fake_common.HeadError as e:
            bad = e.status  # answered outside the handler: no chained traceback with -v
        if bad == 431:
            body = error_body(431, "Request Header Fields Too Large", "invalid_request_error")
            self._reply(431, body, close=True)
            return
        if bad is not None:
            self._reply(400, error_body(400, "Bad Request", "invalid_request_error"), close=True)
            return
        if headers is None:
            return
        self.accept_request(line, method, target, version, headers)
        try:
            body = self._read_body(headers)
        except BadRequest as e:
            self._reply(400, error_body(400, e.message, "invalid_request_error"), close=True)
            return
        except (OSError, ValueError):
            self.close_connection = True
            return
        self.body = body
        self._dispatch()

    def _read_body(self, headers):
        if fake_common.is_chunked(headers):
            if fake_common.wants_continue(headers) and not self.http10:
                self.wfile.write(fake_common.CONTINUE_100)
            out = []
            rfile = self.rfile
            while True:
                size_line = rfile.readline(fake_common.LINE_LIMIT + 1)
                if not size_line:
                    raise ValueError("eof in chunked body")
                try:
                    size = fake_common.chunk_size(size_line)
                except ValueError:
                    raise BadRequest("invalid chunked encoding") from None
                if size == 0:
                    fake_common.skip_trailers(rfile)
                    break
                out.append(rfile.read(size))
                rfile.readline(3)
            return b"".join(out)
        cl = headers.get(b"content-length")
        if cl is None:
            return b""
        try:
            n = int(cl)
        except ValueError:
            raise BadRequest("invalid Content-Length") from None
        if n < 0:
            raise BadRequest("invalid Content-Length")
        if n == 0:
            return b""
        if fake_common.wants_continue(headers) and not self.http10:
            self.wfile.write(fake_common.CONTINUE_100)
        data = self.rfile.read(n)
        if len(data) != n:
            raise ValueError("short body")
        return data

    # -- response helpers --
    def _reply(self, status, body, ctype=JSON_CT, close=False):
        if close:
            self.close_connection = True
        head = (
            b"HTTP/1.1 %d %s\r\nServer: llama.cpp\r\n"
            b"Content-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
            % (
                status,
                REASONS.get(status, b"Unknown"),
                ctype,
                len(body),
                b"Connection: close\r\n" if self.close_connection else b"",
            )
        )
        self.wfile.write(head + body)
        if APP.verbose:
            self.log_message('"%s" %d %d', self.requestline, status, len(body))

    def log_message(self, format, *args):
        if APP is not None and APP.verbose:
            log(f"srv  log_server_r: request: {self.client_address[0]} {format % args}")

    # -- routing --
    def _dispatch(self):
        app = APP
        path = self.path.split("?", 1)[0]
        if app.record_requests:
            app.events.write(f"request {path} {app.pid_s}")
        try:
            if app.api_keys and path not in PUBLIC_PATHS:
                auth = self.hdrs.get(b"authorization", b"").decode("latin-1")
                key = auth[7:] if auth.startswith("Bearer ") else auth
                if not key:
                    key = self.hdrs.get(b"x-api-key", b"").decode("latin-1")
                if key not in app.api_keys:
                    self._reply(401, BODY_UNAUTHORIZED)
                    return
            if not app.ready:
                self._reply(503, BODY_LOADING)
                return
            route = ROUTES.get((self.command, path))
            if route is None:
                self._reply(404, BODY_NOT_FOUND)
                return
            route(self)
        except BadRequest as e:
            self._reply(400, error_body(400, e.message, "invalid_request_error"))
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
        except Exception as e:  # like the real server's exception handler
            try:
                self._reply(500, error_body(500, f"{type(e).__name__}: {e}", "server_error"))
            except OSError:
                self.close_connection = True

    def _json(self):
        body = self.body
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"[json.exception.parse_error.101] parse error: {e}") from None
        if not isinstance(data, dict):
            raise BadRequest("[json.exception.type_error.302] request body must be a JSON object")
        return data

    # -- GET routes --
    def r_health(self):
        self._reply(200, BODY_HEALTH_OK)

    def r_models(self):
        self._reply(200, APP.models_body)

    def r_metrics(self):
        app = APP
        if not app.args.metrics:
            self._reply(501, BODY_NO_METRICS)
            return
        text = (
            "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
            "# TYPE llamacpp:prompt_tokens_total counter\nllamacpp:prompt_tokens_total 0\n"
            "# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.\n"
            "# TYPE llamacpp:tokens_predicted_total counter\n"
            f"llamacpp:tokens_predicted_total {app.n_tokens}\n"
            "# HELP llamacpp:requests_processing Number of requests processing.\n"
            "# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 0\n"
        )
        self._reply(200, text.encode(), ctype=b"text/plain; version=0.0.4")

    # -- completions --
    def _n_tokens(self, data):
        knob = APP.knobs["tokens"]
        mt = None
        for key in ("max_tokens", "max_completion_tokens", "n_predict"):
            v = data.get(key)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, int):
                    raise BadRequest(f'"{key}" must be an integer')
                mt = v
                break
        if mt is None and APP.args.n_predict >= 0:
            mt = APP.args.n_predict
        if mt is None or mt < 0:
            return knob, "stop"
        if mt <= knob:
            return mt, "length"
        return knob, "stop"

    def r_chat(self):
        self._completion(chat=True)

    def r_completions(self):
        self._completion(chat=False)

    def _completion(self, chat):
        app = APP
        if app.embedding:
            self._reply(500, BODY_NO_COMPLETION)
            return
        data = self._json()
        if chat:
            msgs = data.get("messages")
            if not isinstance(msgs, list):
                raise BadRequest("'messages' is required and must be an array")
            prompt_tokens = fake_common.count_words(msgs)
        else:
            if "prompt" not in data:
                raise BadRequest('"prompt" must be provided')
            prompt_tokens = fake_common.count_words(data.get("prompt"))
        n, finish = self._n_tokens(data)
        cid = ("chatcmpl-fake%s-%d" if chat else "cmpl-fake%s-%d") % (app.pid_s, next(app.ids))
        created = int(time.time())
        knobs = app.knobs
        crash_at = knobs["crash_after_tokens"]
        delay = knobs["token_delay"]
        stream = data.get("stream") is True
        usage = {
            "completion_tokens": n,
            "prompt_tokens": prompt_tokens,
            "total_tokens": n + prompt_tokens,
        }
        timings = {
            "prompt_n": prompt_tokens,
            "prompt_ms": 0.1,
            "predicted_n": n,
            "predicted_ms": round(n * delay * 1000.0, 3),
        }
        if stream:
            so = data.get("stream_options")
            include_usage = isinstance(so, dict) and so.get("include_usage") is True
            self._stream(
                chat, cid, created, n, finish, usage, timings, include_usage, delay, crash_at
            )
            return
        if crash_at is not None and crash_at <= n:
            if delay:
                time.sleep(delay * crash_at)
            app.crash()
        if delay and n:
            time.sleep(delay * n)
        text = "".join([tok_text(i) for i in range(n)])
        app.n_tokens += n
        if chat:
            obj = {
                "choices": [
                    {
                        "finish_reason": finish,
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                    }
                ],
                "created": created,
                "model": app.model_id,
                "system_fingerprint": FINGERPRINT,
                "object": "chat.completion",
                "usage": usage,
                "id": cid,
                "timings": timings,
            }
        else:
            obj = {
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
                "created": created,
                "model": app.model_id,
                "system_fingerprint": FINGERPRINT,
                "object": "text_completion",
                "usage": usage,
                "id": cid,
                "timings": timings,
            }
        self._reply(200, _dumps(obj))

    def _stream(
        self, chat, cid, created, n, finish, usage, timings, include_usage, delay, crash_at
    ):
        app = APP
        http10 = self.http10
        if http10:
            self.close_connection = True
        common = b'"created":%d,"id":"%s","model":%s,"system_fingerprint":"b%d-fake"' % (
            created,
            cid.encode(),
            app.model_b,
            BUILD_NUMBER,
        )
        if chat:
            pre_first = (
                b'data: {"choices":[{"finish_reason":null,"index":0,'
                b'"delta":{"role":"assistant","content":"'
            )
            pre = b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"'
            suf = b'"}}],' + common + b',"object":"chat.completion.chunk"}\n\n'
            final = (
                b'data: {"choices":[{"finish_reason":"'
                + finish.encode()
                + b'","index":0,"delta":{}}],'
                + common
                + b',"object":"chat.completion.chunk","timings":'
                + _dumps(timings)
                + b"}\n\n"
            )
            obj_name = b"chat.completion.chunk"
        else:
            pre_first = pre = b'data: {"choices":[{"text":"'
            suf = (
                b'","index":0,"logprobs":null,"finish_reason":null}],'
                + common
                + b',"object":"text_completion"}\n\n'
            )
            final = (
                b'data: {"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"'
                + finish.encode()
                + b'"}],'
                + common
                + b',"object":"text_completion","timings":'
                + _dumps(timings)
                + b"}\n\n"
            )
            obj_name = b"text_completion"
        if include_usage:
            final += (
                b'data: {"choices":[],'
                + common
                + b',"object":"'
                + obj_name
                + b'","usage":'
                + _dumps(usage)
                + b"}\n\n"
            )
        final += b"data: [DONE]\n\n"
        write = self.wfile.write
        sleep = time.sleep
        try:
            write(
                b"HTTP/1.1 200 OK\r\nServer: llama.cpp\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\n"
                + (
                    b"Connection: close\r\n\r\n"
                    if http10
                    else b"Transfer-Encoding: chunked\r\n\r\n"
                )
            )
            for i in range(n):
                if crash_at is not None and i == crash_at:
                    app.crash()
                if delay:
                    sleep(delay)
                ev = (pre_first if i == 0 else pre) + tok_bytes(i) + suf
                write(ev if http10 else fake_common.frame_chunk(ev))
                app.n_tokens += 1
            if crash_at is not None and crash_at == n:
                app.crash()
            write(final if http10 else fake_common.frame_chunk(final) + fake_common.LAST_CHUNK)
        except OSError:
            # BrokenPipeError / ConnectionResetError / ...: the client went away mid-stream
            self.close_connection = True
            app.event("stream_aborted")
            return
        app.event("stream_done")
        if app.verbose:
            self.log_message('"%s" 200 (stream, %d tokens)', self.requestline, n)

    # -- embeddings --
    def r_embeddings(self):
        app = APP
        if not app.embedding:
            self._reply(501, BODY_NO_EMBD)
            return
        if app.pooling == "none":
            self._reply(400, BODY_POOLING_NONE)
            return
        data = self._json()
        inp = data.get("input", data.get("content"))
        if inp is None:
            raise BadRequest('"input" must be provided')
        if isinstance(inp, str):
            inputs = [inp]
        elif isinstance(inp, list) and inp and all(isinstance(x, str) for x in inp):
            inputs = inp
        elif isinstance(inp, list) and inp and all(isinstance(x, int) for x in inp):
            inputs = [" ".join(map(str, inp))]
        elif isinstance(inp, list) and inp and all(isinstance(x, list) for x in inp):
            inputs = [" ".join(map(str, x)) for x in inp]
        else:
            raise BadRequest('"input" must be a string, an array of strings or an array of tokens')
        dim = app.knobs["embedding_dim"]
        b64 = data.get("encoding_format") == "base64"
        out = []
        total = 0
        for i, text in enumerate(inputs):
            if not text:
                raise BadRequest(f"input {i} is empty")
            vec = fake_common.embed(text, dim)
            total += max(1, len(text.split()))
            emb = fake_common.embedding_b64(vec) if b64 else vec
            out.append({"embedding": emb, "index": i, "object": "embedding"})
        self._reply(
            200,
            _dumps(
                {
                    "model": app.model_id,
                    "object": "list",
                    "usage": {"prompt_tokens": total, "total_tokens": total},
                    "data": out,
                }
            ),
        )

    # -- rerank --
    def r_rerank(self):
        app = APP
        if not app.rerank:
            self._reply(501, BODY_NO_RERANK)
            return
        data = self._json()
        query = data.get("query")
        if not isinstance(query, str):
            raise BadRequest('"query" must be provided')
        tei = "texts" in data
        docs = data.get("texts") if tei else data.get("documents")
        if not isinstance(docs, list) or not docs:
            raise BadRequest('"documents" must be a non-empty string array')
        texts = []
        for d in docs:
            if isinstance(d, dict):
                d = d.get("text", "")
            if not isinstance(d, str):
                raise BadRequest('"documents" must be a non-empty string array')
            texts.append(d)
        top_n = data.get("top_n")
        qwords = set(query.lower().split())
        results = []
        total = 0
        for i, d in enumerate(texts):
            dwords = set(d.lower().split())
            total += len(qwords) + len(dwords)
            score = fake_common.rerank_score(qwords, dwords, d)
            results.append({"index": i, "relevance_score": score})
        results.sort(key=lambda r: -r["relevance_score"])
        if isinstance(top_n, int) and not isinstance(top_n, bool) and top_n >= 0:
            results = results[:top_n]
        if data.get("return_text") or data.get("return_documents"):
            for r in results:
                r["document"] = {"text": texts[r["index"]]} if not tei else texts[r["index"]]
        if tei:
            body = _dumps([{"index": r["index"], "score": r["relevance_score"]} for r in results])
        else:
            body = _dumps(
                {
                    "model": app.model_id,
                    "object": "list",
                    "usage": {"prompt_tokens": total, "total_tokens": total},
                    "results": results,
                }
            )
        self._reply(200, body)


ROUTES = {
    ("GET", "/health"): Handler.r_health,
    ("GET", "/v1/health"): Handler.r_health,
    ("GET", "/models"): Handler.r_models,
    ("GET", "/v1/models"): Handler.r_models,
    ("GET", "/metrics"): Handler.r_metrics,
    ("POST", "/v1/chat/completions"): Handler.r_chat,
    ("POST", "/chat/completions"): Handler.r_chat,
    ("POST", "/v1/completions"): Handler.r_completions,
    ("POST", "/completions"): Handler.r_completions,
    ("POST", "/v1/embeddings"): Handler.r_embeddings,
    ("POST", "/embeddings"): Handler.r_embeddings,
    ("POST", "/v1/rerank"): Handler.r_rerank,
    ("POST", "/rerank"): Handler.r_rerank,
    ("POST", "/v1/reranking"): Handler.r_rerank,
    ("POST", "/reranking"): Handler.r_rerank,
}


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------
def _on_signal(signum, frame):
    log("srv    operator(): operator(): cleaning up before exit...")
    os._exit(0)


def _load_error(model_path, reason_lines):
    for line in reason_lines:
        log(line)
    log(f"common_init_from_params: failed to load model '{model_path}'")
    log(f"srv    load_model: failed to load model, '{model_path}'")
    log("srv    operator(): operator(): cleaning up before exit...")
    log("main: exiting due to model loading error")
    os._exit(1)


def _scan_model(argv):
    """The last -m/--model value in argv, without validating anything else."""
    found = None
    for i, a in enumerate(argv[:-1]):
        if a in ("-m", "--model"):
            found = argv[i + 1]
    return found


def main(argv=None):
    global APP, LOG_ENABLED
    argv = sys.argv[1:] if argv is None else argv
    # 1. record the start first thing (before argv checks and before binding), so tests
    #    can count every spawn, including ones the CLI check rejects
    raw_model = _scan_model(argv)
    if raw_model:
        fake_common.SideFile(raw_model + ".starts").write(f"{os.getpid()} {json.dumps(sys.argv)}")
    args = parse_cli(argv)
    if args.help:
        sys.stdout.write(
            "usage: llama-server [options]\n\n(fake llama-server; accepts the flags of "
            f"llama.cpp build {BUILD_NUMBER})\n"
        )
        return 0
    if args.version:
        sys.stderr.write(
            f"version: {BUILD_NUMBER} (fake)\nbuilt with python {PY_VERSION} for {sys.platform}\n"
        )
        return 0
    if args.list_devices:
        sys.stdout.write("Available devices:\n")
        return 0
    if not args.model:
        _fatal("error: this fake llama-server needs -m/--model (router mode is not imitated)")
    model_path = args.model
    LOG_ENABLED = not args.log_disable

    knobs = read_knobs(model_path)
    model_exists = os.path.isfile(model_path)

    fake_common.on_term_signals(signal.SIG_IGN if knobs["ignore_sigterm"] else _on_signal)

    n_threads = args.threads if args.threads > 0 else (os.cpu_count() or 1)
    log(
        f"build: {BUILD_NUMBER} (fake0000) with python {PY_VERSION} for {sys.platform} "
        "(fake llama-server)"
    )
    log(
        f"system info: n_threads = {n_threads}, n_threads_batch = {n_threads}, "
        f"total_threads = {os.cpu_count() or 1}"
    )
    log("")
    log("main: binding port with default address family")

    # 2. bind before loading, like the real server
    APP = App(args, knobs, model_path)
    host = args.host
    try:
        httpd = fake_common.bind_server(host, args.port, Handler, report_errors=_verbose)
    except (OSError, OverflowError, ValueError):
        log(f"start: couldn't bind HTTP server socket, hostname: {host}, port: {args.port}")
        log("main: exiting due to HTTP server error")
        return 1
    port = httpd.server_address[1]
    threads_http = args.threads_http if args.threads_http > 0 else max(1, (os.cpu_count() or 2) - 1)
    log(
        f"main: HTTP server is listening, hostname: {host}, port: {port}, "
        f"http threads: {threads_http}"
    )
    fake_common.serve_in_background(httpd)

    # 3. "load" the model
    log("main: loading model")
    log(f"srv    load_model: loading model '{model_path}'")
    if not model_exists:
        _load_error(
            model_path,
            [
                f"gguf_init_from_file: failed to open GGUF file '{model_path}' "
                "(No such file or directory)",
                "llama_model_load: error loading model: llama_model_loader: "
                f"failed to load model from {model_path}",
                "llama_model_load_from_file_impl: failed to load model",
            ],
        )
    log(
        "llama_model_loader: loaded meta data with 0 key-value pairs and 0 tensors from "
        f"{model_path} (version GGUF V3 (latest))"
    )
    if knobs["never_ready"]:
        while True:
            time.sleep(3600)
    if knobs["load_delay"]:
        time.sleep(knobs["load_delay"])
    if knobs["fail_start"]:
        _load_error(
            model_path,
            [
                "llama_model_load: error loading model: check_tensor_dims: "
                "tensor 'x' has wrong shape; "
                "expected  4096,  32000, got  4096,  32001,     1,     1",
                "llama_model_load_from_file_impl: failed to load model",
            ],
        )
    if knobs["exit_during_load"]:
        log("llama_model_load: error loading model: read error: Input/output error")
        log("main: exiting due to model loading error (crash during load)")
        os._exit(1)

    # 4. ready
    n_ctx = args.ctx_size if args.ctx_size > 0 else 4096
    n_slots = args.parallel if args.parallel > 0 else 4
    log(f"srv    load_model: initializing slots, n_slots = {n_slots}")
    for i in range(n_slots):
        log(f"slot   load_model: id  {i} | task -1 | new slot, n_ctx = {n_ctx // n_slots}")
    APP.ready = True
    log("main: model loaded")
    log(f"main: server is listening on http://{host}:{port}")
    log("main: starting the main loop...")
    log("srv  update_slots: all slots are idle")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
