"""The backend port pool, with real sockets on loopback."""

from __future__ import annotations

import socket

import pytest

from dynllm.ports import NoFreePort, PortPool, port_is_free


def _listener() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_a_listening_port_is_taken_and_skipped() -> None:
    lst = _listener()
    port = lst.getsockname()[1]
    try:
        assert not port_is_free(port)
        pool = PortPool(port, port)
        with pytest.raises(NoFreePort):
            pool.reserve()
    finally:
        lst.close()
    assert port_is_free(port)
    assert PortPool(port, port).reserve() == port


def test_connections_left_in_time_wait_do_not_block_the_port() -> None:
    """A stopped backend closed its connections first: they linger in TIME_WAIT on its port."""
    lst = _listener()
    port = lst.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = lst.accept()
    conn.close()  # the server side closes first, so its end goes to TIME_WAIT
    client.recv(1)
    client.close()
    lst.close()
    with open("/proc/net/tcp") as f:  # state 06 is TIME_WAIT
        lingering = [ln for ln in f if f":{port:04X} " in ln and ln.split()[3] == "06"]
    assert lingering, "the test did not leave a TIME_WAIT connection behind"
    assert port_is_free(port)


def test_ports_are_handed_out_round_robin_and_once() -> None:
    pool = PortPool(47100, 47102)
    got = [pool.reserve(), pool.reserve(), pool.reserve()]
    assert sorted(got) == [47100, 47101, 47102]
    with pytest.raises(NoFreePort):
        pool.reserve()
    pool.release(got[0])
    assert pool.reserve() == got[0]
