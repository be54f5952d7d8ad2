"""The ``swr-token`` command: ``demo``, ``get`` for shell scripts and cron, ``inspect``,
``cache list|clear``.

An application on top of the library, loaded by the console script and ``python -m
swr_token`` only: ``import swr_token`` does not import it. Secrets come only from the
environment, a file or stdin: a command line shows in ``ps`` and in shell history. No token
or secret is ever printed, except the token ``get`` is asked for.

A ``get`` spelled the usual way is parsed by :func:`.flags.parse_get`, and one the file cache
can answer loads neither argparse nor the client, HTTP or JWT code; everything else goes
through the argparse parser of :mod:`.parser`.
"""

from __future__ import annotations

import os
import sys

from .common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, UsageError, say
from .flags import Args, parse_get

TYPE_CHECKING = False  # not typing's: a cached `get` must not pay for importing typing
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None, *, prog: str = "swr-token") -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parse(argv, prog)
        if isinstance(args, int):  # --help, --version or a usage error, already reported
            return args
        sub = f"{prog} {args.command}"
        try:
            return _run(args, sub)
        except UsageError as exc:
            say(sys.stderr, sub, exc)
            return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`swr-token demo | head`): nothing left to say to it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR


def _parse(argv: list[str], prog: str) -> Args | int:
    """The command to run, parsed without argparse when the small parser can."""
    args = parse_get(argv)
    if args is None:
        from .parser import parse

        parsed = parse(argv, prog)
        if isinstance(parsed, int):
            return parsed
        args = parsed
    # The flags as typed, values aside: one of another kind of token is refused when typed
    # (its environment variable, set for another command, is not).
    args.given = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    return args


def _run(args: Args, prog: str) -> int:
    if args.command == "get":
        from . import get

        return get.run(args, prog)
    if args.command == "cache":
        from . import cache

        return cache.run(args, f"{prog} {args.cache_command}")
    if args.command == "inspect":
        from . import inspect

        return inspect.run(args, prog)
    from . import demo

    return demo.run(args, prog)
