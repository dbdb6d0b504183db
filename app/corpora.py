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

from starlette.concurrency import run_in_threadpool

from app.errors import InvalidInput, NotFound, TooLarge


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

    async def receive(self, chunks: AsyncIterator[bytes]) -> dict:
        """Writes the body to a temporary file as it arrives; keeps it only if it is a usable text."""
        self.root.mkdir(parents=True, exist_ok=True)
        corpus_id = uuid.uuid4().hex
        tmp = self.root / f".{corpus_id}.part"
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        size = chars = 0
        has_text = False
        try:
            with open(tmp, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise TooLarge(f"the corpus is larger than the limit of {self.max_bytes} bytes", "body")
                    try:
                        text = decoder.decode(chunk)
                    except UnicodeDecodeError as exc:
                        raise InvalidInput(
                            f"the corpus is not valid UTF-8 (byte {size - len(chunk) + exc.start})", "body"
                        ) from None
                    chars += len(text)
                    has_text = has_text or bool(text.strip())
                    await run_in_threadpool(f.write, chunk)
                try:
                    chars += len(decoder.decode(b"", final=True))
                except UnicodeDecodeError:
                    raise InvalidInput("the corpus is not valid UTF-8 (it ends inside a character)", "body") from None
            if not has_text:
                raise InvalidInput("the corpus is empty or only whitespace", "body")
            if chars < 3:
                raise InvalidInput("the corpus is too short to train on (at least 3 characters)", "body")
            info = {
                "corpus_id": corpus_id,
                "bytes": size,
                "chars": chars,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            os.replace(tmp, self.root / f"{corpus_id}.txt")
            (self.root / f"{corpus_id}.json").write_text(json.dumps(info))
            return info
        finally:
            tmp.unlink(missing_ok=True)
