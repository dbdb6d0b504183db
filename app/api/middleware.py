"""Per-request bookkeeping: a request id (X-Request-ID in, or made), one log line, Prometheus counters."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response
from app.errors import TooLarge
from app.metrics import Metrics

log = logging.getLogger("app.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp, metrics_of) -> None:
        self.app = app
        self.metrics_of = metrics_of  # () -> Metrics | None: the running service's, once started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            metrics: Metrics | None = self.metrics_of()
            if metrics is not None:
                metrics.requests.labels(template, scope["method"], str(status)).inc()
                metrics.latency.labels(template).observe(seconds)
            log.info(
                "%s %s %s %.1fms",
                scope["method"],
                scope["path"],
                status,
                seconds * 1000,
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": template,
                    "status": status,
                    "ms": round(seconds * 1000, 2),
                    "client": (scope.get("client") or ("", 0))[0],
                },
            )


class BodyLimitMiddleware:
    """Refuses request bodies over a size limit with 413, before the endpoint reads them whole.

    Training requests may carry a corpus and get a larger limit; /corpora uploads stream to disk
    and are bounded there. The rest of a refused body is read and dropped (within a bound) before
    the 413 goes out: a server that closes while the client is still sending makes the client's
    kernel see a reset instead of the answer.
    """

    def __init__(self, app: ASGIApp, default_limit: int, large_limit: int, large_prefixes=("/train",)) -> None:
        self.app = app
        self.default_limit = default_limit
        self.large_limit = large_limit
        self.large_prefixes = large_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/corpora"):
            await self.app(scope, receive, send)
            return
        limit = self.large_limit if scope["path"].startswith(self.large_prefixes) else self.default_limit
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            # a client waiting on 100-continue has sent nothing; one that sends more than the
            # bound would be cut off mid-body whatever we read first
            if headers.get(b"expect", b"").lower() != b"100-continue" and int(declared) <= drain_bound(limit):
                await drain_body(receive, drain_bound(limit))
            await _too_large(scope, receive, send, limit)
            return
        seen = 0
        started = refused = False

        async def counting_receive() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit and not started:
                    # answer now; the endpoint then sees a client that went away
                    refused = True
                    if message.get("more_body", False):
                        await drain_body(receive, drain_bound(limit) - seen)
                    await _too_large(scope, receive, send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 has been sent; whatever the endpoint says after is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception:
            if not refused:
                raise


DRAIN_MAX_BYTES = 64 * 2**20
DRAIN_SECONDS = 3.0


def drain_bound(limit: int) -> int:
    """How much of a refused body is read and dropped: 4 times its limit, at most 64 MiB."""
    return min(4 * limit, DRAIN_MAX_BYTES)


async def drain_body(receive: Receive, max_bytes: int, seconds: float = DRAIN_SECONDS) -> bool:
    """Reads and drops the rest of a request body; False if it went past max_bytes or seconds.

    Call it before sending the response: once a response is complete, the server's receive()
    answers http.disconnect and the unread rest stays in the socket.
    """
    read = 0
    try:
        async with asyncio.timeout(seconds):
            while read <= max_bytes:
                message = await receive()
                if message["type"] != "http.request":
                    return False  # the client has gone
                read += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return True
    except TimeoutError:
        pass
    return False


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    # Connection: close, as the body may not have been read to its end
    response = error_response(
        TooLarge(f"request body over the limit of {limit} bytes", "body"), headers={"Connection": "close"}
    )
    await response(scope, receive, send)
