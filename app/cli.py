"""The `charrnn` command: `charrnn serve` starts the HTTP service."""

from __future__ import annotations

import argparse
import logging
import sys

from app.config import get_settings
from app.lm.device import DeviceUnavailable, resolve_device

log = logging.getLogger("app")


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # fail before uvicorn starts, with one line rather than a lifespan traceback
        resolve_device(settings.device)
    except DeviceUnavailable as exc:
        log.error("cannot start: CHARRNN_DEVICE=%s: %s", settings.device, exc)
        return 2
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="charrnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the HTTP service")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds to let requests finish on SIGTERM")
    p.set_defaults(func=serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
