"""``swr-token inspect``: decode a token read from stdin, without verifying it.

The token comes from stdin, never an argument (arguments show in ``ps``), and is never printed
back: only its fingerprint, header, claims and remaining life.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
import time
from typing import TYPE_CHECKING, Any

from .._token import decode_unverified, fingerprint, unverified_header

if TYPE_CHECKING:
    from .flags import Args

__all__ = ["MAX_INPUT", "inspect_stdin", "run"]

#: Bytes read from stdin at most: a token is a few KiB; more is not a token.
MAX_INPUT = 64 * 1024
_NOT_VERIFIED = "not verified: the signature was not checked; do not trust these claims"
_TIMES = ("exp", "iat", "nbf", "auth_time")


class _Refused(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _number(value: object) -> float | None:
    """A claim as a time in seconds, if it is a sane number (a 400-digit one is not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and abs(value) > 10**15:
        return None
    number = float(value)
    return number if math.isfinite(number) and abs(number) <= 1e15 else None


def _shown(value: object) -> str:
    """``value`` fit for a terminal: control characters and other non-printables escaped
    (``\\x1b``, ``\\u202e``), so a claim cannot move the cursor, recolour or hide text."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


def _read_stdin(stdin: Any) -> str:
    """At most MAX_INPUT bytes of UTF-8 from stdin, else a refusal (exit 2)."""
    if stdin is None:
        return ""
    source = getattr(stdin, "buffer", None)
    data: bytes | str = (source.read(MAX_INPUT + 1) if source is not None
                         else stdin.read(MAX_INPUT + 1))
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if len(data) > MAX_INPUT:
        raise _Refused(f"stdin holds more than {MAX_INPUT // 1024} KiB, far more than any "
                       "token; pipe in only the token", 2)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused("stdin is not UTF-8 text; pipe in the token as printed by the "
                       "issuer or by 'swr-token get'", 2) from None


def _read_token(text: str) -> str:
    """A bare JWT, ``Bearer <jwt>``, an ``Authorization: Bearer <jwt>`` line, or the JSON
    that ``swr-token get --json`` prints."""
    text = text.strip()
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except ValueError:
            raise _Refused("stdin holds neither a JWT nor JSON with a 'token'", 5) from None
        token = document.get("token") if isinstance(document, dict) else None
        if not isinstance(token, str):
            raise _Refused("the JSON on stdin has no 'token' string; pipe in the output of "
                           "'swr-token get --json' or a bare JWT", 5)
        text = token.strip()
    if text[:14].lower() == "authorization:":  # a header line pasted whole
        text = text[14:].strip()
    if text[:7].lower() == "bearer ":
        text = text[7:].strip()
    if not text:
        raise _Refused("no token on stdin; pipe one in, for example: "
                       "swr-token get --session ID | swr-token inspect", 2)
    return text


def _when(epoch: float, now: float) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return "(out of range)"
    delta = epoch - now
    ago = f"in {delta:.0f} s" if delta >= 0 else f"{-delta:.0f} s ago"
    return f"{moment:%Y-%m-%d %H:%M:%SZ} ({ago})"


def _decode(raw: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header = unverified_header(raw)
    claims = None if header is None else decode_unverified(raw)
    if header is None or claims is None:
        raise _Refused("stdin does not hold a JWT; an opaque token carries no claims to "
                       "inspect (ask the issuer's introspection endpoint)", 5)
    return header, claims


def _report(raw: str, header: dict[str, Any], claims: dict[str, Any], now: float) -> list[str]:
    exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
    lines = [_NOT_VERIFIED, f"fingerprint  {fingerprint(raw)}",
             "header       " + "  ".join(f"{_shown(k)}={_shown(v)}"
                                        for k, v in sorted(header.items())),
             "claims"]
    width = max((len(_shown(name)) for name in claims), default=0)
    for name, value in claims.items():
        shown = _shown(value)
        moment = _number(value)
        if name in _TIMES and moment is not None:
            shown = f"{shown}  {_when(moment, now)}"
        lines.append(f"  {_shown(name):<{width}}  {shown}")
    if exp is None:
        lines.append("remaining    unknown: no numeric 'exp' claim")
    elif exp <= now:
        lines.append(f"remaining    none: expired {now - exp:.0f} s ago (by this machine's clock)")
    else:
        of = f" of {exp - iat:.0f} s" if iat is not None else ""
        lines.append(f"remaining    {exp - now:.0f} s{of} (by this machine's clock)")
    return lines


def run(args: Args, prog: str) -> int:
    """``swr-token inspect [--json]``."""
    return inspect_stdin(as_json=args.json, prog=prog)


def inspect_stdin(*, as_json: bool, prog: str) -> int:
    """Read a token from stdin and print what it says; the exit status (0, 2 or 5)."""
    stdin = sys.stdin
    if stdin is not None and stdin.isatty():
        sys.stderr.write(f"{prog}: paste a token, then press Enter and Ctrl-D\n")
    try:
        raw = _read_token(_read_stdin(stdin))
        header, claims = _decode(raw)
    except _Refused as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return exc.status
    except (ValueError, TypeError, RecursionError) as exc:  # never a traceback
        sys.stderr.write(f"{prog}: error: stdin could not be read as a token "
                         f"({type(exc).__name__})\n")
        return 5
    now = time.time()
    if as_json:
        exp = _number(claims.get("exp"))
        document = {
            "verified": False, "fingerprint": fingerprint(raw), "header": header,
            "claims": claims, "remaining": None if exp is None else round(exp - now, 3),
            "expired": None if exp is None else exp <= now,
        }
        sys.stdout.write(json.dumps(document, default=str) + "\n")
    else:
        sys.stdout.write("\n".join(_report(raw, header, claims, now)) + "\n")
    return 0
