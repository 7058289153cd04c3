"""`clippy-rt serve` waits for replica ports that a stopped server's closed connections still
hold (TCP TIME_WAIT), and fails at once on a port that another program listens on. Real
sockets on loopback; no Ray."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from clippy_rt.errors import ServerError
from clippy_rt.serve import ServeOptions
from clippy_rt.serve.server import serve_until_stopped, wait_for_ports

HOST = "127.0.0.1"


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports that are free on loopback now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            first = probe.getsockname()[1]
        if first + count > 65535:
            continue
        held = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind((HOST, port))
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError("no consecutive free ports")


def _held(port: int) -> socket.socket:
    """A socket bound to ``port`` that does not listen: the port cannot be bound, and a
    connection to it is refused (as with a port held by TIME_WAIT connections)."""
    sock = socket.socket()
    sock.bind((HOST, port))
    return sock


def _options(port: int, replicas: int = 1) -> ServeOptions:
    return ServeOptions(model="demo", host=HOST, port=port, replicas=replicas)


def test_a_port_in_time_wait_is_waited_for_then_given_up_on():
    # What a server that just stopped leaves: it closed an accepted connection first, so that
    # connection sits in TIME_WAIT on the server's port, and nothing listens there any more.
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection((HOST, port))
        accepted, _ = listener.accept()
        accepted.close()
        client.recv(1)  # the server's FIN
        client.close()
    with pytest.raises(OSError):  # as Serve binds a replica's port
        socket.socket().bind((HOST, port))
    logged = []
    start = time.monotonic()
    with pytest.raises(ServerError, match=rf"port {port} on {HOST} did not come free in 0.5 s"):
        wait_for_ports(_options(port), threading.Event(), logged.append, wait_s=0.5)
    assert time.monotonic() - start >= 0.5
    assert len(logged) == 1 and f"port {port}" in logged[0] and "TIME_WAIT" in logged[0]


def test_a_held_port_that_comes_free_is_waited_for():
    port = _free_ports(1)
    sock = _held(port)
    timer = threading.Timer(0.6, sock.close)
    timer.start()
    logged = []
    start = time.monotonic()
    try:
        assert wait_for_ports(_options(port), threading.Event(), logged.append, wait_s=20) is True
    finally:
        timer.join()
    assert 0.5 <= time.monotonic() - start < 10
    assert len(logged) == 1 and "waiting" in logged[0]
    socket.socket().bind((HOST, port))  # really free


def test_every_replica_port_is_checked():
    port = _free_ports(3)
    sock = _held(port + 2)
    logged = []
    try:
        with pytest.raises(ServerError, match=rf"port {port + 2} "):
            wait_for_ports(_options(port, replicas=3), threading.Event(), logged.append, wait_s=0.3)
        assert wait_for_ports(_options(port, replicas=2), threading.Event(), logged.append, wait_s=0.3) is True
    finally:
        sock.close()


def test_free_ports_pass_at_once():
    port = _free_ports(2)
    logged = []
    start = time.monotonic()
    assert wait_for_ports(_options(port, replicas=2), threading.Event(), logged.append) is True
    assert time.monotonic() - start < 1 and logged == []


def test_a_port_another_program_listens_on_fails_at_once():
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()
        port = listener.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(ServerError, match=rf"port {port} on {HOST} is in use.*--port"):
            wait_for_ports(_options(port), threading.Event(), lambda text: None, wait_s=30)
        assert time.monotonic() - start < 5


def test_an_address_not_on_this_machine_fails_at_once():
    with pytest.raises(ServerError, match=r"cannot serve on 192\.0\.2\.1:"):
        wait_for_ports(ServeOptions(model="demo", host="192.0.2.1", port=_free_ports(1)), threading.Event(),
                       lambda text: None, wait_s=30)


def test_a_signal_while_waiting_stops_without_starting_ray(monkeypatch):
    import ray

    port = _free_ports(1)
    sock = _held(port)
    stop = threading.Event()
    threading.Timer(0.4, stop.set).start()
    started = []
    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: started.append(args))
    logged = []
    start = time.monotonic()
    try:
        assert serve_until_stopped(_options(port), stop=stop, log=logged.append) == 0
    finally:
        sock.close()
    assert time.monotonic() - start < 5
    assert started == []
    assert "waiting" in logged[0] and logged[-1] == "stopped"


def test_a_stop_while_waiting_returns_false_promptly():
    port = _free_ports(1)
    sock = _held(port)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    start = time.monotonic()
    try:
        assert wait_for_ports(_options(port), stop, lambda text: None, wait_s=30) is False
    finally:
        sock.close()
    assert time.monotonic() - start < 5


def test_all_interfaces_see_a_listener_on_loopback():
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(ServerError, match=rf"port {port} on 0\.0\.0\.0 is in use"):
            wait_for_ports(ServeOptions(model="demo", host="0.0.0.0", port=port), threading.Event(),
                           lambda text: None, wait_s=30)


def test_an_ipv6_host_is_checked_as_ipv6():
    try:
        listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        listener.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with listener:
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(ServerError, match=rf"port {port} on ::1 is in use"):
            wait_for_ports(ServeOptions(model="demo", host="::1", port=port), threading.Event(),
                           lambda text: None, wait_s=30)
        listener.close()
        assert wait_for_ports(ServeOptions(model="demo", host="::1", port=port), threading.Event(),
                              lambda text: None, wait_s=5) is True
