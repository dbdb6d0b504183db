"""Character vocabulary: characters <-> ids, with a reserved UNK id for anything unseen."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from itertools import repeat

UNK_INDEX = 0


class Vocab:
    """Maps characters to ids. Id 0 is UNK; known characters follow in sorted order.

    Sorting (rather than the tutorial's set order) makes the ids, and so a trained model,
    reproducible from the same text.
    """

    unk_index = UNK_INDEX

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        if len(set(chars)) != len(chars):
            raise ValueError("vocabulary characters must be unique")
        if any(len(c) != 1 for c in chars):
            raise ValueError("vocabulary entries must be single characters")
        self.chars: list[str] = chars  # known characters; id = position + 1
        self._ids = {c: i + 1 for i, c in enumerate(chars)}
        self.by_id: list[str] = [""] + chars  # every id's character; UNK's is "" (as id_to_char)

    @classmethod
    def from_text(cls, text: str | Iterable[str], min_count: int = 1) -> Vocab:
        """Builds a vocabulary of every character seen at least `min_count` times."""
        counts = Counter(text) if isinstance(text, str) else Counter(c for t in text for c in t)
        return cls(sorted(c for c, n in counts.items() if n >= min_count))

    @property
    def size(self) -> int:
        return len(self.chars) + 1

    def __len__(self) -> int:
        return self.size

    def encode(self, text: str) -> list[int]:
        """Never fails: characters outside the vocabulary become UNK."""
        return list(map(self._ids.get, text, repeat(UNK_INDEX, len(text))))  # a loop in C: long prefixes

    def decode(self, ids: Iterable[int]) -> str:
        """UNK ids decode to nothing: generated text never contains a placeholder."""
        chars = self.chars
        return "".join(chars[i - 1] for i in ids if i != UNK_INDEX)

    def id_to_char(self, index: int) -> str:
        return "" if index == UNK_INDEX else self.chars[index - 1]

    def unknown_chars(self, text: str) -> list[str]:
        """The distinct characters of `text` outside the vocabulary, in order of appearance."""
        unseen = set(text).difference(self._ids)  # in C: a 100,000-character prefix costs no Python loop
        return sorted(unseen, key=text.index)

    def index_order(self) -> list[str | None]:
        """Every id's character in id order; None stands at the UNK id."""
        return [None, *self.chars]

    def to_json(self) -> dict:
        return {"unk_index": UNK_INDEX, "chars": self.chars}

    @classmethod
    def from_json(cls, data: dict) -> Vocab:
        if data.get("unk_index", UNK_INDEX) != UNK_INDEX:
            raise ValueError(f"unsupported unk_index {data.get('unk_index')!r}")
        return cls(data["chars"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and other.chars == self.chars

    def __repr__(self) -> str:
        return f"Vocab(size={self.size})"
