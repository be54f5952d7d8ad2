"""pytest plugin: a ``local_issuer`` fixture, off until enabled.

Installed with swr_token (``pytest11`` entry point), so it loads in every pytest run; it does
nothing unless ``--swr-token-issuer`` is given or the ini file sets ``swr_token_issuer = true``.
Then each test that asks for ``local_issuer`` gets a started :class:`LocalIssuer`, stopped after.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .._issuer import LocalIssuer

__all__ = ["pytest_addoption", "pytest_configure"]

_FLAG = "--swr-token-issuer"
_INI = "swr_token_issuer"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("swr_token")
    group.addoption(
        _FLAG, action="store_true", default=False,
        help="provide the local_issuer fixture (a swr_token LocalIssuer on 127.0.0.1)",
    )
    parser.addini(_INI, type="bool", default=False,
                  help="provide the local_issuer fixture (swr_token's LocalIssuer)")


class _IssuerFixtures:
    """Registered only when enabled, so the fixture name stays free otherwise."""

    @pytest.fixture
    def local_issuer(self) -> Iterator[LocalIssuer]:
        """A started LocalIssuer on 127.0.0.1, stopped when the test ends."""
        # Imported here, when a test asks for the fixture: a pytest run that never does
        # loads no JWT, HTTP or key-generation code (swr_token.testing is lazy too).
        from .._issuer import LocalIssuer

        with LocalIssuer() as issuer:
            yield issuer


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption(_FLAG) or config.getini(_INI):
        config.pluginmanager.register(_IssuerFixtures(), "swr_token_local_issuer")
