"""Forward one request to a backend and hand back its response as it arrives.

The body goes upstream byte for byte; the backend's status, content type and
body come back unchanged.  :class:`RelayBody` is the WSGI iterable: waitress
calls its :meth:`~RelayBody.close` when the response is done *or* the client
went away, and that closes the upstream connection (so the backend stops
generating) and releases the lease.
"""

from __future__ import annotations

import http.cookiejar
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, Protocol

import requests
from requests.adapters import HTTPAdapter
from requests.hooks import default_hooks
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import ReadTimeoutError

from .bodies import Renamer
from .errors import BackendTimeout, BackendUnavailable, error_body

log = logging.getLogger("dynllm.relay")

#: Headers that describe one connection, not the message (RFC 9110 7.6.1),
#: plus those that the HTTP client recomputes.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_UPSTREAM = HOP_BY_HOP | {"host", "content-length", "authorization", "expect"}
_NOT_DOWNSTREAM = HOP_BY_HOP | {"server", "date"}

_READ_ERRORS = (requests.RequestException, Urllib3HTTPError, OSError)
_TIMEOUTS = (requests.Timeout, ReadTimeoutError, TimeoutError)

#: Largest piece read from the backend at once.
CHUNK = 64 * 1024


class Releasable(Protocol):
    def release(self) -> None: ...


#: Piece size for sending request bodies (uploads) upstream; urllib3's default is 16 KiB.
SEND_BLOCK = 256 * 1024


class _Adapter(HTTPAdapter):
    """Sends file bodies (uploads) upstream in larger pieces than urllib3's default."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("blocksize", SEND_BLOCK)
        super().init_poolmanager(*args, **kwargs)


class Upstream:
    """A pooled HTTP client shared by every request thread."""

    def __init__(self, pool_size: int, request_timeout: float, connect_timeout: float = 10.0):
        self.session = requests.Session()
        self.session.trust_env = False  # never send backend traffic through a proxy
        # Only the client's own headers go upstream (no python-requests defaults
        # such as Accept-Encoding: gzip the client never asked for) ...
        self.session.headers.clear()
        # ... and a cookie one backend sets is never replayed to another client.
        self.session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        self.adapter = _Adapter(pool_connections=16, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", self.adapter)
        self.timeout = (connect_timeout, request_timeout)

    def send(
        self, method: str, url: str, body: bytes | IO[bytes] | None, headers: Mapping[str, str]
    ) -> requests.Response:
        """Open the upstream request; raises a DynLLM error if the backend is unreachable."""
        try:
            if isinstance(body, bytes) and _PLAIN_URL(url):
                return self._send_bytes(method, url, body, headers)
            return self.session.request(
                method,
                url,
                data=body,
                headers=headers,
                stream=True,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            raise BackendTimeout(f"backend did not answer in time: {exc}") from None
        except requests.RequestException as exc:
            raise BackendUnavailable(f"backend unreachable: {exc}") from None

    def _send_bytes(
        self, method: str, url: str, body: bytes, headers: Mapping[str, str]
    ) -> requests.Response:
        """The common case (an in-memory body, a URL needing no quoting) straight
        to the session's adapter.

        ``Session.request`` would merge session settings, cookies, environment
        and hooks that DynLLM never uses (no proxies, no cookies, no redirects)
        and requote the URL: about an eighth of the CPU a small request costs.
        The response is the same ``requests.Response``, streamed the same way.
        """
        req = requests.PreparedRequest()
        req.method = method
        req.url = url
        req.headers = CaseInsensitiveDict(headers)
        if body:  # as requests does: an empty body gets whatever urllib3 gives it
            req.headers["Content-Length"] = str(len(body))
        req.body = body
        req.hooks = default_hooks()
        return self.adapter.send(req, stream=True, timeout=self.timeout)

    def close(self) -> None:
        self.session.close()


#: URLs that ``requests`` would send unchanged (DynLLM builds them from the
#: backend's address and a route; a query string or an odd path takes the long way).
_PLAIN_URL = re.compile(r"http://[A-Za-z0-9.:\[\]]+(/[A-Za-z0-9._~/-]*)?\Z").match


def upstream_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Client headers that may go to the backend."""
    return {k: v for k, v in headers.items() if k.lower() not in _NOT_UPSTREAM}


def downstream_headers(
    resp: requests.Response, body_changed: bool = False
) -> list[tuple[str, str]]:
    """Backend headers that go back to the client, plus the no-buffering hint for proxies.

    Headers waitress would refuse (a Content-Length that is not one number, a
    value with a line break) are dropped rather than failing the whole response,
    and so is the Content-Length of a body DynLLM rewrites on the way.
    """
    out = []
    for k, v in resp.raw.headers.items():
        lk = k.lower()
        if lk in _NOT_DOWNSTREAM or "\r" in v or "\n" in v:
            continue
        if lk == "content-length" and (body_changed or not v.isdigit()):
            continue
        out.append((k, v))
    if "x-accel-buffering" not in resp.raw.headers:
        out.append(("X-Accel-Buffering", "no"))
    return out


def _chunks(resp: requests.Response) -> Iterator[bytes]:
    """The raw body as the backend sends it: one item per chunk, not re-encoded."""
    raw = resp.raw
    if raw.chunked and raw.supports_chunked_reads():
        yield from raw.read_chunked(CHUNK, decode_content=False)
    elif raw.length_remaining is not None:
        yield from raw.stream(CHUNK, decode_content=False)
    else:  # delimited by connection close: hand on whatever has arrived
        while True:
            data = raw.read1(CHUNK, decode_content=False)
            if not data:
                return
            yield data


def _renamed(chunks: Iterator[bytes], old: bytes, new: bytes) -> Iterator[bytes]:
    renamer = Renamer(old, new)
    for chunk in chunks:
        out = renamer.feed(chunk)
        if out:
            yield out
    tail = renamer.flush()
    if tail:
        yield tail


class RelayBody:
    """WSGI response iterable that relays a backend response and cleans up on close."""

    def __init__(
        self,
        resp: requests.Response,
        lease: Releasable,
        model: str,
        rename: tuple[bytes, bytes] | None = None,
        on_close: Callable[[], None] | None = None,
        add_done: bool = False,
    ) -> None:
        self._on_close = on_close
        self._resp = resp
        self._lease = lease
        self._model = model
        self._it = _chunks(resp) if rename is None else _renamed(_chunks(resp), *rename)
        self._first = b""
        ctype = resp.headers.get("content-type", "")
        self._sse = ctype.startswith("text/event-stream")
        #: Close a clean event stream with the ``[DONE]`` event the backend leaves out.
        self._add_done = add_done and self._sse
        self._complete = False
        self._closed = False

    def start(self) -> None:
        """Wait for the first piece of the body.

        Nothing reaches the client before it anyway (waitress sends the headers
        with the first piece), and a backend that fails before it can still be
        answered with a clean JSON error instead of a cut response.
        """
        try:
            self._first = next(self._it, b"")
        except _READ_ERRORS as exc:
            if isinstance(exc, _TIMEOUTS):
                raise BackendTimeout(
                    f"backend for '{self._model}' stopped answering: {exc}"
                ) from None
            raise BackendUnavailable(
                f"backend for '{self._model}' failed before answering: {exc}"
            ) from None

    @property
    def adds(self) -> bool:
        """Whether the client gets more bytes than the backend sent (``[DONE]``)."""
        return self._add_done

    @property
    def first(self) -> bytes:
        """The first piece of the body (after :meth:`start`)."""
        return self._first

    def __iter__(self) -> Iterator[bytes]:
        # A generator (not __next__) keeps the per-chunk cost to one frame resume.
        try:
            if self._first:
                yield self._first
            yield from self._it
        except _READ_ERRORS as exc:
            log.warning("model=%s upstream failed mid-response: %s", self._model, exc)
            if not self._sse:
                raise  # waitress then drops the connection: the body is visibly short
            # End the event stream with an error event a client can see,
            # instead of a silent cut that looks like a finished answer.
            yield sse_error(f"backend for '{self._model}' failed mid-stream: {exc}", 502)
            return
        self._complete = True
        if self._add_done:
            yield DONE_EVENT

    def close(self, counted: bool = True) -> None:
        """Release everything; ``counted=False`` skips the close callback (the request
        is being answered with an error instead)."""
        if self._closed:
            return
        self._closed = True
        if not counted:
            self._on_close = None
        try:
            if self._complete:
                # Read to the end: the connection goes back to the pool.
                self._resp.raw.release_conn()
            else:
                # Client gone or backend failed mid-body: drop the connection,
                # which is what tells the backend to stop generating.
                self._resp.close()
        finally:
            self._lease.release()
            if self._on_close is not None:
                try:
                    self._on_close()
                except Exception:
                    log.exception("model=%s response close callback failed", self._model)


#: Leading bytes of the audio formats a speech endpoint may return.
_AUDIO_MAGIC = (
    (b"RIFF", "audio/wav"),
    (b"ID3", "audio/mpeg"),
    (b"\xff\xfb", "audio/mpeg"),
    (b"\xff\xf3", "audio/mpeg"),
    (b"\xff\xf2", "audio/mpeg"),
    (b"OggS", "audio/ogg"),
    (b"fLaC", "audio/flac"),
)


def sniff_audio(first: bytes) -> str | None:
    """The audio type that ``first`` (the start of a body) begins with, if any."""
    if first.startswith(b"RIFF") and first[8:12] != b"WAVE":
        return None
    for magic, ctype in _AUDIO_MAGIC:
        if first.startswith(magic):
            return ctype
    return None


DONE_EVENT = b"data: [DONE]\n\n"


def sse_error(message: str, status: int) -> bytes:
    """A server-sent event carrying an OpenAI-shaped error (the OpenAI SDK raises on it)."""
    body = error_body(message, "server_error", "backend_stream_error")
    body["error"]["status"] = status
    return b"data: " + json.dumps(body).encode() + b"\n\n"
