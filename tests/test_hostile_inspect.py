"""``swr-token inspect`` on hostile input: escaped output, bounded input, one-line refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import jwt
import pytest

TIMEOUT = 30.0


def inspect(stdin: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "swr_token", "inspect", *args], input=stdin,
                          capture_output=True, timeout=TIMEOUT, env={"PATH": "/usr/bin:/bin"})


def hostile_token() -> str:
    claims = {"sub": "user\x1b[2J\x1b[31mroot\r\nexp 9999", "exp": 10**400, "iat": 1,
              "na\x07me": "\u202egnp.exe", "nested": {"k": "\x00"}}
    return jwt.encode(claims, "k" * 32, algorithm="HS256",
                      headers={"kid": "k\x1b]0;owned\x07", "x": "\x9b"})


def test_control_characters_in_claims_and_headers_are_escaped() -> None:
    done = inspect(hostile_token().encode())
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    for bad in ("\x1b", "\x07", "\r", "\x00", "\u202e", "\x9b"):
        assert bad not in out, repr(bad)
    assert "\\x1b[2J" in out and "\\u202e" in out and "\\x07" in out
    assert b"Traceback" not in done.stderr
    doc = json.loads(inspect(hostile_token().encode(), "--json").stdout)  # JSON escapes too
    assert doc["claims"]["sub"].startswith("user\x1b")


@pytest.mark.parametrize(("stdin", "what"), [
    (b"a" * (64 * 1024 + 1), b"64 KiB"),
    (b"eyJ" + b"\xff\xfe" + b"abc", b"not UTF-8"),
    (b"\x80" * 10, b"not UTF-8"),
])
def test_oversized_or_non_utf8_input_is_exit_2_with_one_line(stdin: bytes, what: bytes) -> None:
    done = inspect(stdin)
    assert done.returncode == 2, done.stderr
    assert done.stdout == b""
    assert done.stderr.count(b"\n") == 1 and what in done.stderr, done.stderr
    assert b"Traceback" not in done.stderr


def test_input_just_under_the_cap_is_read() -> None:
    token = hostile_token().encode()
    done = inspect(token + b" " * (64 * 1024 - len(token)))
    assert done.returncode == 0, done.stderr
