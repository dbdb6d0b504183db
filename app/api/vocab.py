"""GET /vocab: the active model's characters."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ReadyServiceDep
from app.api.routing import StrictJSONRoute
from app.api.schemas import VocabResponse

router = APIRouter(tags=["models"], route_class=StrictJSONRoute)


@router.get("/vocab", response_model=VocabResponse, summary="The active model's vocabulary")
def vocab(service: ReadyServiceDep) -> VocabResponse:
    loaded = service.models.active
    v = loaded.vocab
    return VocabResponse(model=loaded.name, size=v.size, unk_index=v.unk_index, chars=v.index_order())
