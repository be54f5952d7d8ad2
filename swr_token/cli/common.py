"""What every command shares: exit codes, the usage error, and one-line messages.

Imported by every run, a cached ``get`` included: nothing here imports more than ``sys``
until a message is printed.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing's: a cached `get` must not pay for importing typing
if TYPE_CHECKING:
    import re
    from typing import IO

__all__ = [
    "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_INVALID", "EXIT_OK", "EXIT_REJECTED",
    "EXIT_TRANSIENT", "EXIT_USAGE", "UsageError", "in_cli_words", "one_line", "say", "warn",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_TRANSIENT = 4
EXIT_INVALID = 5
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A problem with how the command was called: exit 2, one line on stderr."""


def one_line(message: object) -> str:
    return " ".join(str(message).split())


#: The library names what to change by its Python arguments; here the user typed flags.
#: (pattern, replacement), applied in order to every message from the library.
_CLI_WORDS = (
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
)
_compiled: list[tuple[re.Pattern[str], str]] = []  # on the first message: runs that print
# none (a cached `get`) do not compile twenty patterns


def in_cli_words(message: object) -> str:
    """A library message with its argument names replaced by this command's flags."""
    if not _compiled:
        import re

        _compiled.extend((re.compile(pattern), words) for pattern, words in _CLI_WORDS)
    text = one_line(message)
    for pattern, replacement in _compiled:
        text = pattern.sub(replacement, text)
    return text


def say(stream: IO[str], prog: str, message: object) -> None:
    """``prog: error: message`` on one line, in the flags' words."""
    stream.write(f"{prog}: error: {in_cli_words(message)}\n")
    stream.flush()


def warn(prog: str, message: object) -> None:
    sys.stderr.write(f"{prog}: warning: {one_line(message)}\n")
    sys.stderr.flush()
