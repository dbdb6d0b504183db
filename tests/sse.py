"""Reads a Server-Sent Events body into its `data:` payloads."""

from __future__ import annotations

import json


def parse_events(lines) -> list:
    """`data: {json}` lines -> decoded objects; `data: [DONE]` -> the string "[DONE]"."""
    events = []
    for line in lines:
        line = line.rstrip("\r")
        if not line.startswith("data:"):
            continue
        payload = line[len("data:") :].strip()
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def streamed_text(events: list, index: int = 0) -> str:
    return "".join(
        c["text"] for e in events if isinstance(e, dict) and "choices" in e for c in e["choices"] if c["index"] == index
    )
