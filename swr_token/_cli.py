"""The ``swr-token`` command: ``demo``, ``get`` for shell scripts and cron, ``inspect``,
``cache list|clear``.

Secrets come only from the environment, a file or stdin: a command line shows in ``ps`` and in
shell history. No token or secret is ever printed, except the token ``get`` is asked for.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence

from ._errors import (
    ConfigurationError,
    InvalidTokenError,
    TimedOutError,
    TokenError,
    TokenFetchError,
    TokenRejectedError,
)
from ._version import __version__

TYPE_CHECKING = False  # not typing's: a cached `get` must not pay for importing typing
if TYPE_CHECKING:
    from typing import IO, Any, NoReturn

    from ._filestore import FileStore

__all__ = ["main"]

# A cached token is reused while it has more than this left (a quarter of its lifetime for
# tokens living under twice as long): what the script does next with it must not outlive it.
_CACHE_MARGIN = 15.0

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_TRANSIENT = 4
EXIT_INVALID = 5
EXIT_INTERRUPTED = 130

_EXIT_CODES = """\
exit codes:
  0    ok
  2    usage: a bad or missing flag, secret, URL or input
  3    rejected: the issuer refused (credentials, unknown or ended session, bad request);
       asking again will not help
  4    transient: network, timeout, HTTP 5xx or 429; try again later
  5    invalid token: the issuer answered with an unusable token (or inspect got no JWT)
  130  interrupted (Ctrl-C)"""

_GET_EPILOG = f"""\
Clerk (a session token):
  CLERK_SECRET_KEY=... swr-token get --session sess_123 [--template NAME]
OAuth2 client credentials (an access token):
  swr-token get --token-url https://auth.example.com/oauth/token --client-id ID \\
      --secret-file ~/.config/app/client-secret [--scope 'read write'] [--audience API]
  ... --private-key-file ~/.config/app/client.pem [--key-id KID]   (private_key_jwt)
Clerk machine-to-machine (an M2M token; each creation is billed, the cache keeps it):
  CLERK_MACHINE_SECRET_KEY=ak_... swr-token get --m2m [--claims '{{"role": "cron"}}']

In a script:  curl -H "Authorization: Bearer $(swr-token get --session "$SID")" ...

tokens are cached in a private directory ($XDG_CACHE_HOME/swr_token, else
~/.cache/swr_token; never a secret) and reused while they have more than 15 s
(or a quarter of their lifetime) left, so a loop or a cron job asks the issuer
once per token lifetime; --no-cache asks every time. See: swr-token cache list

secrets (never a flag: command lines show in ps and shell history), first found wins:
  --secret-file PATH, --secret-stdin, then CLERK_SECRET_KEY (Clerk),
  CLERK_MACHINE_SECRET_KEY (--m2m) or SWR_TOKEN_CLIENT_SECRET (OAuth2); a private key
  only from --private-key-file

stdout holds the token (or the --json document) and nothing else; errors go to stderr
as one line saying what to do.

{_EXIT_CODES}"""


class _UsageError(Exception):
    """A problem with how the command was called: exit 2, one line on stderr."""


class _Parser(argparse.ArgumentParser):
    """Errors as one line on stderr, saying where the help is, then exit 2."""

    commands: dict[str, _Parser]

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; see {self.prog} --help\n")

    def _get_formatter(self) -> argparse.HelpFormatter:
        # The width argparse would pick, without the import of shutil it does for it (a
        # few ms of every cached `get`, which builds formatters but never prints help).
        factory: Callable[..., argparse.HelpFormatter] = self.formatter_class  # all take width
        return factory(prog=self.prog, width=_terminal_width() - 2)


def _terminal_width() -> int:
    """``shutil.get_terminal_size().columns``: $COLUMNS, else stdout's terminal, else 80."""
    try:
        return max(int(os.environ["COLUMNS"]), 1)
    except (KeyError, ValueError):
        pass
    stream = sys.__stdout__
    try:
        return (stream is not None and os.get_terminal_size(stream.fileno()).columns) or 80
    except (AttributeError, ValueError, OSError):
        return 80


def _env_flag(var: str) -> bool:
    """A yes/no environment variable: unset, empty, ``0``, ``false``, ``no`` or ``off`` is no."""
    return os.environ.get(var, "").strip().lower() not in ("", "0", "false", "no", "off")


def _env_help(text: str, var: str) -> str:
    value = os.environ.get(var)
    return f"{text} (env {var}{'' if value is None else ', set'})"


def _build_parser(prog: str) -> _Parser:
    parser = _Parser(
        prog=prog, allow_abbrev=False,
        description="Short-lived auth tokens, served stale-while-revalidate.",
        epilog="Start with: swr-token demo. Every command has --help.",
    )
    parser.add_argument("--version", action="version", version=f"swr_token {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="watch the cache work against a local issuer (about 30 s)",
        description="Runs a local token issuer on 127.0.0.1 with short-lived tokens and a "
        "handful of reader threads sharing one TokenClient; shows each key's zone, every "
        "background refresh, every wait, then a summary. Prints fingerprints, never tokens. "
        "Ends by itself, or with Ctrl-C (exit 130).",
        allow_abbrev=False,
    )
    demo.add_argument("--duration", type=_positive, default=30.0, metavar="SECONDS",
                      help="how long to run (default: 30)")
    demo.add_argument("--fail-for", type=_non_negative, default=0.0, metavar="SECONDS",
                      help="inject an issuer outage (HTTP 503) of this length mid-run, to "
                      "show stale serving and recovery (default: none)")
    demo.add_argument("--lifetime", type=_lifetime, default=12, metavar="SECONDS",
                      help="token lifetime; the thresholds scale with it (default: 12)")
    demo.add_argument("--timeline", action="store_true",
                      help="print a timeline of events even on a terminal (the default when "
                      "stdout is not a terminal)")

    get = commands.add_parser(
        "get", help="print a token on stdout, for shell scripts and cron",
        description="Fetches one token and prints it on stdout. Configure Clerk (--session)\n"
        "or OAuth2 client credentials (--token-url); every flag can also come from the\n"
        "environment variable named in its help.",
        epilog=_GET_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    env = os.environ.get
    clerk = get.add_argument_group("Clerk Backend API")
    clerk.add_argument("--session", default=env("SWR_TOKEN_SESSION"), metavar="ID",
                       help=_env_help("session id, e.g. sess_123", "SWR_TOKEN_SESSION"))
    clerk.add_argument("--template", default=env("SWR_TOKEN_TEMPLATE"), metavar="NAME",
                       help=_env_help("JWT template name", "SWR_TOKEN_TEMPLATE"))
    clerk.add_argument("--api-url", default=env("CLERK_API_URL"), metavar="URL",
                       help=_env_help("default https://api.clerk.com/v1", "CLERK_API_URL"))
    m2m = get.add_argument_group("Clerk M2M tokens (with --api-url)")
    m2m.add_argument("--m2m", action="store_true", default=bool(env("SWR_TOKEN_M2M")),
                     help=_env_help("a machine-to-machine token, with the machine secret key "
                                    "from CLERK_MACHINE_SECRET_KEY", "SWR_TOKEN_M2M"))
    m2m.add_argument("--claims", default=env("SWR_TOKEN_M2M_CLAIMS"), metavar="JSON",
                     help=_env_help("custom claims, a JSON object", "SWR_TOKEN_M2M_CLAIMS"))
    m2m.add_argument("--seconds-until-expiration", type=_whole_seconds,
                     default=env("SWR_TOKEN_M2M_SECONDS"), metavar="N",
                     help=_env_help("token lifetime (default: 3600)", "SWR_TOKEN_M2M_SECONDS"))
    m2m.add_argument("--token-format", choices=("jwt", "opaque"),
                     default=env("SWR_TOKEN_M2M_FORMAT") or "jwt",
                     help=_env_help("default jwt", "SWR_TOKEN_M2M_FORMAT"))
    oauth = get.add_argument_group("OAuth2 client credentials")
    oauth.add_argument("--token-url", default=env("SWR_TOKEN_TOKEN_URL"), metavar="URL",
                       help=_env_help("token endpoint", "SWR_TOKEN_TOKEN_URL"))
    oauth.add_argument("--client-id", default=env("SWR_TOKEN_CLIENT_ID"), metavar="ID",
                       help=_env_help("client id", "SWR_TOKEN_CLIENT_ID"))
    oauth.add_argument("--scope", default=env("SWR_TOKEN_SCOPE"), metavar="SCOPE",
                       help=_env_help("space-separated scopes", "SWR_TOKEN_SCOPE"))
    oauth.add_argument("--audience", default=env("SWR_TOKEN_AUDIENCE"), metavar="AUD",
                       help=_env_help("audience to ask for (Auth0 style)", "SWR_TOKEN_AUDIENCE"))
    oauth.add_argument("--resource", action="append", metavar="URI",
                       default=(env("SWR_TOKEN_RESOURCE") or "").split() or None,
                       help=_env_help("RFC 8707 resource indicator, repeatable (Okta, Azure, "
                                      "Keycloak); env: space-separated", "SWR_TOKEN_RESOURCE"))
    oauth.add_argument("--auth-method", metavar="METHOD", default=env("SWR_TOKEN_AUTH_METHOD"),
                       choices=("client_secret_basic", "client_secret_post",
                                "client_secret_jwt", "private_key_jwt"),
                       help=_env_help("client_secret_basic (default with a secret), "
                                      "client_secret_post, client_secret_jwt or "
                                      "private_key_jwt (default with --private-key-file)",
                                      "SWR_TOKEN_AUTH_METHOD"))
    oauth.add_argument("--private-key-file", metavar="PATH",
                       default=env("SWR_TOKEN_PRIVATE_KEY_FILE"),
                       help=_env_help("sign a private_key_jwt assertion with this PEM key "
                                      "(RSA or P-256)", "SWR_TOKEN_PRIVATE_KEY_FILE"))
    oauth.add_argument("--key-id", metavar="KID", default=env("SWR_TOKEN_KEY_ID"),
                       help=_env_help("the kid registered for the key", "SWR_TOKEN_KEY_ID"))
    oauth.add_argument("--signing-algorithm", metavar="ALG", default=env("SWR_TOKEN_SIGNING_ALG"),
                       choices=("RS256", "PS256", "ES256", "HS256"),
                       help=_env_help("RS256, PS256, ES256 (default by key type) or HS256 "
                                      "(client_secret_jwt)", "SWR_TOKEN_SIGNING_ALG"))
    secret = get.add_argument_group("secret (never a flag)").add_mutually_exclusive_group()
    secret.add_argument("--secret-file", metavar="PATH",
                        help="read the secret from this file (surrounding whitespace ignored)")
    secret.add_argument("--secret-stdin", action="store_true",
                        help="read the secret from stdin (prompts without echo on a terminal)")
    out = get.add_argument_group("output")
    out.add_argument("--json", action="store_true",
                     help='print {"token", "expires_at", "remaining", "key"} instead')
    out.add_argument("--timeout", type=_positive,
                     default=_env_float("SWR_TOKEN_TIMEOUT", 10.0), metavar="SECONDS",
                     help=_env_help("give up after this long (default: 10)",
                                    "SWR_TOKEN_TIMEOUT"))
    out.add_argument("-v", "--verbose", action="store_true",
                     help="log what the client does to stderr")
    cache_opts = get.add_argument_group("token cache")
    cache_opts.add_argument("--no-cache", action="store_true",
                            default=_env_flag("SWR_TOKEN_NO_CACHE"),
                            help=_env_help("neither read nor write the token cache",
                                           "SWR_TOKEN_NO_CACHE"))
    _add_cache_dir(cache_opts)

    inspect = commands.add_parser(
        "inspect", help="decode a token read from stdin: claims and remaining life",
        description="Reads a token from stdin (not an argument: arguments show in ps) and "
        "prints its header, claims and remaining life by this machine's clock. The signature "
        "is NOT verified: do not trust what it shows. Accepts a bare JWT, 'Bearer <jwt>', a "
        "pasted 'Authorization: Bearer <jwt>' line or the output of 'swr-token get --json'. "
        "Never prints the token itself.",
        epilog="examples:\n  swr-token get --session sess_123 | swr-token inspect\n"
        "  printf '%s\\n' \"$TOKEN\" | swr-token inspect\n"
        "  swr-token inspect -        (then paste the token or header line, Enter, Ctrl-D)\n\n"
        f"{_EXIT_CODES}"
        f"{_EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    inspect.add_argument("--json", action="store_true", help="print the result as JSON")
    inspect.add_argument("input", nargs="?", metavar="-",
                         help="'-' or nothing: read the token from stdin (never an argument)")

    cache = commands.add_parser(
        "cache", help="list or clear the tokens 'get' keeps between runs",
        description="'swr-token get' keeps the tokens it fetches in a private directory "
        "(0700, files 0600; tokens only, never a secret) and reuses them while they live. "
        "'list' shows each entry's key, fingerprint and remaining life (never the token); "
        "'clear' removes them all.", allow_abbrev=False,
    )
    actions = cache.add_subparsers(dest="cache_command", metavar="ACTION")
    listing = actions.add_parser("list", help="key, fingerprint and remaining life of each "
                                 "cached token", allow_abbrev=False)
    listing.add_argument("--json", action="store_true", help="print the entries as JSON")
    _add_cache_dir(listing)
    clearing = actions.add_parser("clear", help="remove every cached token",
                                  allow_abbrev=False)
    _add_cache_dir(clearing)
    parser.commands = {"demo": demo, "get": get, "inspect": inspect, "cache": cache,
                       "cache list": listing, "cache clear": clearing}
    return parser


def _add_cache_dir(group: Any) -> None:
    group.add_argument("--cache-dir", default=os.environ.get("SWR_TOKEN_CACHE_DIR"),
                       metavar="PATH",
                       help=_env_help("the token cache directory (default "
                                      "$XDG_CACHE_HOME/swr_token, else ~/.cache/swr_token)",
                                      "SWR_TOKEN_CACHE_DIR"))


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def _non_negative(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _lifetime(text: str) -> int:
    if not text.isdigit() or not 3 <= int(text) <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} must be whole seconds from 3 to 3600")
    return int(text)


def _whole_seconds(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive whole number of seconds")
    return int(text)


def _env_float(var: str, default: float) -> float:
    value = os.environ.get(var)
    if value is None:
        return default
    try:
        return _positive(value)
    except argparse.ArgumentTypeError:
        return default  # _cmd_get reports it as a usage error, with the variable's name


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


#: The library names what to change by its Python arguments; here the user typed flags.
#: (pattern, replacement), applied in order to every message from the library.
_CLI_WORDS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement) for pattern, replacement in (
        (r"\bmachine_secret_key= or CLERK_MACHINE_SECRET_KEY\b( environment variable)?",
         "CLERK_MACHINE_SECRET_KEY, --secret-file PATH or --secret-stdin"),
        (r"\bsecret_key= or CLERK_SECRET_KEY\b( environment variable)?",
         "CLERK_SECRET_KEY, --secret-file PATH or --secret-stdin"),
        (r"\bseconds_until_expiration\b", "--seconds-until-expiration"),
        (r"\btoken_format\b", "--token-format"),
        (r"pass private_key= as PEM text[^;]*object", "pass --private-key-file PATH (PEM)"),
        (r"\bprivate_key file\b", "--private-key-file"),
        (r"\bprivate_key\b", "the key in --private-key-file"),
        (r"\bkey_id\b", "--key-id"),
        (r"\bsigning_algorithm\b", "--signing-algorithm"),
        (r"\(resource=\)", "(--resource)"),
        (r"\bauth_method\b", "--auth-method"),
        (r"\bapi_url\b", "--api-url"),
        (r"\btoken_url\b", "--token-url"),
        (r"\bclient_id\b", "--client-id"),
        (r"\bclient_secret\b", "the client secret"),
        (r"\(scope=\)", "(--scope)"),
        (r"\(audience=\)", "(--audience)"),
        (r"\bthe session id\b", "the session id (--session)"),
        (r"\bthe template name\b", "the template name (--template)"),
        (r"\(verify=, ", "("),
    ))


def _in_cli_words(message: object) -> str:
    """A library message with its argument names replaced by this command's flags."""
    text = _one_line(message)
    for pattern, replacement in _CLI_WORDS:
        text = pattern.sub(replacement, text)
    return text


def _say(stream: IO[str], prog: str, message: object) -> None:
    stream.write(f"{prog}: error: {_in_cli_words(message)}\n")
    stream.flush()


# -- get ------------------------------------------------------------------------------------


def _read_secret(args: argparse.Namespace, env_var: str, what: str) -> tuple[str, str]:
    """The secret and where it came from (for messages; never the secret itself)."""
    if args.secret_file:
        where = f"--secret-file {args.secret_file}"
        try:
            with open(os.path.expanduser(args.secret_file), encoding="utf-8") as handle:
                secret = handle.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
            raise _UsageError(f"cannot read {where}: {reason}; give a readable file "
                              f"holding only the {what}") from None
    elif args.secret_stdin:
        where = "--secret-stdin"
        if sys.stdin is None:
            raise _UsageError(f"--secret-stdin was given but there is no stdin; pipe the "
                              f"{what} in or use --secret-file PATH")
        if sys.stdin.isatty():
            import getpass

            secret = getpass.getpass(f"{what}: ", stream=sys.stderr).strip()
        else:
            secret = sys.stdin.read().strip()
    else:
        where = env_var
        secret = os.environ.get(env_var, "").strip()
        if not secret:
            raise _UsageError(f"no {what}: set {env_var}, or pass --secret-file PATH or "
                              "--secret-stdin (never a flag: command lines show in ps)")
    if not secret:
        raise _UsageError(f"the {what} from {where} is empty; put the {what} there")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in secret):
        raise _UsageError(f"the {what} from {where} contains whitespace or control "
                          f"characters; it must hold only the {what}, on one line")
    return secret, where


def _build_source(args: argparse.Namespace
                  ) -> tuple[Callable[[], Any], dict[str, str | None], str, str | None]:
    """A factory of the source, the key to ask for, where the secret came from, and the
    source's identity (the cache's namespace) when known without building it: building a
    source loads the HTTP stack, which a cached answer does not need."""
    from ._identity import clerk_identity, oauth2_identity

    if args.session and args.token_url:
        raise _UsageError("both a Clerk session (--session / SWR_TOKEN_SESSION) and an OAuth2 "
                          "token URL (--token-url / SWR_TOKEN_TOKEN_URL) are set; give one")
    _refuse_flags(args, "--m2m" if args.m2m else None, _M2M_FLAGS,
                  "for Clerk M2M tokens (--m2m)")
    _refuse_flags(args, "--token-url" if args.token_url else None, _ASSERTION_FLAGS,
                  "for OAuth2 (--token-url)")
    if args.m2m:
        if args.session or args.token_url:
            raise _UsageError("--m2m asks for a machine-to-machine token, which has no session "
                              "and no token URL; drop --session / --token-url (or their "
                              "environment variables)")
        return _m2m_source(args)
    if args.token_url:
        if "--template" in args.given:
            raise _UsageError("--template is for Clerk (--session); OAuth2 takes --scope "
                              "and --audience")
        if not args.client_id:
            raise _UsageError("OAuth2 needs a client id: pass --client-id ID or set "
                              "SWR_TOKEN_CLIENT_ID")
        if args.private_key_file or args.auth_method == "private_key_jwt":
            return _oauth2_key_source(args)
        secret, where = _read_secret(args, "SWR_TOKEN_CLIENT_SECRET", "client secret")
        resource = tuple(args.resource or ())

        def oauth2() -> Any:
            from ._sources import OAuth2ClientCredentialsSource

            return OAuth2ClientCredentialsSource(
                args.token_url, args.client_id, secret, scope=args.scope,
                resource=resource or None, auth_method=args.auth_method,
                key_id=args.key_id, signing_algorithm=args.signing_algorithm)

        key = {"session_id": None, "template": None, "audience": args.audience or None}
        identity = oauth2_identity(args.token_url, args.client_id, secret,
                                   scope=args.scope or None, audience=None, resource=resource)
        return oauth2, key, where, identity
    if args.session:
        for flag in ("--client-id", "--scope", "--audience"):
            if flag in args.given:
                raise _UsageError(f"{flag} is for OAuth2 (--token-url); Clerk takes "
                                  "--session, --template and --api-url")
        secret, where = _read_secret(args, "CLERK_SECRET_KEY", "Clerk secret key")
        api_url = args.api_url or "https://api.clerk.com/v1"

        def clerk() -> Any:
            from ._sources import ClerkBackendSource

            return ClerkBackendSource(secret, api_url=api_url)

        key = {"session_id": args.session, "template": args.template or None, "audience": None}
        return clerk, key, where, clerk_identity(api_url, secret)
    raise _UsageError("say which token: --session ID for Clerk (with CLERK_SECRET_KEY) or "
                      "--token-url URL --client-id ID for OAuth2 (or their environment "
                      "variables)")


_M2M_FLAGS = ("--claims", "--seconds-until-expiration", "--token-format")
_ASSERTION_FLAGS = ("--private-key-file", "--key-id", "--signing-algorithm", "--auth-method",
                    "--resource")


def _refuse_flags(args: argparse.Namespace, mode: str | None, flags: Sequence[str],
                  what: str) -> None:
    """Flags of another kind of token are a usage error, not silently ignored."""
    if mode is not None:
        return
    given = [flag for flag in flags if flag in args.given]
    if given:
        raise _UsageError(f"{', '.join(given)}: only {what}")


def _m2m_source(args: argparse.Namespace
                ) -> tuple[Callable[[], Any], dict[str, str | None], str, str | None]:
    """``--m2m``: a ClerkM2MSource; the key has no parts (M2M tokens belong to the machine)."""
    from ._identity import M2M_DEFAULT_SECONDS, clerk_m2m_identity

    for flag in ("--client-id", "--scope", "--audience", "--template"):
        if flag in args.given:
            raise _UsageError(f"{flag} is not for --m2m: an M2M token belongs to the machine; "
                              "use --claims to put data in it")
    claims: dict[str, Any] | None = None
    if args.claims:
        try:
            claims = json.loads(args.claims)
        except ValueError:
            claims = None
        if not isinstance(claims, dict):
            raise _UsageError("--claims must be a JSON object, e.g. '{\"role\": \"cron\"}'")
    secret, where = _read_secret(args, "CLERK_MACHINE_SECRET_KEY", "Clerk machine secret key")
    api_url = args.api_url or "https://api.clerk.com/v1"
    seconds = args.seconds_until_expiration
    if isinstance(seconds, str):  # from SWR_TOKEN_M2M_SECONDS: argparse leaves defaults be
        try:
            seconds = _whole_seconds(seconds)
        except argparse.ArgumentTypeError as exc:
            raise _UsageError(f"SWR_TOKEN_M2M_SECONDS: {exc}") from None

    def m2m() -> Any:
        from ._clerk_m2m import ClerkM2MSource

        return ClerkM2MSource(secret, api_url=api_url, claims=claims,
                              seconds_until_expiration=seconds, token_format=args.token_format)

    key: dict[str, str | None] = {"session_id": None, "template": None, "audience": None}
    identity = None
    if args.token_format in ("jwt", "opaque"):
        identity = clerk_m2m_identity(api_url, secret, token_format=args.token_format,
                                      seconds_until_expiration=seconds or M2M_DEFAULT_SECONDS,
                                      claims=claims)
    return m2m, key, where, identity


def _oauth2_key_source(args: argparse.Namespace
                       ) -> tuple[Callable[[], Any], dict[str, str | None], str, str | None]:
    """OAuth2 with ``private_key_jwt``: the key only from ``--private-key-file``."""
    if args.secret_file or args.secret_stdin:
        raise _UsageError("--private-key-file authenticates with the key; drop "
                          "--secret-file / --secret-stdin")
    if not args.private_key_file:
        raise _UsageError("--auth-method private_key_jwt needs --private-key-file PATH")
    from pathlib import Path

    from ._assertion import check_key_algorithm, load_private_key, public_key_thumbprint
    from ._identity import oauth2_identity

    where = f"--private-key-file {args.private_key_file}"
    try:
        private_key = load_private_key(Path(os.path.expanduser(args.private_key_file)))
        algorithm = check_key_algorithm(private_key, args.signing_algorithm)
    except ConfigurationError as exc:
        raise _UsageError(str(exc)) from None
    resource = tuple(args.resource or ())

    def oauth2() -> Any:
        from ._sources import OAuth2ClientCredentialsSource

        return OAuth2ClientCredentialsSource(
            args.token_url, args.client_id, scope=args.scope, resource=resource or None,
            private_key=private_key, key_id=args.key_id, signing_algorithm=algorithm)

    key = {"session_id": None, "template": None, "audience": args.audience or None}
    identity = oauth2_identity(args.token_url, args.client_id,
                               f"{algorithm}:{public_key_thumbprint(private_key)}",
                               scope=args.scope or None, audience=None, resource=resource)
    return oauth2, key, where, identity


def _cmd_get(args: argparse.Namespace, prog: str) -> int:
    if os.environ.get("SWR_TOKEN_TIMEOUT") is not None:
        try:
            _positive(os.environ["SWR_TOKEN_TIMEOUT"])
        except argparse.ArgumentTypeError as exc:
            raise _UsageError(f"SWR_TOKEN_TIMEOUT: {exc}") from None
    make_source, key, where, identity = _build_source(args)
    store = None if args.no_cache else _open_store(args.cache_dir)
    cached = _cached(store, identity, key)
    if cached is not None:  # answered without loading the client, HTTP or JWT code
        if args.verbose and store is not None:
            sys.stderr.write(f"{prog}: INFO token {cached[3]} from the cache in {store.path}, "
                             f"{cached[2]:.0f} s left\n")
        return _print_token(args, key, *cached[:3])

    import logging

    from ._client import TokenClient

    logger = logging.getLogger("swr_token")
    if args.verbose:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{prog}: %(levelname)s %(message)s"))
        logger.setLevel(logging.DEBUG)
    else:
        handler = logging.NullHandler()  # nothing on stderr but the one-line error
    logger.addHandler(handler)
    try:
        source = make_source()
        options: dict[str, Any] = {} if store is None else {"store": store,
                                                             "margin": _CACHE_MARGIN}
        try:
            # --timeout bounds the whole wait: it is the fetch's budget, and its retries and
            # each request follow from it (the client stretches the source's own limits to
            # the budget). The wait itself gets a second more, as a safety net only.
            with TokenClient(source, fetch_timeout=args.timeout, **options) as client:
                info = client.get_token_info(
                    key["session_id"], template=key["template"], audience=key["audience"],
                    timeout=args.timeout + 1.0)
        finally:
            source.close()
        if store is not None and _cached(store, getattr(source, "identity", identity),
                                         key) is None:
            _warn(prog, f"the token could not be cached in {store.path} (see -v); the next "
                  "run will ask the issuer again (or pass --cache-dir PATH / --no-cache)")
    except ConfigurationError as exc:
        raise _UsageError(str(exc)) from None
    except TokenRejectedError as exc:
        credential = "key" if where.startswith("--private-key-file") else "secret"
        hint = f" (the {credential} came from {where})" if exc.status in (401, 403) else ""
        _say(sys.stderr, prog, f"{exc}{hint}")
        return EXIT_REJECTED
    except InvalidTokenError as exc:
        _say(sys.stderr, prog, exc)
        return EXIT_INVALID
    except TimedOutError as exc:
        from ._request import TokenRequest  # not at the top: a cached answer never needs it

        wanted = TokenRequest(key["session_id"], key["template"], None, key["audience"])
        why = "the issuer did not answer in time" if exc.last_error is None \
            else f"the last attempt failed: {exc.last_error}"
        _say(sys.stderr, prog, f"no token for {wanted.describe()} within --timeout "
             f"{args.timeout:g} s ({why}); raise --timeout if the issuer is this slow, or run "
             "again later")
        return EXIT_TRANSIENT
    except TokenFetchError as exc:
        _say(sys.stderr, prog, f"{exc} [gave up after retrying within --timeout "
             f"{args.timeout:g} s; run again later]")
        return EXIT_TRANSIENT
    except TokenError as exc:
        _say(sys.stderr, prog, exc)
        return EXIT_ERROR
    finally:
        logger.removeHandler(handler)
    return _print_token(args, key, info.raw, info.expires_at, info.remaining())


def _print_token(args: argparse.Namespace, key: dict[str, str | None], raw: str,
                 expires_at: float, remaining: float) -> int:
    if args.json:
        document = {
            "token": raw,
            "expires_at": round(expires_at, 3),
            "remaining": round(remaining, 3),
            "key": {"session_id": key["session_id"], "template": key["template"],
                    "organization_id": None, "audience": key["audience"]},
        }
        sys.stdout.write(json.dumps(document) + "\n")
    else:
        sys.stdout.write(raw + "\n")
    sys.stdout.flush()
    return EXIT_OK


def _warn(prog: str, message: str) -> None:
    sys.stderr.write(f"{prog}: warning: {_one_line(message)}\n")
    sys.stderr.flush()


# -- the token cache ------------------------------------------------------------------------


def _open_store(path: str | None) -> FileStore:
    from ._filestore import FileStore

    try:
        return FileStore(os.path.expanduser(path) if path else None)
    except ConfigurationError as exc:
        raise _UsageError(f"{exc}; or pass --no-cache") from None


def _cached(store: FileStore | None, identity: str | None,
            key: dict[str, str | None]) -> tuple[str, float, float, str] | None:
    """A cached token worth handing out (raw, expires_at, remaining, fingerprint), read
    without loading the HTTP stack or the JWT parser; ``None`` to ask the issuer."""
    if store is None or identity is None:
        return None
    from ._token import effective_margin

    try:
        stored = store.peek(identity, (key["session_id"], key["template"], None,
                                       key["audience"]))
    except OSError:
        return None  # an unreadable cache is no cache: the client path says why with -v
    if stored is None:
        return None
    raw, expires_at, issued_at = stored
    remaining = expires_at - time.time()
    lifetime = math.inf if issued_at is None else expires_at - issued_at
    if remaining <= effective_margin(_CACHE_MARGIN, lifetime):
        return None
    from ._token import fingerprint

    return raw, expires_at, remaining, fingerprint(raw)


def _cmd_cache(args: argparse.Namespace, prog: str) -> int:
    store = _open_store(args.cache_dir)
    if args.cache_command == "clear":
        removed = store.clear()
        sys.stdout.write(f"removed {removed} cached token(s) from {store.path}\n")
        return EXIT_OK
    now = time.time()
    entries = store.entries()
    names = ("session_id", "template", "organization_id", "audience")
    if args.json:
        rows = [{"key": dict(zip(names, entry.key, strict=True)), "source": entry.scope,
                 "fingerprint": entry.fingerprint,
                 "remaining": round(entry.token.expires_at - now, 1)} for entry in entries]
        sys.stdout.write(json.dumps({"path": store.path, "entries": rows}) + "\n")
        return EXIT_OK
    if not entries:
        sys.stdout.write(f"no cached tokens in {store.path}\n")
        return EXIT_OK
    table = [("KEY", "FINGERPRINT", "REMAINING", "SOURCE")]
    for entry in entries:
        parts = [f"{name}={value}" for name, value in zip(names, entry.key, strict=True)
                 if value is not None]
        table.append((" ".join(parts) or "(no key parts)", entry.fingerprint,
                      f"{entry.token.expires_at - now:.0f} s", entry.scope))
    widths = [max(len(line[i]) for line in table) for i in range(3)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        sys.stdout.write("  ".join([*cells, line[3]]) + "\n")
    sys.stdout.write(f"({len(entries)} in {store.path})\n")
    return EXIT_OK


# -- entry point ----------------------------------------------------------------------------


def _reject_unknown(parser: _Parser, extra: Sequence[str]) -> NoReturn:
    """Name unknown options without their values: a mistyped ``--secret X`` must not echo."""
    names = sorted({arg.split("=", 1)[0] for arg in extra if arg.startswith("-")})
    if any("secret" in name or "key" in name or "password" in name for name in names):
        parser.error(f"unknown option {', '.join(names)}: secrets are never taken from flags "
                     "(they show in ps and shell history); use the environment, "
                     "--secret-file PATH or --secret-stdin")
    if names:
        parser.error(f"unknown option {', '.join(names)} (values not shown)")
    parser.error(f"{len(extra)} unexpected argument(s) (not shown); flags take one value each")


_INSPECT_FROM_STDIN = (
    "inspect reads the token from stdin, not from an argument (arguments show in ps and "
    "shell history; yours is not shown): printf '%s\\n' \"$TOKEN\" | swr-token inspect, or "
    "run 'swr-token inspect -' and paste it (a header line 'Authorization: Bearer ...' "
    "works too), then Enter and Ctrl-D")


def main(argv: Sequence[str] | None = None, *, prog: str = "swr-token") -> int:
    """Run the command line; returns the exit status."""
    parser = _build_parser(prog)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            args, extra = parser.parse_known_args(argv)
            args.given = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
            if args.command == "inspect" and (
                    args.input not in (None, "-") or any(not a.startswith("-") for a in extra)):
                # Most likely `swr-token inspect "$TOKEN"`: never echo it, say how instead.
                _say(sys.stderr, f"{prog} inspect", _INSPECT_FROM_STDIN)
                return EXIT_USAGE
            if extra:
                _reject_unknown(parser.commands.get(args.command, parser), extra)
        except SystemExit as exc:  # --help, --version, a usage error: already reported
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        sub = f"{prog} {args.command}"
        try:
            if args.command == "get":
                return _cmd_get(args, sub)
            if args.command == "cache":
                if args.cache_command is None:
                    parser.commands["cache"].print_help(sys.stderr)
                    return EXIT_USAGE
                return _cmd_cache(args, f"{sub} {args.cache_command}")
            if args.command == "inspect":
                from ._inspect import inspect_stdin

                return inspect_stdin(as_json=args.json, prog=sub)
            from ._demo import DemoOptions, run_demo

            return run_demo(DemoOptions(
                duration=args.duration, fail_for=args.fail_for, lifetime=args.lifetime,
                live=sys.stdout.isatty() and not args.timeline,
                tty=sys.stdout.isatty(),
                color=sys.stdout.isatty() and not os.environ.get("NO_COLOR")), sys.stdout)
        except _UsageError as exc:
            _say(sys.stderr, sub, exc)
            return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`swr-token demo | head`): nothing left to say to it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
