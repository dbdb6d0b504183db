"""POST /corpora, GET /corpora, DELETE /corpora/{id}: training texts uploaded and streamed to disk."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from starlette.requests import ClientDisconnect

from app.api.deps import CorporaDep
from app.api.errors import error_response
from app.api.middleware import drain_body, drain_bound
from app.api.routing import StrictJSONRoute
from app.api.schemas import CorporaResponse, CorpusInfo, ErrorResponse
from app.errors import ServiceError

router = APIRouter(prefix="/corpora", tags=["training"], route_class=StrictJSONRoute)

# What app/service/corpora.py keeps: UTF-8 text of at least 3 characters, not all whitespace (the
# pattern: some character Python's str.strip() keeps; \s differs between regex dialects on \x1c-\x1f).
# Not `format: binary`, which says any bytes would do.
CORPUS_TEXT = {
    "type": "string",
    "minLength": 3,
    "pattern": r"[^\s\x1c-\x1f]",
    "description": "The UTF-8 text: at least 3 characters, not only whitespace.",
}
UPLOAD_BODY = {
    "required": True,
    "content": {
        "text/plain": {"schema": CORPUS_TEXT},
        "application/octet-stream": {"schema": CORPUS_TEXT},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": CORPUS_TEXT},
                "required": ["file"],
                "description": "The text as the part named `file` (or the first part with a filename); "
                "other parts are ignored.",
            },
            "encoding": {"file": {"contentType": "text/plain"}},
        },
    },
}


@router.post(
    "",
    status_code=201,
    response_model=CorpusInfo,
    responses={code: {"model": ErrorResponse} for code in (413, 415, 422)},
    summary="Upload a training text",
    openapi_extra={"requestBody": UPLOAD_BODY},
)
async def upload_corpus(request: Request, corpora: CorporaDep) -> CorpusInfo | Response:
    """Send the text as a file part (`curl -F file=@text.txt`) or as the raw body
    (`curl --data-binary @text.txt`; text/plain, application/octet-stream, the form type curl sends
    by default, or none; other types are 415). It is written to disk as it arrives, never held in
    memory whole; it must be UTF-8, not empty, and within the size limit (413 beyond). Train on it
    with `POST /train {"corpus_id": ...}`."""
    started = done = False

    async def body() -> AsyncIterator[bytes]:
        nonlocal started, done
        started = True
        while not done:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            done = not message.get("more_body", False)
            if message.get("body"):
                yield message["body"]

    try:
        info = await corpora.upload(request.headers.get("content-type"), body())
    except ServiceError as exc:
        if done:
            raise
        # read the rest of a refused body first: closing on a client still sending resets it
        # (a client waiting on 100-continue has sent nothing yet)
        if started or request.headers.get("expect", "").lower() != "100-continue":
            await drain_body(request.receive, drain_bound(corpora.max_bytes))
        return error_response(exc, headers={"Connection": "close"})
    return CorpusInfo(**info)


@router.get("", response_model=CorporaResponse, summary="Uploaded training texts")
def list_corpora(corpora: CorporaDep) -> CorporaResponse:
    return CorporaResponse(corpora=corpora.list())


@router.delete(
    "/{corpus_id}",
    status_code=204,
    responses={404: {"model": ErrorResponse}},
    summary="Delete an uploaded training text",
)
def delete_corpus(corpus_id: str, corpora: CorporaDep) -> Response:
    """Removes the text and its record; models trained on it stay."""
    corpora.delete(corpus_id)
    return Response(status_code=204)
