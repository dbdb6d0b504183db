"""GET /metrics: Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import ServiceDep
from app.api.routing import StrictJSONRoute

router = APIRouter(tags=["health"], route_class=StrictJSONRoute)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(service: ServiceDep) -> Response:
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
