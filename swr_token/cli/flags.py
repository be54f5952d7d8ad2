"""The flags of ``swr-token get`` in one table, their value checks, and a small parser.

The table is read twice: :mod:`.parser` builds argparse's ``get`` from it, and
:func:`parse_get` parses the plain spellings a script uses (``--flag value``,
``--flag=value``) without importing argparse, a few milliseconds of every cached ``get``.
Whatever it does not know (``--help``, a typo, a bad value, ``-vv``) it leaves to argparse,
which parses the same arguments again and says what is wrong, so both give one result.
"""

from __future__ import annotations

import math
import os

TYPE_CHECKING = False  # not typing's: a cached `get` must not pay for importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

__all__ = [
    "CACHE_DIR", "GET_GROUPS", "Args", "BadValue", "Flag", "lifetime", "non_negative",
    "parse_get", "positive", "whole_seconds",
]


class BadValue(ValueError):
    """A flag's value is refused; the message says why (argparse shows it as is)."""


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadValue(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise BadValue(f"{text!r} is not a number of seconds")
    return value


def positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise BadValue(f"{text!r} must be more than 0")
    return value


def non_negative(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise BadValue(f"{text!r} must not be negative")
    return value


def lifetime(text: str) -> int:
    if not text.isdecimal() or not 3 <= int(text) <= 3600:
        raise BadValue(f"{text!r} must be whole seconds from 3 to 3600")
    return int(text)


def whole_seconds(text: str) -> int:
    if not text.isdecimal() or int(text) < 1:
        raise BadValue(f"{text!r} must be a positive whole number of seconds")
    return int(text)


class Flag:
    """One option of ``get``: its names, how it takes a value, its environment default."""

    __slots__ = ("check", "choices", "default", "dest", "env", "help", "kind", "metavar",
                 "names")

    def __init__(self, *names: str, help: str, kind: str = "value", metavar: str | None = None,
                 env: str | None = None, choices: tuple[str, ...] | None = None,
                 check: Callable[[str], Any] | None = None,
                 default: Callable[[str | None], Any] | None = None) -> None:
        self.names, self.help, self.kind, self.metavar = names, help, kind, metavar
        self.env, self.choices, self.check = env, choices, check
        self.dest = names[-1].lstrip("-").replace("-", "_")
        #: From the environment variable's value (None: unset) to the flag's default.
        self.default: Callable[[str | None], Any] = default or (
            _no if kind == "switch" else _as_is)

    def default_value(self) -> Any:
        return self.default(None if self.env is None else os.environ.get(self.env))


def _as_is(value: str | None) -> str | None:
    return value


def _no(value: str | None) -> bool:
    return False


def _any_text(value: str | None) -> bool:
    return bool(value)


def _or_jwt(value: str | None) -> str:
    return value or "jwt"


def _words(value: str | None) -> list[str] | None:
    return (value or "").split() or None


def _yes(value: str | None) -> bool:
    """Unset, empty, ``0``, ``false``, ``no`` or ``off`` is no."""
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


def _seconds_or_ten(value: str | None) -> float:
    """A bad value is not refused here: the ``get`` command names the variable."""
    try:
        return 10.0 if value is None else positive(value)
    except BadValue:
        return 10.0


#: ``get``'s, and ``cache list|clear``'s too.
CACHE_DIR = Flag("--cache-dir", metavar="PATH", env="SWR_TOKEN_CACHE_DIR",
                 help="the token cache directory (default $XDG_CACHE_HOME/swr_token, else "
                 "~/.cache/swr_token)")

#: ``get``'s option groups, in the order ``--help`` lists them: (title, mutually exclusive,
#: flags). ``kind``: ``value`` (one value, the last one given wins), ``switch`` (no value),
#: ``append`` (repeatable; added to the environment's list).
GET_GROUPS: tuple[tuple[str, bool, tuple[Flag, ...]], ...] = (
    ("Clerk Backend API", False, (
        Flag("--session", metavar="ID", env="SWR_TOKEN_SESSION",
             help="session id, e.g. sess_123"),
        Flag("--template", metavar="NAME", env="SWR_TOKEN_TEMPLATE", help="JWT template name"),
        Flag("--api-url", metavar="URL", env="CLERK_API_URL",
             help="default https://api.clerk.com/v1"),
    )),
    ("Clerk M2M tokens (with --api-url)", False, (
        Flag("--m2m", kind="switch", env="SWR_TOKEN_M2M", default=_any_text,
             help="a machine-to-machine token, with the machine secret key from "
             "CLERK_MACHINE_SECRET_KEY"),
        Flag("--claims", metavar="JSON", env="SWR_TOKEN_M2M_CLAIMS",
             help="custom claims, a JSON object"),
        Flag("--seconds-until-expiration", check=whole_seconds, metavar="N",
             env="SWR_TOKEN_M2M_SECONDS", help="token lifetime (default: 3600)"),
        Flag("--token-format", choices=("jwt", "opaque"), env="SWR_TOKEN_M2M_FORMAT",
             default=_or_jwt, help="default jwt"),
    )),
    ("OAuth2 client credentials", False, (
        Flag("--token-url", metavar="URL", env="SWR_TOKEN_TOKEN_URL", help="token endpoint"),
        Flag("--client-id", metavar="ID", env="SWR_TOKEN_CLIENT_ID", help="client id"),
        Flag("--scope", metavar="SCOPE", env="SWR_TOKEN_SCOPE", help="space-separated scopes"),
        Flag("--audience", metavar="AUD", env="SWR_TOKEN_AUDIENCE",
             help="audience to ask for (Auth0 style)"),
        Flag("--resource", kind="append", metavar="URI", env="SWR_TOKEN_RESOURCE",
             default=_words, help="RFC 8707 resource indicator, repeatable (Okta, Azure, "
             "Keycloak); env: space-separated"),
        Flag("--auth-method", metavar="METHOD", env="SWR_TOKEN_AUTH_METHOD",
             choices=("client_secret_basic", "client_secret_post", "client_secret_jwt",
                      "private_key_jwt"),
             help="client_secret_basic (default with a secret), client_secret_post, "
             "client_secret_jwt or private_key_jwt (default with --private-key-file)"),
        Flag("--private-key-file", metavar="PATH", env="SWR_TOKEN_PRIVATE_KEY_FILE",
             help="sign a private_key_jwt assertion with this PEM key (RSA or P-256)"),
        Flag("--key-id", metavar="KID", env="SWR_TOKEN_KEY_ID",
             help="the kid registered for the key"),
        Flag("--signing-algorithm", metavar="ALG", env="SWR_TOKEN_SIGNING_ALG",
             choices=("RS256", "PS256", "ES256", "HS256"),
             help="RS256, PS256, ES256 (default by key type) or HS256 (client_secret_jwt)"),
    )),
    ("secret (never a flag)", True, (
        Flag("--secret-file", metavar="PATH",
             help="read the secret from this file (surrounding whitespace ignored)"),
        Flag("--secret-stdin", kind="switch",
             help="read the secret from stdin (prompts without echo on a terminal)"),
    )),
    ("output", False, (
        Flag("--json", kind="switch",
             help='print {"token", "expires_at", "remaining", "key"} instead'),
        Flag("--timeout", check=positive, metavar="SECONDS", env="SWR_TOKEN_TIMEOUT",
             default=_seconds_or_ten, help="give up after this long (default: 10)"),
        Flag("-v", "--verbose", kind="switch", help="log what the client does to stderr"),
    )),
    ("token cache", False, (
        Flag("--no-cache", kind="switch", env="SWR_TOKEN_NO_CACHE", default=_yes,
             help="neither read nor write the token cache"),
        CACHE_DIR,
    )),
)

_GET_FLAGS = tuple(flag for _, _, flags in GET_GROUPS for flag in flags)
_BY_NAME = {name: flag for flag in _GET_FLAGS for name in flag.names}


class Args:
    """Parsed arguments by destination name, as ``argparse.Namespace`` holds them (argparse
    fills one of these too, so a command gets one type either way)."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:  # only for names never set; types them Any
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__[name] = value

    def __repr__(self) -> str:  # never the values: one may be a path to a secret
        return f"<Args {sorted(self.__dict__)}>"


def parse_get(argv: Sequence[str]) -> Args | None:
    """``get ...`` parsed as argparse would parse it, or None to leave it to argparse."""
    if not argv or argv[0] != "get":
        return None
    given: dict[str, Any] = {}
    at = 1
    while at < len(argv):
        taken = _take(argv, at, given)
        if taken is None:
            return None
        at = taken
    return _with_defaults(given)


def _take(argv: Sequence[str], at: int, given: dict[str, Any]) -> int | None:
    """Read the flag at ``argv[at]`` (and its value) into ``given``; where the next one
    starts, or None for anything out of the ordinary."""
    name, equals, inline = argv[at].partition("=")
    flag = _BY_NAME.get(name)
    if flag is None or (flag.kind == "switch" and equals):  # argparse refuses `--json=x`
        return None
    if flag.kind == "switch":
        given[flag.dest] = True
        return at + 1
    if equals:
        text, after = inline, at + 1
    elif at + 1 < len(argv) and not argv[at + 1].startswith("-"):
        text, after = argv[at + 1], at + 2
    else:  # no value, or one argparse might take for a flag
        return None
    value = _checked(flag, text)
    if value is _REFUSED:
        return None
    if flag.kind == "append":
        given.setdefault(flag.dest, []).append(value)
    else:
        given[flag.dest] = value
    return after


_REFUSED = object()  # a value argparse would refuse (then it says why)


def _checked(flag: Flag, text: str) -> Any:
    """``text`` as the flag's value, or ``_REFUSED``."""
    if flag.choices is not None and text not in flag.choices:
        return _REFUSED
    try:
        return text if flag.check is None else flag.check(text)
    except BadValue:
        return _REFUSED


def _with_defaults(given: dict[str, Any]) -> Args | None:
    """Every flag's value, as given or by default; None where argparse would refuse."""
    if "secret_file" in given and "secret_stdin" in given:  # mutually exclusive
        return None
    values: dict[str, Any] = {"command": "get"}
    for flag in _GET_FLAGS:
        value = _final(flag, given)
        if value is _REFUSED:
            return None
        values[flag.dest] = value
    return Args(**values)


def _final(flag: Flag, given: dict[str, Any]) -> Any:
    default = flag.default_value()
    if flag.dest not in given:
        # argparse passes a string default (from the environment) through the flag's
        # check, as if typed; it does not hold it to the flag's choices.
        if isinstance(default, str) and flag.check is not None:
            try:
                return flag.check(default)
            except BadValue:
                return _REFUSED
        return default
    if flag.kind == "append":  # added to the default list (a copy), as argparse does
        return [*(default or ()), *given[flag.dest]]
    return given[flag.dest]
