"""deploy/haproxy.cfg, as compose mounts it, run by the haproxy binary in front of real replicas.

Three `charrnn serve` processes on one model store, on 127.0.0.1-3 and one port (as containers on
one network), found through a DNS stub as compose's DNS finds them. The tests run in file order;
the last one kills a replica.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter

import httpx
import pytest

from tests.conftest import wait_for
from tests.deploy.lb import HAPROXY, Balancer, Blackhole, DnsStub, Replica, common_free_port

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(HAPROXY is None, reason="no haproxy binary (.ci/run installs Debian's haproxy package)"),
]

HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
BLACKHOLE = "127.0.0.4"
MAX_NEW_CHARS = 1_000_000  # a stream long enough to still be running when its first events arrive (~1 s)
ENV = {
    "CHARRNN_TORCH_THREADS": "1",
    "CHARRNN_DECODE_WORKERS": "1",
    "CHARRNN_LOG_JSON": "true",  # request ids in the replicas' log lines
    "CHARRNN_MAX_NEW_CHARS": str(MAX_NEW_CHARS),
}
GOOD = {"prefix": "good", "max_new_chars": 11}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    store = tmp_path_factory.mktemp("model_store")
    try:
        port = common_free_port([*HOSTS, BLACKHOLE])
    except OSError as exc:  # loopback addresses beyond 127.0.0.1 (Linux has all of 127/8)
        pytest.skip(f"cannot bind {HOSTS[1:]}: {exc}")
    # the first trains and saves the default model; the others then load it
    first = Replica(store, HOSTS[0], port, ENV).start()
    started = [first]
    try:
        first.wait_ready()
        started += [Replica(store, host, port, ENV).start() for host in HOSTS[1:]]
        for replica in started:
            replica.wait_ready()
        yield started
    finally:
        for replica in started:
            replica.stop()


@pytest.fixture(scope="module")
def balancer(replicas, tmp_path_factory):
    with DnsStub(HOSTS) as dns, Balancer(tmp_path_factory.mktemp("haproxy"), dns, replicas[0].port) as lb:
        addresses = {f"{r.host}:{r.port}" for r in replicas}
        wait_for(lambda: lb.up() == addresses, timeout=15, interval=0.1)
        yield lb


def complete(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/complete", json={**GOOD, **body})


def test_requests_spread_over_every_replica(replicas, balancer):
    before = [r.requests_served("/complete") for r in replicas]
    with httpx.Client(base_url=balancer.url, timeout=30) as client:  # one kept-alive client connection
        answers = [complete(client) for _ in range(30)]
    assert [r.status_code for r in answers] == [200] * 30
    assert {r.json()["choices"][0]["text"] for r in answers} == {"good i am fine "}
    served = [r.requests_served("/complete") - b for r, b in zip(replicas, before, strict=True)]
    print(f"\n30 requests through the balancer, served per replica: {served}")
    assert sum(served) == 30
    assert all(n >= 5 for n in served), served  # leastconn: round robin among equally idle replicas


def test_request_ids_pass_through_and_are_made_where_missing(replicas, balancer):
    with httpx.Client(base_url=balancer.url, timeout=30) as client:
        made = client.post("/complete", json=GOOD)
        invalid = client.post("/complete", json=GOOD, headers={"X-Request-ID": "no spaces allowed"})
        given = client.post("/complete", json=GOOD, headers={"X-Request-ID": "client-id-42"})
    assert given.headers["x-request-id"] == "client-id-42"
    # the balancer's own UUID (the service makes dashless hex ids), echoed by the replica
    for answer in (made, invalid):
        rid = answer.headers["x-request-id"]
        assert len(rid) == 36 and rid.count("-") == 4, rid
    # the same id in the balancer's log line and in the replica's
    wait_for(lambda: "id=client-id-42" in balancer.log(), timeout=5)
    assert any('"request_id": "client-id-42"' in r.log() for r in replicas)
    assert f"id={made.headers['x-request-id']}" in balancer.log()


def test_body_limits_are_the_services(replicas, balancer):
    with httpx.Client(base_url=balancer.url, timeout=60) as client:
        # over CHARRNN_MAX_BODY_BYTES (1,000,000): the replica's own 413
        big = json.dumps({"prefix": "x" * 1_000_001, "max_new_chars": 1})
        r = client.post("/complete", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.headers["server"] == "uvicorn"
        assert r.json()["error"]["type"] == "too_large"
        # an upload of 3 MB streams through to /corpora (bounded there at CHARRNN_MAX_CORPUS_BYTES)
        r = client.post("/corpora", content=b"to be or not to be\n" * 160_000, headers={"content-type": "text/plain"})
        assert r.status_code == 201, r.text
        assert r.json()["chars"] == 19 * 160_000
    # a body declared over the largest any route takes (CHARRNN_MAX_TRAIN_BODY_BYTES): refused at
    # the door, in the service's envelope, before a byte of it is sent
    with socket.create_connection(("127.0.0.1", balancer.port), timeout=10) as s:
        s.sendall(
            b"POST /train HTTP/1.1\r\nHost: lb\r\nContent-Type: application/json\r\nContent-Length: 210000001\r\n\r\n"
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(body)["error"] == {
        "type": "too_large",
        "message": "request body over the limit of 210000000 bytes",
        "param": "body",
    }


def test_a_stream_arrives_event_by_event(replicas, balancer):
    def generated() -> float:
        total = 0.0
        for r in replicas:
            for line in httpx.get(r.url + "/metrics", timeout=5).text.splitlines():
                if line.startswith("charrnn_generated_chars_total "):
                    total += float(line.split()[1])
        return total

    base = generated()
    body = {"prefix": "good", "max_new_chars": MAX_NEW_CHARS, "temperature": 0.8, "stream": True}
    seen_at = []
    with (
        httpx.Client(base_url=balancer.url, timeout=30) as client,
        client.stream("POST", "/complete", json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                assert "finish_reason" not in line or '"finish_reason":null' in line
                seen_at.append(generated() - base)
                if len(seen_at) == 5:
                    break
    # each of the first events came while the replica was still generating: not held back to the end
    print(f"\nchars generated when each of the first 5 events arrived: {seen_at} (of {MAX_NEW_CHARS})")
    assert all(n < MAX_NEW_CHARS for n in seen_at), seen_at
    # the client's close passed through the balancer and stopped the generation
    settled = wait_for(lambda: (g := generated()) == generated() and g, timeout=10, interval=0.2)
    assert settled - base < MAX_NEW_CHARS


def test_only_requests_safe_to_replay_are_retried(replicas, tmp_path_factory):
    """A replica that reads a request and closes without answering: GETs and the read-only POSTs
    are sent again to another replica; POST /train is not (the client gets 502, once)."""
    port = replicas[0].port
    live = replicas[:2]
    with (
        Blackhole(BLACKHOLE, port) as hole,
        DnsStub([BLACKHOLE, *(r.host for r in live)]) as dns,
        Balancer(tmp_path_factory.mktemp("haproxy"), dns, port) as lb,
    ):
        addresses = {f"{h}:{port}" for h in [BLACKHOLE, *(r.host for r in live)]}
        wait_for(lambda: lb.up() == addresses, timeout=15, interval=0.1)
        trains_before = sum(r.requests_served("/train") for r in live)
        with httpx.Client(base_url=lb.url, timeout=30) as client:
            reads = [client.get("/models") for _ in range(6)] + [complete(client) for _ in range(6)]
            reads_seen = len(hole.received)
        # each on a connection of its own: on a kept-alive one, HAProxy answers a request that is not
        # replayed with a closed connection instead of a 502 (HTTP's signal that a client may retry
        # it if, and only if, it is idempotent)
        trains = []
        for i in range(6):
            with httpx.Client(base_url=lb.url, timeout=30) as client:
                body = {"name": f"lb{i}", "sentences": ["good night moon"], "epochs": 1}
                trains.append(client.post("/train", json=body))
        backend = lb.backend()
    statuses = Counter(r.status_code for r in trains)
    lost_trains = [r for r in trains if r.status_code == 502]
    trains_in_hole = [p for m, p in hole.received[reads_seen:] if m == "POST"]
    trains_at_replicas = sum(r.requests_served("/train") for r in live) - trains_before
    print(
        f"\nreads: 12 sent, {reads_seen} landed on the closing replica and were retried, all answered "
        f"{sorted({r.status_code for r in reads})}; POST /train: 6 sent, statuses {dict(statuses)}, "
        f"{len(trains_in_hole)} reached the closing replica (once each), {trains_at_replicas} the live ones; "
        f"HAProxy retries {backend['wretr']}, redispatches {backend['wredis']}"
    )
    assert [r.status_code for r in reads] == [200] * 12
    assert reads_seen >= 2  # round robin: some reads did meet the closing replica...
    assert {p for _, p in hole.received[:reads_seen]} <= {"/models", "/complete"}
    # ...and POST /train met it too, was not sent again there or anywhere: one attempt, one 502
    assert len(lost_trains) >= 1
    assert trains_in_hole == ["/train"] * len(lost_trains)
    assert trains_at_replicas == 6 - len(lost_trains)
    assert lost_trains[0].json()["error"]["type"] == "bad_gateway"
    assert set(statuses) <= {202, 409, 502}


def test_a_replica_killed_under_load_loses_no_request(replicas, balancer):
    """SIGKILL one of three replicas while 4 clients send 240 requests: none fails. Requests not yet
    sent to it are sent elsewhere (connection refused -> retried on another replica); the few it
    had read when it died are retried elsewhere too, all of them being safe to replay."""
    victim = replicas[2]
    total, kill_after = 240, 80
    results: list[tuple[str, int, str]] = []
    lock = threading.Lock()
    sent = 0

    def client_loop():
        nonlocal sent
        with httpx.Client(base_url=balancer.url, timeout=30) as client:
            while True:
                with lock:
                    if sent >= total:
                        return
                    sent += 1
                    i = sent
                if i % 3:
                    r = complete(client)
                    results.append(("complete", r.status_code, r.json().get("choices", [{}])[0].get("text", "")))
                else:
                    r = client.get("/v1/models")
                    results.append(("models", r.status_code, ""))

    before = {addr: int(row["hrsp_2xx"]) for addr, row in balancer.servers().items()}
    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(results) >= kill_after, timeout=60)
        victim.kill()
    finally:
        for t in threads:
            t.join()
    after = balancer.servers()
    served = {addr: int(row["hrsp_2xx"]) - before.get(addr, 0) for addr, row in after.items()}
    failures = [r for r in results if r[1] != 200 or (r[0] == "complete" and r[2] != "good i am fine ")]
    backend = balancer.backend()
    print(
        f"\n{len(results)} requests, 4 clients, replica {victim.host} killed after {kill_after}: "
        f"answered per replica {served}, failures {len(failures)}, "
        f"HAProxy retries {backend['wretr']}, redispatches {backend['wredis']}"
    )
    assert len(results) == total
    assert failures == []
    victim_addr = f"{victim.host}:{victim.port}"
    assert served[victim_addr] > 0  # it did serve before it died
    survivors = [n for a, n in served.items() if a != victim_addr]
    assert sum(survivors) == total - served[victim_addr] and min(survivors) > 0
    assert not after[victim_addr]["status"].startswith("UP")  # taken out
