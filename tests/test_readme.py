"""The README's two set-up commands are the ones CI runs; its examples still run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setup_commands() -> list[str]:
    text = (ROOT / "README.rst").read_text()
    section = text.split("Set up\n------", 1)[1].split("\n\n\n", 1)[0]
    section = section.split("Quick start")[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    ")
            and line.strip()]


def test_readme_has_exactly_two_setup_commands() -> None:
    commands = _setup_commands()
    assert len(commands) == 2, commands
    assert commands[0].startswith("python3 -m pip install -e . && ")
    assert commands[1].startswith("python3 -m pip install -e '.[test]' && ")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _setup_commands()[1] in [line.strip() for line in ci]


def test_readme_first_command_names_a_file_that_exists() -> None:
    first = _setup_commands()[0]
    match = re.search(r"python3 (examples/\S+\.py)", first)
    if match:
        assert (ROOT / match.group(1)).exists()
