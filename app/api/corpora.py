"""POST /corpora, GET /corpora: training texts uploaded as a request body, streamed to disk."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.routing import StrictJSONRoute
from app.deps import CorporaDep
from app.schemas import CorporaResponse, CorpusInfo, ErrorResponse

router = APIRouter(prefix="/corpora", tags=["training"], route_class=StrictJSONRoute)


@router.post(
    "",
    status_code=201,
    response_model=CorpusInfo,
    responses={413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    summary="Upload a training text",
    openapi_extra={"requestBody": {"required": True, "content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def upload_corpus(request: Request, corpora: CorporaDep) -> CorpusInfo:
    """Send the text as the raw body (`curl --data-binary @file.txt`, any content type). It is
    written to disk as it arrives, never held in memory whole; it must be UTF-8, not empty, and
    within the size limit (413 beyond). Train on it with `POST /train {"corpus_id": ...}`."""
    return CorpusInfo(**await corpora.receive(request.stream()))


@router.get("", response_model=CorporaResponse, summary="Uploaded training texts")
def list_corpora(corpora: CorporaDep) -> CorporaResponse:
    return CorporaResponse(corpora=corpora.list())
