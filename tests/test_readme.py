"""The README's two set-up commands are the ones CI runs; its examples still run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


def test_ci_runs_the_readme_first_command_program() -> None:
    """CI runs the demo (shortened by --duration) that the first command starts."""
    program = _setup_commands()[0].split(" && ", 1)[1]
    assert program == "swr-token demo"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert any(line.startswith(program + " --duration") for line in ci)
    setup_cfg = (ROOT / "setup.cfg").read_text()
    assert re.search(r"^\s*swr-token = swr_token\.cli:main$", setup_cfg, re.M)


def _python_blocks() -> list[str]:
    """Every ``.. code-block:: python`` in the README, dedented."""
    import textwrap

    blocks, lines = [], (ROOT / "README.rst").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() == ".. code-block:: python":
            body = []
            for following in lines[i + 2:]:
                if following and not following.startswith("    "):
                    break
                body.append(following)
            blocks.append(textwrap.dedent("\n".join(body)))
    return blocks


RUNNABLE = [b for b in _python_blocks() if "LocalIssuer" in b]


def test_readme_has_runnable_examples() -> None:
    assert len(RUNNABLE) >= 2


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"block{i}" for i in range(len(RUNNABLE))])
def test_readme_example_runs_as_written(block: str) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", block], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
