"""Recurrent states after long prefixes, kept so that a prefix sent again is not read again.

A recurrent model's whole memory of a text is its state: a few KB, where a transformer keeps a
KV cache that grows with the text. After a long prefix is read, its state is kept here (least
recently used leave first, within a byte budget); a later prefix that starts with a kept one
(the same document, a chat history that grew) resumes from the longest such state. Entries are
namespaced: a namespace is one model at one precision for one tenant (API key), so no timing
tells one tenant what another sent.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CachedState:
    chars: int  # how many characters of the prefix the state has read
    state: torch.Tensor  # (R, 1, H)


class PrefixCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[object, str], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @staticmethod
    def _size(text: str, state: torch.Tensor) -> int:
        return len(text.encode("utf-8", "surrogatepass")) + state.numel() * state.element_size()

    def longest(self, namespace: object, text: str) -> CachedState | None:
        """The kept state of the longest text in this namespace that `text` starts with."""
        if not self.enabled:
            return None
        with self._lock:
            best: tuple[object, str] | None = None
            for key in self._entries:
                if key[0] == namespace and text.startswith(key[1]) and (best is None or len(key[1]) > len(best[1])):
                    best = key
            if best is None:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end(best)
            return CachedState(len(best[1]), self._entries[best])

    def put(self, namespace: object, text: str, state: torch.Tensor) -> None:
        """Keeps the state after reading `text` (a copy: the caller's tensor may change)."""
        size = self._size(text, state)
        if not self.enabled or size > self.max_bytes:
            return
        with self._lock:
            key = (namespace, text)
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= self._size(text, old)
            self._entries[key] = state.detach().clone()
            self.bytes += size
            while self.bytes > self.max_bytes:
                (_, evicted_text), evicted = self._entries.popitem(last=False)
                self.bytes -= self._size(evicted_text, evicted)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)
