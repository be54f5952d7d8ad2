"""The argparse parser of every command: help, usage errors, and what the small parser of
:mod:`.flags` leaves to it. ``get``'s options come from :data:`.flags.GET_GROUPS`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .._version import __version__
from .common import EXIT_USAGE, say
from .flags import CACHE_DIR, GET_GROUPS, Args, BadValue, Flag, lifetime, non_negative, positive

__all__ = ["build_parser", "parse"]

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

_INSPECT_FROM_STDIN = (
    "inspect reads the token from stdin, not from an argument (arguments show in ps and "
    "shell history; yours is not shown): printf '%s\\n' \"$TOKEN\" | swr-token inspect, or "
    "run 'swr-token inspect -' and paste it (a header line 'Authorization: Bearer ...' "
    "works too), then Enter and Ctrl-D")


class _Parser(argparse.ArgumentParser):
    """Errors as one line on stderr, saying where the help is, then exit 2."""

    commands: dict[str, _Parser]

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _argparse_type(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """``check`` as argparse's ``type=``: its refusal shown as it is worded."""
    def convert(text: str) -> Any:
        try:
            return check(text)
        except BadValue as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _env_help(text: str, var: str) -> str:
    value = os.environ.get(var)
    return f"{text} (env {var}{'' if value is None else ', set'})"


def build_parser(prog: str) -> _Parser:
    """The whole command line; ``parser.commands`` names each command's own parser."""
    parser = _Parser(
        prog=prog, allow_abbrev=False,
        description="Short-lived auth tokens, served stale-while-revalidate.",
        epilog="Start with: swr-token demo. Every command has --help.",
    )
    parser.add_argument("--version", action="version", version=f"swr_token {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = {"demo": _add_demo(commands), "get": _add_get(commands),
                       "inspect": _add_inspect(commands), **_add_cache(commands)}
    return parser


def _add_demo(commands: Any) -> _Parser:
    demo: _Parser = commands.add_parser(
        "demo", help="watch the cache work against a local issuer (about 30 s)",
        description="Runs a local token issuer on 127.0.0.1 with short-lived tokens and a "
        "handful of reader threads sharing one TokenClient; shows each key's zone, every "
        "background refresh, every wait, then a summary. Prints fingerprints, never tokens. "
        "Ends by itself, or with Ctrl-C (exit 130).",
        allow_abbrev=False,
    )
    demo.add_argument("--duration", type=_argparse_type(positive), default=30.0,
                      metavar="SECONDS", help="how long to run (default: 30)")
    demo.add_argument("--fail-for", type=_argparse_type(non_negative), default=0.0,
                      metavar="SECONDS",
                      help="inject an issuer outage (HTTP 503) of this length mid-run, to "
                      "show stale serving and recovery (default: none)")
    demo.add_argument("--lifetime", type=_argparse_type(lifetime), default=12, metavar="SECONDS",
                      help="token lifetime; the thresholds scale with it (default: 12)")
    demo.add_argument("--timeline", action="store_true",
                      help="print a timeline of events even on a terminal (the default when "
                      "stdout is not a terminal)")
    return demo


def _add_get(commands: Any) -> _Parser:
    get: _Parser = commands.add_parser(
        "get", help="print a token on stdout, for shell scripts and cron",
        description="Fetches one token and prints it on stdout. Configure Clerk (--session)\n"
        "or OAuth2 client credentials (--token-url); every flag can also come from the\n"
        "environment variable named in its help.",
        epilog=_GET_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    for title, exclusive, flags in GET_GROUPS:
        group: Any = get.add_argument_group(title)
        if exclusive:
            group = group.add_mutually_exclusive_group()
        for flag in flags:
            _add_flag(group, flag)
    return get


def _add_flag(group: Any, flag: Flag) -> None:
    options: dict[str, Any] = {
        "default": flag.default_value(),
        "help": flag.help if flag.env is None else _env_help(flag.help, flag.env)}
    if flag.kind == "switch":
        options["action"] = "store_true"
    elif flag.kind == "append":
        options["action"] = "append"
    if flag.metavar is not None:
        options["metavar"] = flag.metavar
    if flag.choices is not None:
        options["choices"] = flag.choices
    if flag.check is not None:
        options["type"] = _argparse_type(flag.check)
    group.add_argument(*flag.names, **options)


def _add_inspect(commands: Any) -> _Parser:
    inspect: _Parser = commands.add_parser(
        "inspect", help="decode a token read from stdin: claims and remaining life",
        description="Reads a token from stdin (not an argument: arguments show in ps) and "
        "prints its header, claims and remaining life by this machine's clock. The signature "
        "is NOT verified: do not trust what it shows. Accepts a bare JWT, 'Bearer <jwt>', a "
        "pasted 'Authorization: Bearer <jwt>' line or the output of 'swr-token get --json'. "
        "Never prints the token itself.",
        epilog="examples:\n  swr-token get --session sess_123 | swr-token inspect\n"
        "  printf '%s\\n' \"$TOKEN\" | swr-token inspect\n"
        "  swr-token inspect -        (then paste the token or header line, Enter, Ctrl-D)\n\n"
        f"{_EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    inspect.add_argument("--json", action="store_true", help="print the result as JSON")
    inspect.add_argument("input", nargs="?", metavar="-",
                         help="'-' or nothing: read the token from stdin (never an argument)")
    return inspect


def _add_cache(commands: Any) -> dict[str, _Parser]:
    cache: _Parser = commands.add_parser(
        "cache", help="list or clear the tokens 'get' keeps between runs",
        description="'swr-token get' keeps the tokens it fetches in a private directory "
        "(0700, files 0600; tokens only, never a secret) and reuses them while they live. "
        "'list' shows each entry's key, fingerprint and remaining life (never the token); "
        "'clear' removes them all.", allow_abbrev=False,
    )
    actions = cache.add_subparsers(dest="cache_command", metavar="ACTION")
    listing: _Parser = actions.add_parser(
        "list", help="key, fingerprint and remaining life of each cached token",
        allow_abbrev=False)
    listing.add_argument("--json", action="store_true", help="print the entries as JSON")
    clearing: _Parser = actions.add_parser("clear", help="remove every cached token",
                                           allow_abbrev=False)
    for action in (listing, clearing):
        _add_flag(action, CACHE_DIR)
    return {"cache": cache, "cache list": listing, "cache clear": clearing}


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


def parse(argv: Sequence[str], prog: str) -> Args | int:
    """The parsed arguments of a command to run, or the exit status when there is none to
    run (``--help``, ``--version``, a usage error: already reported on stdout or stderr)."""
    parser = build_parser(prog)
    try:
        args, extra = parser.parse_known_args(argv, namespace=Args())
        if args.command == "inspect" and (
                args.input not in (None, "-") or any(not a.startswith("-") for a in extra)):
            # Most likely `swr-token inspect "$TOKEN"`: never echo it, say how instead.
            say(sys.stderr, f"{prog} inspect", _INSPECT_FROM_STDIN)
            return EXIT_USAGE
        if extra:
            _reject_unknown(parser.commands.get(args.command, parser), extra)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    unfinished = _without_command(parser, args)
    if unfinished is not None:
        unfinished.print_help(sys.stderr)
        return EXIT_USAGE
    return args


def _without_command(parser: _Parser, args: Args) -> _Parser | None:
    """The parser whose command is missing (``swr-token``, ``swr-token cache``), if any."""
    if args.command is None:
        return parser
    if args.command == "cache" and args.cache_command is None:
        return parser.commands["cache"]
    return None
