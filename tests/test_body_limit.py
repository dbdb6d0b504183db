"""A refused oversized body still gets its 413 over a real socket: no reset while the client is sending."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from app.devserver import Server

pytestmark = pytest.mark.server

TWO_MB = 2 * 2**20
PIECE = 64 * 2**10


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("body_limit")) as s:
        yield s


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Reads one whole response up to the server's close; raises on a reset or a cut-off body."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    assert len(body) == int(headers["content-length"]), data
    return int(status_line.split()[1]), headers, body


def send_slowly(server: Server, head: bytes, pieces: list[bytes]) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        try:
            sock.sendall(head)
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(0.005)  # a client on a slower link: still sending when the limit is passed
            return read_response(sock)
        except ConnectionError as exc:
            pytest.fail(f"the connection was reset instead of answered: {exc!r}")


def assert_envelope(body: bytes) -> None:
    assert json.loads(body) == {
        "error": {"type": "too_large", "message": "request body over the limit of 1000000 bytes", "param": "body"}
    }


def test_a_slow_oversized_body_gets_the_whole_413(server):
    head = (
        f"POST /complete HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {TWO_MB}\r\nConnection: close\r\n\r\n"
    ).encode()
    status, headers, body = send_slowly(server, head, [b"x" * PIECE] * (TWO_MB // PIECE))
    assert status == 413 and headers["connection"] == "close"
    assert_envelope(body)


def test_a_chunked_oversized_body_gets_the_whole_413(server):
    head = (
        b"POST /complete HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    chunk = f"{PIECE:x}\r\n".encode() + b"x" * PIECE + b"\r\n"
    status, _, body = send_slowly(server, head, [chunk] * (TWO_MB // PIECE) + [b"0\r\n\r\n"])
    assert status == 413
    assert_envelope(body)


def test_a_hundred_fast_oversized_bodies_each_get_their_413(server):
    payload = b"x" * TWO_MB
    failures = []
    for i in range(100):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.request(
                "POST", "/complete", body=payload, headers={"Content-Type": "application/json", "Connection": "close"}
            )
            r = conn.getresponse()
            body = r.read()
            if r.status != 413 or json.loads(body)["error"]["type"] != "too_large":
                failures.append((i, r.status, body[:200]))
        except OSError as exc:
            failures.append((i, repr(exc)))
        finally:
            conn.close()
    assert not failures, failures
