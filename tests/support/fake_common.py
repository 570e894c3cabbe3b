"""Code shared by DynLLM's standalone test fakes.

Standard library only (Python 3.11+).  Used by ``fake_llama_server.py`` and
``fake_ovms.py``, which are run as executables by path (their folder is then
``sys.path[0]``, so ``import fake_common`` finds this file) and may also be imported
as ``tests.support.<fake>`` (they then import it relatively).

What lives here is what both fakes do the same way: unbuffered append-only side
files, the test-knob file's common keys, SIGTERM/SIGINT installation, the threading
HTTP server (IPv4 and IPv6) and the lean HTTP/1.1 request-head and chunked-body
framing, plus the deterministic answers both fakes give (token text, embeddings,
rerank scores, compact JSON).  Each fake keeps its own flags, routes, messages and
exit codes.
"""

import base64
import contextlib
import hashlib
import http.server
import json
import math
import os
import signal
import socket
import socketserver
import struct
import threading

# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------


def write_line(fd, line):
    """``line`` plus a newline as ONE unbuffered write to ``fd``; errors are ignored."""
    with contextlib.suppress(OSError):
        os.write(fd, (line + "\n").encode("utf-8", "replace"))


class SideFile:
    """Append-only side file; each line is one O_APPEND write (no buffering)."""

    def __init__(self, path):
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            self.fd = None

    def write(self, line):
        if self.fd is not None:
            write_line(self.fd, line)


# ---------------------------------------------------------------------------
# knobs
# ---------------------------------------------------------------------------
BASE_KNOBS = {
    "load_delay": 0.0,
    "never_ready": False,
    "fail_start": False,
    "exit_during_load": False,
    "tokens": 8,
    "token_delay": 0.0,
    "ignore_sigterm": False,
    "embedding_dim": 8,
    "record_requests": True,
}
_NUMBER_KNOBS = (
    ("load_delay", float),
    ("token_delay", float),
    ("tokens", int),
    ("embedding_dim", int),
)
_BOOL_KNOBS = ("never_ready", "fail_start", "exit_during_load", "ignore_sigterm", "record_requests")


def read_knob_file(path, defaults, numbers=()):
    """``(knobs, data)``: ``defaults`` updated from the JSON object in ``path``.

    The keys of BASE_KNOBS are read and clamped here; ``numbers`` names further
    ``(key, cast)`` numeric knobs.  ``data`` is the file's JSON object (``{}`` when
    the file is missing, unreadable, not JSON or not an object), for a fake's own keys.
    """
    knobs = dict(defaults)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return knobs, {}
    if not isinstance(data, dict):
        return knobs, {}
    for key, cast in _NUMBER_KNOBS + tuple(numbers):
        v = data.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            knobs[key] = cast(v)
    for key in _BOOL_KNOBS:
        if key in data:
            knobs[key] = bool(data[key])
    knobs["tokens"] = max(0, knobs["tokens"])
    knobs["embedding_dim"] = max(1, knobs["embedding_dim"])
    knobs["load_delay"] = max(0.0, knobs["load_delay"])
    knobs["token_delay"] = max(0.0, knobs["token_delay"])
    return knobs, data


# ---------------------------------------------------------------------------
# signals
# ---------------------------------------------------------------------------
def on_term_signals(handler):
    """Install ``handler`` (a function or signal.SIG_IGN) for SIGTERM and SIGINT."""
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# ---------------------------------------------------------------------------
# deterministic answers
# ---------------------------------------------------------------------------
TOKENS = [f"tok{i} " for i in range(4096)]
TOKENS_B = [t.encode() for t in TOKENS]


def tok_text(i):
    return TOKENS[i] if i < 4096 else f"tok{i} "


def tok_bytes(i):
    return TOKENS_B[i] if i < 4096 else f"tok{i} ".encode()


def dumps(obj):
    """Compact UTF-8 JSON bytes."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def count_words(obj):
    """Prompt "tokens": words of strings and of ``content``/``text`` values, nested."""
    if isinstance(obj, str):
        return len(obj.split())
    if isinstance(obj, list):
        return sum(count_words(x) for x in obj)
    if isinstance(obj, dict):
        return sum(count_words(v) for k, v in obj.items() if k in ("content", "text"))
    return 0


def embed(text, dim):
    """Deterministic, L2-normalised vector for `text`."""
    raw = hashlib.shake_128(text.encode("utf-8")).digest(dim * 2)
    vals = [(v - 32768) / 32768.0 for v in struct.unpack(f"<{dim}H", raw)]
    norm = math.sqrt(sum(v * v for v in vals)) or 1.0
    return [round(v / norm, 6) for v in vals]


def embedding_b64(vec):
    """``encoding_format: base64``: little-endian float32 values, base64 text."""
    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")


def rerank_score(qwords, dwords, doc):
    """Share of query words present in the document, plus a tiny deterministic tiebreak."""
    base = (len(qwords & dwords) / len(qwords)) if qwords else 0.0
    tiebreak = hashlib.md5(doc.encode("utf-8")).digest()[0] / 255.0 * 1e-3
    return round(base + tiebreak, 6)


# ---------------------------------------------------------------------------
# HTTP server
# ---------------------------------------------------------------------------
JSON_CT = b"application/json; charset=utf-8"
LINE_LIMIT = 65536  # longest request or header line
MAX_HEADERS = 200
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


class FakeHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def report_errors(self):
        """Whether handle_error prints the traceback of a failed request."""
        return False

    def server_bind(self):
        # skip HTTPServer.server_bind's socket.getfqdn(): a reverse DNS lookup is slow
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host
        self.server_port = port

    def handle_error(self, request, client_address):
        if self.report_errors():
            super().handle_error(request, client_address)


class FakeHTTPServer6(FakeHTTPServer):
    address_family = socket.AF_INET6


def bind_server(host, port, handler, report_errors=None):
    """A bound, listening server (IPv6 when ``host`` has a ``:``).

    Raises OSError, OverflowError or ValueError when it cannot bind.
    ``report_errors`` (a callable) replaces FakeHTTPServer.report_errors.
    """
    cls = FakeHTTPServer6 if ":" in host else FakeHTTPServer
    httpd = cls((host, port), handler)
    if report_errors is not None:
        httpd.report_errors = report_errors
    return httpd


def serve_in_background(httpd):
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True)
    t.start()
    return t


class HeadError(Exception):
    """A malformed request head; ``status`` is 431 (too large) or 400 (bad line)."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


class FakeRequestHandler(http.server.BaseHTTPRequestHandler):
    """A lean replacement for BaseHTTPRequestHandler's request parsing.

    A fake's ``handle_one_request`` calls read_request_line, read_headers and
    accept_request, answering malformed heads in its own words.
    """

    protocol_version = "HTTP/1.1"
    sys_version = ""
    disable_nagle_algorithm = True  # TCP_NODELAY on every accepted socket
    wbufsize = 0  # every wfile.write() is one sendall(): SSE chunks leave at once
    timeout = None

    def read_request_line(self):
        """The request line, or None (connection closed, or a stray CRLF to skip)."""
        try:
            line = self.rfile.readline(LINE_LIMIT + 1)
        except (OSError, ValueError):
            self.close_connection = True
            return None
        if not line:
            self.close_connection = True
            return None
        if line in (b"\r\n", b"\n"):  # stray CRLF between requests
            return None
        return line

    def read_headers(self, check_length=True):
        """``{lower-case name: value}`` up to the blank line; None at EOF (closed).

        Raises HeadError(431) past MAX_HEADERS lines or (with ``check_length``) for
        a line longer than LINE_LIMIT, HeadError(400) for a line without a colon.
        """
        rfile = self.rfile
        headers = {}
        count = 0
        while True:
            h = rfile.readline(LINE_LIMIT + 1)
            if not h:
                self.close_connection = True
                return None
            if h in (b"\r\n", b"\n"):
                return headers
            count += 1
            if count > MAX_HEADERS or (check_length and len(h) > LINE_LIMIT):
                raise HeadError(431)
            k, sep, v = h.partition(b":")
            if not sep:
                raise HeadError(400)
            headers[k.strip().lower()] = v.strip()

    def accept_request(self, line, method, target, version, headers):
        """Record the parsed head on the handler and settle keep-alive."""
        conn = headers.get(b"connection", b"").lower()
        self.http10 = version == b"HTTP/1.0"
        if self.http10:
            self.close_connection = conn != b"keep-alive"
        else:
            self.close_connection = conn == b"close"
        self.command = method.decode("latin-1")
        self.path = target.decode("latin-1")
        self.request_version = version.decode("latin-1")
        self.requestline = line.decode("latin-1").rstrip("\r\n")
        self.hdrs = headers


def is_chunked(headers):
    te = headers.get(b"transfer-encoding")
    return te is not None and b"chunked" in te.lower()


def wants_continue(headers):
    return headers.get(b"expect", b"").lower() == b"100-continue"


def chunk_size(line):
    """The size in a chunk-size line; ValueError when it is not hex."""
    return int(line.split(b";", 1)[0].strip(), 16)


def skip_trailers(rfile):
    """Read the trailer lines after the last (zero-size) chunk."""
    while True:
        t = rfile.readline(LINE_LIMIT + 1)
        if not t or t in (b"\r\n", b"\n"):
            break


def frame_chunk(data):
    """``data`` as one chunk of a chunked response body."""
    return b"%x\r\n%s\r\n" % (len(data), data)
