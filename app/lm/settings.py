"""Settings declared once: a dataclass field's default, what it does and its bounds, which the CLI's
flags and the API's request schema derive from (neither lists the fields again)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING, dataclass
from typing import Any


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field with its documentation and bounds in its metadata."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return dataclasses.field(default=default, metadata={"help": help, "bounds": bounds, "choices": choices})


@dataclass(frozen=True)
class Setting:
    name: str
    type: type
    default: Any  # MISSING where there is none
    help: str
    bounds: dict[str, float]
    choices: tuple[str, ...] | None


def settings_of(cls: type) -> list[Setting]:
    """The fields of a dataclass declared with setting(), in order."""
    hints = typing.get_type_hints(cls)
    return [
        Setting(
            name=f.name,
            type=hints[f.name],
            default=f.default,
            help=f.metadata.get("help", ""),
            bounds=dict(f.metadata.get("bounds", {})),
            choices=f.metadata.get("choices"),
        )
        for f in dataclasses.fields(cls)
    ]
