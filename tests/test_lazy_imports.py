"""``import swr_token`` stays light: public names load on first use (PEP 562)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import swr_token


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in ('requests', 'jwt', " \
            "'cryptography', 'urllib3') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    return set(done.stdout.split())


def test_the_engine_alone_loads_no_http_stack_and_no_jwt_parser() -> None:
    assert _loaded_after("import swr_token") == set()
    assert _loaded_after("from swr_token import ConfigurationError, TokenClient") \
        == set()


def test_a_source_loads_what_it_needs() -> None:
    assert "requests" in _loaded_after("from swr_token import ClerkBackendSource")


def test_every_exported_name_resolves_and_dir_lists_it() -> None:
    for name in swr_token.__all__:
        assert getattr(swr_token, name) is not None, name
    assert set(swr_token.__all__) <= set(dir(swr_token))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        swr_token.NoSuchThing  # noqa: B018
