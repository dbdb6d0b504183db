"""deploy/haproxy.cfg run for real: a DNS stub, replicas on 127.0.0.x and the HAProxy process."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Self

import httpx

from app.devserver import ROOT, Server, free_port

CONFIG = ROOT / "deploy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or next(
    (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None
)
NAME = "charrnn.test"  # the replicas' DNS name, as compose's service name "charrnn"


class SocketThread:
    """A socket served by a daemon thread (`_serve`, which returns once `_stop` is set) for the
    duration of a with-block; the socket is closed after."""

    sock: socket.socket

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def _serve(self) -> None:
        raise NotImplementedError


class DnsStub(SocketThread):
    """Answers A queries for NAME with the addresses in self.addresses (Docker's DNS does the same
    for a compose service: one A record per replica); NXDOMAIN for any other name."""

    def __init__(self, addresses: list[str]):
        self.addresses = list(addresses)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        super().__init__()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self.sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            answer = self.answer(query)
            if answer:
                self.sock.sendto(answer, peer)

    def answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        qid, flags, qdcount = struct.unpack(">HHH", query[:6])
        if qdcount != 1:
            return None
        labels, pos = [], 12
        while pos < len(query) and query[pos]:
            labels.append(query[pos + 1 : pos + 1 + query[pos]].decode("ascii", "replace").lower())
            pos += 1 + query[pos]
        qtype = struct.unpack(">H", query[pos + 1 : pos + 3])[0]
        question = query[12 : pos + 5]
        known = ".".join(labels) == NAME
        records = [socket.inet_aton(a) for a in self.addresses] if known and qtype == 1 else []
        rcode = 0 if known else 3
        header = struct.pack(">HHHHHH", qid, 0x8400 | (flags & 0x0100) | 0x0080 | rcode, 1, len(records), 0, 0)
        answers = b"".join(struct.pack(">HHHIH", 0xC00C, 1, 1, 1, 4) + r for r in records)
        return header + question + answers


def common_free_port(hosts: list[str]) -> int:
    """A port free on every one of these loopback addresses (replicas share a port, as containers do)."""
    for _ in range(50):
        port = free_port()
        socks = []
        try:
            for host in hosts:
                s = socket.socket()
                socks.append(s)
                s.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise OSError(f"no port free on all of {hosts}")


class Replica(Server):
    """`charrnn serve` on host:port (app/devserver.py's Server, on any loopback address)."""

    def __init__(self, store: Path, host: str, port: int, env: dict[str, str]):
        super().__init__(store, env, host=host, port=port)

    def start(self, timeout: float = 60.0) -> Replica:  # started here, waited on with wait_ready()
        self.launch()
        return self

    def requests_served(self, route: str, method: str = "POST") -> int:
        """This replica's own count of requests to a route (its Prometheus counter), any status."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            labels = line.startswith("charrnn_http_requests_total{") and f'route="{route}"' in line
            if labels and f'method="{method}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return int(total)


class Balancer:
    """deploy/haproxy.cfg, unchanged, run by the haproxy binary with the addresses in its environment."""

    def __init__(self, workdir: Path, dns: DnsStub, backend_port: int):
        self.port, self.stats_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "LB_BIND": f"127.0.0.1:{self.port}",
            "LB_STATS_BIND": f"127.0.0.1:{self.stats_port}",
            "LB_BACKEND": f"{NAME}:{backend_port}",
            "LB_DNS": dns.address,
        }
        self.log_path = Path(workdir) / f"haproxy-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Balancer:
        assert HAPROXY is not None
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in __exit__
        # -db: foreground, no daemon; the config file exactly as compose mounts it
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(CONFIG)], env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while True:  # listening once the stats port answers
            try:
                self.stats()
                return self
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"haproxy did not start:\n{self.log()}") from None
                time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stats(self) -> list[dict[str, str]]:
        """HAProxy's stats, one row per frontend, backend and server (the `show stat` CSV)."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"haproxy exited:\n{self.log()}")
        text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5).text
        return list(csv.DictReader(io.StringIO(text.lstrip("# "))))

    def servers(self) -> dict[str, dict[str, str]]:
        """The backend's servers that DNS filled in, by address (host:port)."""
        return {
            row["addr"]: row
            for row in self.stats()
            if row["pxname"] == "replicas" and row["svname"] not in ("BACKEND", "FRONTEND") and row["addr"]
        }

    def backend(self) -> dict[str, str]:
        return next(r for r in self.stats() if r["pxname"] == "replicas" and r["svname"] == "BACKEND")

    def up(self) -> set[str]:
        return {addr for addr, row in self.servers().items() if row["status"] == "UP"}


class Blackhole(SocketThread):
    """A replica that passes the health check (GET /ready -> 200) but reads every other request whole
    and closes the connection without a byte of answer, as a replica killed mid-request does.
    self.received lists the (method, path) of those requests, one entry per attempt."""

    def __init__(self, host: str, port: int):
        self.received: list[tuple[str, str]] = []
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(0.2)
        super().__init__()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        method, path = head.split(b" ", 2)[:2]
        if method == b"GET" and path == b"/ready":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            return
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")[1:]
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        self.received.append((method.decode(), path.decode()))
        # closing now, the request read and nothing answered: HAProxy sees an empty response
