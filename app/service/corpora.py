"""Uploaded training texts: streamed to disk with a size limit, checked to be UTF-8 on the way."""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from app.errors import InvalidInput, NotFound, TooLarge, UnsupportedMediaType

# the raw body is the text; curl --data-binary sends the form type, curl -T none
RAW_TYPES = ("text/plain", "application/octet-stream", "application/x-www-form-urlencoded", "")
ACCEPTED = (
    "text/plain, application/octet-stream or application/x-www-form-urlencoded (the raw body, as "
    "curl --data-binary @text.txt sends it), or multipart/form-data with a file part (curl -F file=@text.txt)"
)
# room for a multipart body's boundaries, part headers and small fields besides the text itself
MULTIPART_SLACK = 64 * 2**10


class CorpusStore:
    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes

    def path(self, corpus_id: str) -> Path:
        path = self.root / f"{corpus_id}.txt"
        if len(corpus_id) != 32 or not all(c in "0123456789abcdef" for c in corpus_id) or not path.is_file():
            raise NotFound(f"no corpus {corpus_id!r}; upload one with POST /corpora", "corpus_id")
        return path

    def info(self, corpus_id: str) -> dict:
        self.path(corpus_id)
        return json.loads((self.root / f"{corpus_id}.json").read_text())

    def list(self) -> list[dict]:
        if not self.root.is_dir():
            return []
        out = []
        for meta in sorted(self.root.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                out.append(json.loads(meta.read_text()))
        return out

    def delete(self, corpus_id: str) -> None:
        # the metadata first: a text without it is not listed, and is replaced by no upload
        path = self.path(corpus_id)
        (self.root / f"{corpus_id}.json").unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    async def upload(self, content_type: str | None, chunks: AsyncIterator[bytes]) -> dict:
        """Stores a request body: the raw text, or the file part of a multipart/form-data body."""
        media_type, params = parse_options_header(content_type or "")
        if media_type == b"multipart/form-data":
            return await self.receive_multipart(params.get(b"boundary", b""), chunks)
        if media_type.decode("latin-1") not in RAW_TYPES:
            raise UnsupportedMediaType(
                f"cannot take a corpus as {media_type.decode('latin-1')}; send it as {ACCEPTED}", "content-type"
            )
        return await self.receive(chunks)

    async def receive(self, chunks: AsyncIterator[bytes]) -> dict:
        """Writes the body to a temporary file as it arrives; keeps it only if it is a usable text."""
        with self._draft("body") as draft:
            async for chunk in chunks:
                await draft.write(chunk)
            return self._keep(draft)

    async def receive_multipart(self, boundary: bytes, chunks: AsyncIterator[bytes]) -> dict:
        """Writes the first file part (one with a filename, or the part named `file`) as it arrives."""
        if not boundary:
            raise InvalidInput("a multipart/form-data body needs a boundary in its Content-Type", "file")
        with self._draft("file") as draft:
            reader = _PartReader(boundary)
            total = 0
            async for chunk in chunks:
                total += len(chunk)
                if total > self.max_bytes + MULTIPART_SLACK:
                    raise TooLarge(f"the upload is larger than the limit of {self.max_bytes} bytes", "file")
                for data in reader.feed(chunk):
                    await draft.write(data)
            if not reader.ended:
                raise InvalidInput("the multipart body ends before its closing boundary", "file")
            if not reader.chosen:
                raise InvalidInput(
                    "the multipart body has no part named 'file' (nor one with a filename); "
                    "send the text as a part named 'file'",
                    "file",
                )
            return self._keep(draft)

    @contextlib.contextmanager
    def _draft(self, param: str):
        self.root.mkdir(parents=True, exist_ok=True)
        draft = _Draft(self.root / f".{uuid.uuid4().hex}.part", self.max_bytes, param)
        try:
            with open(draft.path, "wb") as draft.file:
                yield draft
        finally:
            draft.path.unlink(missing_ok=True)

    def _keep(self, draft: _Draft) -> dict:
        draft.finish()
        corpus_id = uuid.uuid4().hex
        info = {
            "corpus_id": corpus_id,
            "bytes": draft.size,
            "chars": draft.chars,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        draft.file.close()
        os.replace(draft.path, self.root / f"{corpus_id}.txt")
        (self.root / f"{corpus_id}.json").write_text(json.dumps(info))
        return info


class _Draft:
    """A text being written to a temporary file: its size limit and UTF-8 checked as it arrives."""

    def __init__(self, path: Path, max_bytes: int, param: str):
        self.path = path
        self.max_bytes = max_bytes
        self.param = param  # the field the errors name
        self.file: BinaryIO
        self._reset()

    def _reset(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.size = self.chars = 0
        self.has_text = False

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise TooLarge(f"the corpus is larger than the limit of {self.max_bytes} bytes", self.param)
        try:
            text = self.decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"the corpus is not valid UTF-8 (byte {self.size - len(chunk) + exc.start})", self.param
            ) from None
        self.chars += len(text)
        self.has_text = self.has_text or bool(text.strip())
        await run_in_threadpool(self.file.write, chunk)

    def finish(self) -> None:
        try:
            self.chars += len(self.decoder.decode(b"", final=True))
        except UnicodeDecodeError:
            raise InvalidInput("the corpus is not valid UTF-8 (it ends inside a character)", self.param) from None
        if not self.has_text:
            raise InvalidInput("the corpus is empty or only whitespace", self.param)
        if self.chars < 3:
            raise InvalidInput("the corpus is too short to train on (at least 3 characters)", self.param)


class _PartReader:
    """Streams a multipart/form-data body, passing on the data of one part.

    The part taken is the first with a filename or named `file`; other parts (form fields) are
    skipped. A body with no such part is refused: the API schema says a part named `file`.
    """

    def __init__(self, boundary: bytes):
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )
        self.chosen = False  # whether a file part has been found (and is being kept)
        self.ended = False
        self._events: list[bytes] = []
        self._taking = False
        self._headers: dict[bytes, bytes] = {}
        self._field = self._value = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Parses a piece of the body; returns the file's data in it, in order."""
        if self.ended:
            return []  # what follows the closing boundary is an epilogue, ignored by the standard
        try:
            self.parser.write(chunk)
        except MultipartParseError as exc:
            raise InvalidInput(f"the multipart body is malformed: {exc}", "file") from None
        events, self._events = self._events, []
        return events

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        is_file = b"filename" in options or options.get(b"name") == b"file"
        if is_file and not self.chosen:
            self.chosen = self._taking = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._taking:
            self._events.append(data[start:end])

    def _part_end(self) -> None:
        self._taking = False

    def _end(self) -> None:
        self.ended = True
