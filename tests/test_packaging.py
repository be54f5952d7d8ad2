"""The package as installed: its metadata, its license, and types that reach a user's mypy."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _meta() -> metadata.PackageMetadata:
    return metadata.metadata("swr_token")


def test_license_file_matches_the_declared_license() -> None:
    meta = _meta()
    assert meta["License-Expression"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    files = metadata.files("swr_token") or []
    shipped = [f for f in files if f.name == "LICENSE"]
    assert shipped, "the installed distribution carries no LICENSE file"
    assert shipped[0].read_text() == (ROOT / "LICENSE").read_text()


def test_project_urls_name_documentation_source_and_changelog() -> None:
    meta = _meta()
    urls = dict(entry.split(", ", 1) for entry in meta.get_all("Project-URL") or [])
    assert set(urls) >= {"Documentation", "Source", "Changelog"}, urls
    assert meta["Home-page"] == urls["Source"]
    for label, path in (("Documentation", "README.rst"), ("Changelog", "CHANGELOG.rst")):
        assert urls[label].endswith("/" + path)
        assert (ROOT / path).is_file()


def test_classifiers_state_status_os_and_the_python_we_test_on() -> None:
    classifiers = _meta().get_all("Classifier") or []
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    assert any(c.startswith("Operating System :: ") for c in classifiers)
    running = "Programming Language :: Python :: {}.{}".format(*sys.version_info[:2])
    assert running in classifiers, f"tests run on {running!r}, which is not declared"
    assert "Typing :: Typed" in classifiers


def test_changelog_has_an_unreleased_section_with_entries() -> None:
    text = (ROOT / "CHANGELOG.rst").read_text()
    unreleased = text.split("Unreleased\n----------\n", 1)[1].split("\n0.1.0\n", 1)[0]
    assert [line for line in unreleased.splitlines() if line.startswith("- ")]


GOOD = """\
import swr_token


def mint(request: swr_token.TokenRequest) -> str:
    return "a.jwt"


with swr_token.TokenClient(mint) as client:
    token: str = client.get_token("sess_1")
    left: float = client.get_token_info("sess_1").remaining()
"""

BAD = """\
import swr_token

client = swr_token.TokenClient(lambda request: "a.jwt")
count: int = client.get_token("sess_1")
"""


def test_users_mypy_strict_sees_the_installed_packages_types(tmp_path: Path) -> None:
    """Run from outside the checkout, as a user's project would: only the install can help."""
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "bad.py").write_text(BAD)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         "good.py", "bad.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240)
    lines = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert "Cannot find implementation" not in result.stdout, result.stdout
    # The bad script's one mistake is caught, so the types are really seen (not Any) ...
    assert len(lines) == 1 and lines[0].startswith("bad.py:4: error: Incompatible types"), \
        result.stdout
    # ... and a correct user script passes --strict.
    assert not [line for line in lines if line.startswith("good.py")]


def test_every_test_run_names_its_slowest_tests_and_the_readme_says_how_long() -> None:
    """The README's test command and CI's are the same, so the option lives in setup.cfg."""
    import configparser
    import re

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert "--durations=10" in config["tool:pytest"]["addopts"].split()
    readme = (ROOT / "README.rst").read_text()
    setup = readme.split("Set up\n------", 1)[1].split("The demo\n--------", 1)[0]
    assert re.search(r"suite takes about \w+ minutes?", setup)
