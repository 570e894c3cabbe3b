"""Load generator for bench/run.py: one process, one thread, non-blocking keep-alive sockets.

It runs as its own process (``python bench/loadgen.py`` with a JSON spec on stdin, a JSON
result on stdout) so that its CPU time is separate from the orchestrator's and from the
servers'.  A single epoll loop drives every connection: no GIL contention between client
threads and no ``requests``/``http.client`` overhead in the hot path.  Responses are parsed
just enough to find their end (Content-Length or chunked framing) and to count
server-sent events (one per blank-line terminator); each recv is stamped with
``time.perf_counter()``.

Spec keys:
  host, port, path, body (str)   the request (always POST, HTTP/1.1, keep-alive)
  conns                          concurrent connections (each one request at a time)
  warmup, duration               seconds; only what completes (or, for events, arrives)
                                 inside [start+warmup, start+warmup+duration] counts
  max_requests                   stop after this many requests in all (optional)
  stagger                        seconds over which the connections' first requests are
                                 spread (streams not in lockstep)                     [0]
  drain                          after the window, let in-flight responses finish
                                 instead of cutting them (a cut stream is a client
                                 abort, which is not what is being measured)        [true]
  drain_timeout                  give up draining after this long: "stalled"          [30]
  gaps                           record inter-event gaps per stream (paced streams)
  cpu_pids {label: pid}          CPU seconds of these processes over the window
  rss_pids {label: pid}          VmRSS of these processes, sampled every 0.25 s, max kept
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import socket
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """utime + stime of one process, in seconds (its own threads, not its children)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Conn:
    """One keep-alive client connection and its incremental response parser."""

    __slots__ = (
        "lg",
        "sock",
        "buf",
        "state",
        "remaining",
        "sent_at",
        "first_at",
        "last_event_at",
        "events",
        "tail",
        "close_after",
        "got_bytes",
        "id",
    )

    def __init__(self, lg: LoadGen, cid: int) -> None:
        self.lg = lg
        self.id = cid
        self.sock: socket.socket | None = None

    def connect(self) -> None:
        s = socket.create_connection((self.lg.host, self.lg.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        self.sock = s
        self.lg.connections_opened += 1
        self.lg.sel.register(s, selectors.EVENT_READ, self)

    def drop(self) -> None:
        if self.sock is not None:
            self.lg.sel.unregister(self.sock)
            self.sock.close()
            self.sock = None

    def send_request(self) -> None:
        if self.sock is None:
            self.connect()
        self.buf = bytearray()
        self.state = "head"
        self.remaining = 0
        self.events = 0
        self.tail = b""
        self.close_after = False
        self.got_bytes = False
        self.first_at = 0.0
        self.last_event_at = 0.0
        self.sent_at = time.perf_counter()
        try:
            self.sock.sendall(self.lg.request)
        except OSError:  # the server closed the idle connection: reconnect once
            self.drop()
            self.connect()
            self.sock.sendall(self.lg.request)

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        now = time.perf_counter()
        if not data:
            if self.state == "eof":  # body delimited by the connection's end
                self.drop()
                self.lg.finished(self, now, ok=True)
                return
            if not self.got_bytes and self.state == "head":
                # closed by the server between requests (keep-alive refused): retry
                self.drop()
                self.lg.reconnects_after_close += 1
                self.send_request()
                return
            self.lg.errors += 1
            self.drop()
            self.lg.finished(self, now, ok=False)
            return
        if not self.got_bytes:
            self.got_bytes = True
            self.first_at = now
        self.buf += data
        self.parse(now)

    def body_data(self, chunk: bytes | bytearray, now: float) -> None:
        """Count server-sent events (each ends with a blank line) as body bytes arrive."""
        joined = self.tail + chunk
        n = joined.count(b"\n\n")
        self.tail = b"\n" if joined.endswith(b"\n") and not joined.endswith(b"\n\n") else b""
        if not n:
            return
        lg = self.lg
        if lg.t0 <= now <= lg.t1:
            lg.window_events += n
            if lg.want_gaps:
                if self.last_event_at:
                    lg.gaps.append(now - self.last_event_at)
                lg.gaps.extend([0.0] * (n - 1))  # arrived together with the first
            if not self.events:
                lg.ttft.append(now - self.sent_at)
        self.events += n
        self.last_event_at = now

    def parse(self, now: float) -> None:
        buf = self.buf
        pos = 0
        while True:
            st = self.state
            if st == "head":
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    break
                head = bytes(buf[pos:end]).decode("latin-1").split("\r\n")
                pos = end + 4
                status = int(head[0].split(" ", 2)[1])
                if status != 200:
                    self.lg.bad_status[str(status)] = self.lg.bad_status.get(str(status), 0) + 1
                hdr = {}
                for line in head[1:]:
                    k, _, v = line.partition(":")
                    hdr[k.strip().lower()] = v.strip().lower()
                self.close_after = hdr.get("connection") == "close"
                if "chunked" in hdr.get("transfer-encoding", ""):
                    self.state = "size"
                elif "content-length" in hdr:
                    self.remaining = int(hdr["content-length"])
                    self.state = "fixed"
                else:
                    self.state = "eof"
                    self.close_after = True
            elif st == "fixed":
                take = min(self.remaining, len(buf) - pos)
                if take:
                    self.body_data(bytes(buf[pos : pos + take]), now)
                    pos += take
                    self.remaining -= take
                if self.remaining:
                    break
                self.state = "done"
            elif st == "size":
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                size = int(bytes(buf[pos:end]).split(b";", 1)[0], 16)
                pos = end + 2
                if size == 0:
                    self.state = "trailer"
                else:
                    self.remaining = size
                    self.state = "data"
            elif st == "data":
                take = min(self.remaining, len(buf) - pos)
                if take:
                    self.body_data(bytes(buf[pos : pos + take]), now)
                    pos += take
                    self.remaining -= take
                if self.remaining:
                    break
                self.state = "crlf"
            elif st == "crlf":
                if len(buf) - pos < 2:
                    break
                pos += 2
                self.state = "size"
            elif st == "trailer":
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                line_empty = end == pos
                pos = end + 2
                if line_empty:
                    self.state = "done"
            elif st == "eof":
                if len(buf) > pos:
                    self.body_data(bytes(buf[pos:]), now)
                pos = len(buf)
                break
            if self.state == "done":
                del buf[:pos]
                self.lg.finished(self, now, ok=True)
                return
        del buf[:pos]


class LoadGen:
    def __init__(self, spec: dict) -> None:
        self.host = spec.get("host", "127.0.0.1")
        self.port = int(spec["port"])
        body = spec["body"].encode()
        self.request = (
            f"POST {spec.get('path', '/v1/chat/completions')} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Accept: */*\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.n_conns = int(spec.get("conns", 1))
        self.warmup = float(spec.get("warmup", 0.0))
        self.duration = float(spec.get("duration", 1.0))
        self.max_requests = spec.get("max_requests")
        self.want_gaps = bool(spec.get("gaps", False))
        self.stagger = float(spec.get("stagger", 0.0))
        self.drain = bool(spec.get("drain", True))
        self.drain_timeout = float(spec.get("drain_timeout", 30.0))
        self.cpu_pids = {k: int(v) for k, v in (spec.get("cpu_pids") or {}).items()}
        self.rss_pids = {k: int(v) for k, v in (spec.get("rss_pids") or {}).items()}
        self.sel = selectors.DefaultSelector()
        self.connections_opened = 0
        self.reconnects_after_close = 0
        self.errors = 0
        self.bad_status: dict[str, int] = {}
        self.latencies: list[float] = []
        self.ttfb: list[float] = []
        self.ttft: list[float] = []
        self.gaps: list[float] = []
        self.window_events = 0
        self.stream_events = 0  # events of responses wholly inside the window ...
        self.stream_time = 0.0  # ... and the sum of their durations (send to last byte)
        self.window_requests = 0
        self.total_requests = 0
        self.started = 0
        self.t0 = self.t1 = 0.0

    def finished(self, c: Conn, now: float, ok: bool) -> None:
        self.total_requests += 1
        if ok and self.t0 <= now <= self.t1:
            self.window_requests += 1
            if c.sent_at >= self.t0:  # latency only for requests wholly inside the window
                self.latencies.append(now - c.sent_at)
                self.ttfb.append(c.first_at - c.sent_at)
                self.stream_events += c.events
                self.stream_time += now - c.sent_at
        if c.close_after and c.sock is not None:
            c.drop()
        if now > self.t1 or (self.max_requests is not None and self.started >= self.max_requests):
            c.drop()  # a finished response: closing now cuts nothing
            return
        self.started += 1
        c.send_request()

    def run(self) -> dict:
        conns = [Conn(self, i) for i in range(self.n_conns)]
        start = time.perf_counter()
        self.t0 = start + self.warmup
        self.t1 = self.t0 + self.duration
        # conn i starts at start + i * stagger / conns, so streams are not in lockstep
        pending = [(start + i * self.stagger / self.n_conns, c) for i, c in enumerate(conns)]
        cpu0: dict[str, float] | None = None
        cpu1: dict[str, float] | None = None
        self_cpu0 = self_cpu1 = 0.0
        rss_max = dict.fromkeys(self.rss_pids, 0)
        next_rss = self.t0
        stalled = False
        sel = self.sel
        while True:
            now = time.perf_counter()
            while pending and pending[0][0] <= now and now < self.t1:
                _, c = pending.pop(0)
                if self.max_requests is None or self.started < self.max_requests:
                    self.started += 1
                    c.send_request()
            if cpu0 is None and now >= self.t0:
                cpu0 = {k: proc_cpu(p) for k, p in self.cpu_pids.items()}
                self_cpu0 = self_cpu()
            if self.rss_pids and self.t0 <= now <= self.t1 and now >= next_rss:
                for k, p in self.rss_pids.items():
                    rss_max[k] = max(rss_max[k], proc_rss_kb(p))
                next_rss = now + 0.25
            if cpu1 is None and now >= self.t1:
                cpu1 = {k: proc_cpu(p) for k, p in self.cpu_pids.items()}
                self_cpu1 = self_cpu()
                if not self.drain:
                    break
            if now >= self.t1 + self.drain_timeout:
                stalled = bool(sel.get_map())
                break
            if not sel.get_map() and (not pending or now >= self.t1):
                break
            wake = [self.t1 if cpu1 is None else self.t1 + self.drain_timeout]
            if cpu0 is None:
                wake.append(self.t0)
            if pending:
                wake.append(pending[0][0])
            if self.rss_pids and now < self.t1:
                wake.append(next_rss)
            for key, _ in sel.select(max(0.0, min(wake) - now)):
                key.data.on_readable()
        end = time.perf_counter()
        if cpu0 is None:
            cpu0 = {k: proc_cpu(p) for k, p in self.cpu_pids.items()}
            self_cpu0 = self_cpu()
        if cpu1 is None:
            cpu1 = {k: proc_cpu(p) for k, p in self.cpu_pids.items()}
            self_cpu1 = self_cpu()
        in_flight = sum(1 for c in conns if c.sock is not None)
        for c in conns:
            c.drop()
        window = max(1e-9, min(end, self.t1) - self.t0)
        return {
            "window_s": window,
            "requests": self.window_requests,
            "total_requests": self.total_requests,
            "events": self.window_events,
            "stream_events": self.stream_events,
            "stream_time": self.stream_time,
            "latencies": self.latencies,
            "ttfb": self.ttfb,
            "ttft": self.ttft,
            "gaps": self.gaps,
            "connections_opened": self.connections_opened,
            "reconnects_after_close": self.reconnects_after_close,
            "errors": self.errors,
            "bad_status": self.bad_status,
            "cut_in_flight": in_flight,
            "stalled": stalled,
            "cpu": {k: cpu1[k] - cpu0[k] for k in cpu1},
            "client_cpu": self_cpu1 - self_cpu0,
            "rss_kb": rss_max,
            "elapsed_s": end - start,
        }


def main() -> int:
    spec = json.loads(sys.stdin.read())
    result = LoadGen(spec).run()
    sys.stdout.write(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
