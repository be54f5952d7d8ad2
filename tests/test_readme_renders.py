"""README.rst and CHANGELOG.rst are the package's long description and changelog: a table
that docutils cannot parse shows as an error block on the package index, so both must render
without a warning."""

from __future__ import annotations

import io
from pathlib import Path

import docutils.core
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["README.rst", "CHANGELOG.rst", "docs/design.rst"])
def test_renders_without_warnings(name: str) -> None:
    warnings = io.StringIO()
    docutils.core.publish_doctree(
        (ROOT / name).read_text(),
        settings_overrides={"warning_stream": warnings, "report_level": 2, "halt_level": 5})
    assert warnings.getvalue() == "", warnings.getvalue()
