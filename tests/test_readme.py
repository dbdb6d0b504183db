"""The README's first section and settings table stay in step with the project."""

import re
from pathlib import Path

from app.config import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_first_section_holds_exactly_the_two_commands():
    first = README.split("\n## ")[0]
    block = first.split("```sh\n")[1].split("```")[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make serve", "make test"]


def readme_settings() -> dict[str, str]:
    rows = re.findall(r"^\| `CHARRNN_([A-Z_]+)` \| ([^|]+) \|", README, re.M)
    return {name.lower(): default.strip() for name, default in rows}


def shown(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def test_the_settings_table_lists_every_setting_with_its_default():
    table = readme_settings()
    assert set(table) == set(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        assert table[name] == shown(field.get_default(call_default_factory=True)), name
