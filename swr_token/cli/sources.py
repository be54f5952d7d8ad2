"""Which source ``get`` asks, from its flags: Clerk sessions, Clerk M2M, OAuth2 with a
secret or a private key; and the secret, read from a file, stdin or the environment.

A :class:`Plan` names the cache entry (the source's identity and the key) without building
the source: building one loads the HTTP stack, which a cached answer does not need.
"""

from __future__ import annotations

import os
import sys

from .common import UsageError

TYPE_CHECKING = False  # not typing's: a cached `get` must not pay for importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from .flags import Args

__all__ = ["Plan", "build_source", "read_secret"]

_CLERK_API = "https://api.clerk.com/v1"
_M2M_FLAGS = ("--claims", "--seconds-until-expiration", "--token-format")
_ASSERTION_FLAGS = ("--private-key-file", "--key-id", "--signing-algorithm", "--auth-method",
                    "--resource")


class Plan:
    """What ``get`` will ask: ``make()`` builds the source, ``key`` the token's key parts
    (``session_id``, ``template``, ``audience``), ``where`` says where the credential came
    from (for messages; never the credential), ``identity`` the cache's namespace (None:
    known only once the source is built)."""

    __slots__ = ("identity", "key", "make", "where")

    def __init__(self, make: Callable[[], Any], key: dict[str, str | None], where: str,
                 identity: str | None) -> None:
        self.make, self.key, self.where, self.identity = make, key, where, identity


def _key(session_id: str | None = None, template: str | None = None,
         audience: str | None = None) -> dict[str, str | None]:
    return {"session_id": session_id, "template": template, "audience": audience}


# -- the secret -----------------------------------------------------------------------------


def read_secret(args: Args, env_var: str, what: str) -> tuple[str, str]:
    """The secret and where it came from (for messages; never the secret itself)."""
    if args.secret_file:
        where = f"--secret-file {args.secret_file}"
        secret = _from_file(args.secret_file, where, what)
    elif args.secret_stdin:
        where = "--secret-stdin"
        secret = _from_stdin(what)
    else:
        where = env_var
        secret = os.environ.get(env_var, "").strip()
        if not secret:
            raise UsageError(f"no {what}: set {env_var}, or pass --secret-file PATH or "
                             "--secret-stdin (never a flag: command lines show in ps)")
    _check_secret(secret, where, what)
    return secret, where


def _from_file(path: str, where: str, what: str) -> str:
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as handle:
            return handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
        raise UsageError(f"cannot read {where}: {reason}; give a readable file holding only "
                         f"the {what}") from None


def _from_stdin(what: str) -> str:
    if sys.stdin is None:
        raise UsageError(f"--secret-stdin was given but there is no stdin; pipe the {what} in "
                         "or use --secret-file PATH")
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"{what}: ", stream=sys.stderr).strip()
    return sys.stdin.read().strip()


def _check_secret(secret: str, where: str, what: str) -> None:
    if not secret:
        raise UsageError(f"the {what} from {where} is empty; put the {what} there")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in secret):
        raise UsageError(f"the {what} from {where} contains whitespace or control "
                         f"characters; it must hold only the {what}, on one line")


# -- which source ---------------------------------------------------------------------------


def build_source(args: Args) -> Plan:
    """The source ``args`` ask for; a usage error for a missing, mixed or misplaced flag."""
    _check_kind(args)
    if args.m2m:
        return _m2m_source(args)
    if args.token_url:
        _check_oauth2(args)
        if args.private_key_file or args.auth_method == "private_key_jwt":
            return _oauth2_key_source(args)
        return _oauth2_secret_source(args)
    if args.session:
        return _clerk_source(args)
    raise UsageError("say which token: --session ID for Clerk (with CLERK_SECRET_KEY) or "
                     "--token-url URL --client-id ID for OAuth2 (or their environment "
                     "variables)")


def _check_kind(args: Args) -> None:
    """One kind of token, and no flag of another kind."""
    if args.session and args.token_url:
        raise UsageError("both a Clerk session (--session / SWR_TOKEN_SESSION) and an OAuth2 "
                         "token URL (--token-url / SWR_TOKEN_TOKEN_URL) are set; give one")
    if not args.m2m:
        _refuse_flags(args, _M2M_FLAGS, "for Clerk M2M tokens (--m2m)")
    if not args.token_url:
        _refuse_flags(args, _ASSERTION_FLAGS, "for OAuth2 (--token-url)")
    if args.m2m and (args.session or args.token_url):
        raise UsageError("--m2m asks for a machine-to-machine token, which has no session "
                         "and no token URL; drop --session / --token-url (or their "
                         "environment variables)")


def _refuse_flags(args: Args, flags: Sequence[str], what: str) -> None:
    """Flags of another kind of token are a usage error, not silently ignored."""
    given = [flag for flag in flags if flag in args.given]
    if given:
        raise UsageError(f"{', '.join(given)}: only {what}")


def _clerk_source(args: Args) -> Plan:
    from .._identity import clerk_identity

    for flag in ("--client-id", "--scope", "--audience"):
        if flag in args.given:
            raise UsageError(f"{flag} is for OAuth2 (--token-url); Clerk takes --session, "
                             "--template and --api-url")
    secret, where = read_secret(args, "CLERK_SECRET_KEY", "Clerk secret key")
    api_url = args.api_url or _CLERK_API

    def clerk() -> Any:
        from .._sources import ClerkBackendSource

        return ClerkBackendSource(secret, api_url=api_url)

    return Plan(clerk, _key(args.session, args.template or None), where,
                clerk_identity(api_url, secret))


def _m2m_claims(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    import json

    try:
        claims = json.loads(text)
    except ValueError:
        claims = None
    if not isinstance(claims, dict):
        raise UsageError("--claims must be a JSON object, e.g. '{\"role\": \"cron\"}'")
    return claims


def _m2m_source(args: Args) -> Plan:
    """``--m2m``: a ClerkM2MSource; the key has no parts (M2M tokens belong to the machine)."""
    from .._identity import M2M_DEFAULT_SECONDS, clerk_m2m_identity

    for flag in ("--client-id", "--scope", "--audience", "--template"):
        if flag in args.given:
            raise UsageError(f"{flag} is not for --m2m: an M2M token belongs to the machine; "
                             "use --claims to put data in it")
    claims = _m2m_claims(args.claims)
    secret, where = read_secret(args, "CLERK_MACHINE_SECRET_KEY", "Clerk machine secret key")
    api_url = args.api_url or _CLERK_API
    # An int: argparse and parse_get check SWR_TOKEN_M2M_SECONDS as they check the flag.
    seconds, token_format = args.seconds_until_expiration, args.token_format

    def m2m() -> Any:
        from .._clerk_m2m import ClerkM2MSource

        return ClerkM2MSource(secret, api_url=api_url, claims=claims,
                              seconds_until_expiration=seconds, token_format=token_format)

    identity = None  # another --token-format: the source refuses it, with its own words
    if token_format in ("jwt", "opaque"):
        identity = clerk_m2m_identity(api_url, secret, token_format=token_format,
                                      seconds_until_expiration=seconds or M2M_DEFAULT_SECONDS,
                                      claims=claims)
    return Plan(m2m, _key(), where, identity)


def _check_oauth2(args: Args) -> None:
    if "--template" in args.given:
        raise UsageError("--template is for Clerk (--session); OAuth2 takes --scope and "
                         "--audience")
    if not args.client_id:
        raise UsageError("OAuth2 needs a client id: pass --client-id ID or set "
                         "SWR_TOKEN_CLIENT_ID")


def _oauth2_secret_source(args: Args) -> Plan:
    from .._identity import oauth2_identity

    secret, where = read_secret(args, "SWR_TOKEN_CLIENT_SECRET", "client secret")
    resource = tuple(args.resource or ())

    def oauth2() -> Any:
        from .._sources import OAuth2ClientCredentialsSource

        return OAuth2ClientCredentialsSource(
            args.token_url, args.client_id, secret, scope=args.scope,
            resource=resource or None, auth_method=args.auth_method,
            key_id=args.key_id, signing_algorithm=args.signing_algorithm)

    identity = oauth2_identity(args.token_url, args.client_id, secret,
                               scope=args.scope or None, audience=None, resource=resource)
    return Plan(oauth2, _key(audience=args.audience or None), where, identity)


def _oauth2_key_source(args: Args) -> Plan:
    """OAuth2 with ``private_key_jwt``: the key only from ``--private-key-file``."""
    if args.secret_file or args.secret_stdin:
        raise UsageError("--private-key-file authenticates with the key; drop "
                         "--secret-file / --secret-stdin")
    if not args.private_key_file:
        raise UsageError("--auth-method private_key_jwt needs --private-key-file PATH")
    from pathlib import Path

    from .._assertion import check_key_algorithm, load_private_key, public_key_thumbprint
    from .._errors import ConfigurationError
    from .._identity import oauth2_identity

    try:
        private_key = load_private_key(Path(os.path.expanduser(args.private_key_file)))
        algorithm = check_key_algorithm(private_key, args.signing_algorithm)
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None
    resource = tuple(args.resource or ())

    def oauth2() -> Any:
        from .._sources import OAuth2ClientCredentialsSource

        return OAuth2ClientCredentialsSource(
            args.token_url, args.client_id, scope=args.scope, resource=resource or None,
            private_key=private_key, key_id=args.key_id, signing_algorithm=algorithm)

    identity = oauth2_identity(args.token_url, args.client_id,
                               f"{algorithm}:{public_key_thumbprint(private_key)}",
                               scope=args.scope or None, audience=None, resource=resource)
    return Plan(oauth2, _key(audience=args.audience or None),
                f"--private-key-file {args.private_key_file}", identity)
