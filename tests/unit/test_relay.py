"""The HTTP client layer, against ``responses`` (no sockets)."""

from __future__ import annotations

import pytest
import requests
import responses

from dynllm.errors import BackendTimeout, BackendUnavailable
from dynllm.relay import RelayBody, Upstream, downstream_headers, upstream_headers

URL = "http://127.0.0.1:9100/v1/chat/completions"


class FakeLease:
    def __init__(self) -> None:
        self.released = 0

    def release(self) -> None:
        self.released += 1


def test_hop_by_hop_and_auth_headers_stay_behind() -> None:
    out = upstream_headers(
        {
            "Content-Type": "application/json",
            "Connection": "keep-alive",
            "Transfer-Encoding": "chunked",
            "Authorization": "Bearer secret",
            "Host": "dynllm",
            "Content-Length": "12",
            "X-Request-Id": "abc",
        }
    )
    assert out == {"Content-Type": "application/json", "X-Request-Id": "abc"}


@responses.activate
def test_body_goes_upstream_byte_for_byte() -> None:
    body = b'{ "model" : "m",\n  "messages": [] , "x": 1.50 }'
    responses.post(URL, body=b'{"ok":true}', content_type="application/json")
    up = Upstream(pool_size=4, request_timeout=5)
    resp = up.send("POST", URL, body, {"Content-Type": "application/json"})
    assert responses.calls[0].request.body == body
    lease = FakeLease()
    relay = RelayBody(resp, lease, "m")
    assert b"".join(relay) == b'{"ok":true}'
    relay.close()
    relay.close()
    assert lease.released == 1


@responses.activate
def test_short_and_long_send_paths_send_the_same_request() -> None:
    """Plain URLs skip Session.request; others (query, odd path) go through it."""
    from responses import matchers

    body = b'{"model": "m"}'
    headers = {"Content-Type": "application/json", "X-Trace": "7"}
    exact = [matchers.header_matcher({**headers, "Content-Length": str(len(body))})]
    responses.post(URL, body=b"a", match=exact)
    responses.post(URL + "?x=1%202", body=b"b", match=exact)
    responses.post("http://127.0.0.1:9100/v1/m%20x", body=b"c", match=exact)
    up = Upstream(pool_size=4, request_timeout=5)
    got = [
        up.send("POST", url, body, headers).content
        for url in (URL, URL + "?x=1%202", "http://127.0.0.1:9100/v1/m x")
    ]
    assert got == [b"a", b"b", b"c"]
    assert [c.request.body for c in responses.calls] == [body] * 3


@responses.activate
def test_status_and_content_type_come_back_unchanged() -> None:
    responses.post(URL, body=b"nope", status=418, content_type="text/x-teapot")
    up = Upstream(pool_size=4, request_timeout=5)
    resp = up.send("POST", URL, b"{}", {})
    assert resp.status_code == 418
    headers = dict(downstream_headers(resp))
    assert headers["Content-Type"] == "text/x-teapot"
    assert headers["X-Accel-Buffering"] == "no"


@responses.activate
def test_connection_refused_is_backend_unavailable() -> None:
    responses.post(URL, body=requests.ConnectionError("refused"))
    with pytest.raises(BackendUnavailable) as info:
        Upstream(pool_size=4, request_timeout=5).send("POST", URL, b"{}", {})
    assert info.value.status == 502


@responses.activate
def test_timeout_is_backend_timeout() -> None:
    responses.post(URL, body=requests.ReadTimeout("slow"))
    with pytest.raises(BackendTimeout) as info:
        Upstream(pool_size=4, request_timeout=5).send("POST", URL, b"{}", {})
    assert info.value.status == 504


def test_close_before_iteration_still_releases() -> None:
    class Resp:
        headers = {"content-type": "text/event-stream"}
        closed = False

        class raw:  # noqa: N801
            chunked = False
            length_remaining = 0

        def close(self) -> None:
            self.closed = True

    resp, lease = Resp(), FakeLease()
    RelayBody(resp, lease, "m").close()  # type: ignore[arg-type]
    assert resp.closed and lease.released == 1


class RawStub:
    chunked = False
    length_remaining = 10

    def __init__(self, headers: dict[str, str], error: Exception | None = None) -> None:
        self.headers = headers
        self._error = error

    def stream(self, *_a, **_k):  # noqa: ANN002, ANN003, ANN201
        if self._error is not None:
            raise self._error
        yield b"0123456789"


class RespStub:
    def __init__(self, raw: RawStub) -> None:
        self.raw = raw
        self.headers = {k.lower(): v for k, v in raw.headers.items()}
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_unusable_backend_headers_are_dropped() -> None:
    resp = RespStub(RawStub({"Content-Length": "2x", "X-Ok": "1", "X-Bad": "a\r\nb"}))
    assert dict(downstream_headers(resp)) == {"X-Ok": "1", "X-Accel-Buffering": "no"}  # type: ignore[arg-type]


def test_body_failing_before_its_first_byte_is_a_clean_502() -> None:
    from urllib3.exceptions import ProtocolError

    resp, lease = RespStub(RawStub({}, ProtocolError("connection reset"))), FakeLease()
    body = RelayBody(resp, lease, "m")  # type: ignore[arg-type]
    with pytest.raises(BackendUnavailable, match="failed before answering"):
        body.start()
    body.close()
    assert resp.closed and lease.released == 1


def test_body_timing_out_before_its_first_byte_is_a_504() -> None:
    from urllib3.exceptions import ReadTimeoutError

    resp = RespStub(RawStub({}, ReadTimeoutError(None, "/", "read timed out")))  # type: ignore[arg-type]
    with pytest.raises(BackendTimeout):
        RelayBody(resp, FakeLease(), "m").start()  # type: ignore[arg-type]


@responses.activate
def test_only_the_clients_headers_go_upstream_and_no_cookies_are_kept() -> None:
    responses.post(URL, body=b"{}", headers={"Set-Cookie": "sid=secret; Path=/"})
    up = Upstream(pool_size=4, request_timeout=5)
    up.send("POST", URL, b"{}", {"Content-Type": "application/json"}).close()
    up.send("POST", URL, b"{}", {"Content-Type": "application/json"}).close()
    sent = responses.calls[1].request.headers
    assert "Cookie" not in sent
    assert "python-requests" not in sent.get("User-Agent", "")
    assert "gzip" not in sent.get("Accept-Encoding", "")


def test_done_is_added_only_to_a_clean_event_stream_that_lacks_it() -> None:
    from urllib3.exceptions import ProtocolError

    class EndsOrFails(RawStub):
        def stream(self, *_a, **_k):  # noqa: ANN002, ANN003, ANN201
            yield b'data: {"choices": []}\n\n'
            if self._error is not None:
                raise self._error

    sse = {"Content-Type": "text/event-stream"}
    clean = RelayBody(RespStub(EndsOrFails(sse)), FakeLease(), "m", add_done=True)  # type: ignore[arg-type]
    assert clean.adds and list(clean)[-1] == b"data: [DONE]\n\n"
    cut = RespStub(EndsOrFails(sse, ProtocolError("reset")))
    last = list(RelayBody(cut, FakeLease(), "m", add_done=True))[-1]  # type: ignore[arg-type]
    assert b"backend_stream_error" in last and b"[DONE]" not in last
    plain = RelayBody(
        RespStub(RawStub({"Content-Type": "application/json"})), FakeLease(), "m", add_done=True
    )  # type: ignore[arg-type]
    assert not plain.adds and list(plain) == [b"0123456789"]
