"""The README's first section and settings table stay in step with the project."""

from pathlib import Path

from app.config import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_first_section_holds_exactly_the_two_commands():
    first = README.split("\n## ")[0]
    block = first.split("```sh\n")[1].split("```")[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make serve", "make test"]


def test_every_setting_is_in_the_readme_table():
    for name in Settings.model_fields:
        assert f"`CHARRNN_{name.upper()}`" in README, name
