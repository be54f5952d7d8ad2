"""The public surface: __all__ is honest, bold SPEC names exist, py.typed ships."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import swr_token

SPEC_NAMES = {
    "TokenClient", "Token", "TokenError", "TokenRejectedError", "TokenFetchError",
    "InvalidTokenError", "ClientClosedError",
}


def test_all_is_sorted_and_every_name_exists() -> None:
    assert list(swr_token.__all__) == sorted(swr_token.__all__)
    for name in swr_token.__all__:
        assert hasattr(swr_token, name), name


def test_all_lists_every_public_name() -> None:
    public = {n for n in vars(swr_token) if not n.startswith("_")} - {"annotations"}
    modules = {n for n in public if inspect.ismodule(getattr(swr_token, n))}
    assert public - modules <= set(swr_token.__all__)


def test_spec_names_are_exported() -> None:
    assert set(swr_token.__all__) >= SPEC_NAMES


def test_spec_signatures() -> None:
    client = inspect.signature(swr_token.TokenClient)
    assert {"poll_interval", "background_refresh_threshold"} <= set(client.parameters)
    for method in ("get_token", "get_token_info"):
        params = inspect.signature(getattr(swr_token.TokenClient, method)).parameters
        assert list(params)[:2] == ["self", "session_id"]
        assert {"template", "organization_id", "audience", "skip_cache", "refresh_if_stale",
                "background_refresh_threshold", "timeout"} <= set(params)
    params = inspect.signature(swr_token.TokenClient.invalidate).parameters
    assert {"session_id", "template", "organization_id", "audience", "token"} <= set(params)
    token = inspect.signature(swr_token.Token).parameters
    assert list(token)[:3] == ["raw", "expires_in", "server_time"]
    for name in ("stats", "close", "__enter__", "__exit__"):
        assert callable(getattr(swr_token.TokenClient, name))


def test_get_token_options_are_keyword_only_and_checked() -> None:
    params = inspect.signature(swr_token.TokenClient.get_token).parameters
    assert all(params[name].kind is inspect.Parameter.KEYWORD_ONLY
               for name in list(params)[2:])
    with swr_token.TokenClient(lambda _r: swr_token.Token("opaque", expires_in=300)) as client:
        assert client.get_token("s") == "opaque"
        assert client.get_token(session_id="s", template=None, timeout=1.0) == "opaque"
        with pytest.raises(TypeError, match="positional"):
            client.get_token("s", "a-template")  # type: ignore[misc]
        with pytest.raises(TypeError, match="templat"):
            client.get_token("s", templat="x")  # type: ignore[call-arg]


def test_error_hierarchy() -> None:
    for name in SPEC_NAMES - {"TokenClient", "Token", "TokenError"}:
        assert issubclass(getattr(swr_token, name), swr_token.TokenError)
    assert issubclass(swr_token.ConfigurationError, ValueError)


def test_py_typed_ships() -> None:
    assert (Path(swr_token.__file__).parent / "py.typed").exists()
