"""``get``'s small parser (the one a cached run uses, without argparse) against argparse.

Whatever the small parser accepts, argparse parses to the same values; whatever it leaves to
argparse is a usage error there, or one of the few spellings only argparse reads.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from swr_token.cli.flags import GET_GROUPS, parse_get
from swr_token.cli.parser import parse

ENV_VARS = sorted({flag.env for _, _, flags in GET_GROUPS for flag in flags if flag.env})

ACCEPTED = [
    ["get"],
    ["get", "--session", "sess_1"],
    ["get", "--session=sess_1", "--template", "t", "--json", "-v"],
    ["get", "--session", "s", "--session", "last wins"],
    ["get", "--session=-starts-with-a-dash", "--api-url="],
    ["get", "--session", "", "--timeout", "2.5", "--no-cache", "--cache-dir", "/tmp/x"],
    ["get", "--session", "s", "--verbose", "--secret-file", "~/secret"],
    ["get", "--session", "s", "--secret-stdin"],
    ["get", "--m2m", "--claims", '{"role": "cron"}', "--seconds-until-expiration", "60",
     "--token-format", "opaque"],
    ["get", "--m2m", "--claims={}", "--token-format=jwt"],
    ["get", "--token-url", "https://a.example/t", "--client-id", "c", "--scope", "a b",
     "--audience", "api", "--resource", "https://r1/", "--resource=https://r2/"],
    ["get", "--token-url", "u", "--client-id", "c", "--auth-method", "private_key_jwt",
     "--private-key-file", "k.pem", "--key-id", "kid", "--signing-algorithm", "ES256"],
    ["get", "--token-url", "u", "--auth-method=client_secret_jwt", "--signing-algorithm=HS256"],
]

LEFT_TO_ARGPARSE = [
    ["get", "--help"], ["get", "-h"], ["--version"], ["get", "--version"], [], ["cache"],
    ["get", "--bogus"], ["get", "--sess", "s"],
    ["get", "--session"], ["get", "--session", "-x"], ["get", "--session", "s", "extra"],
    ["get", "--json=1"], ["get", "-v=1"], ["get", "--timeout", "0"], ["get", "--timeout", "x"],
    ["get", "--timeout=-1"], ["get", "--timeout", "nan"], ["get", "--token-format", "pem"],
    ["get", "--auth-method", "none"], ["get", "--signing-algorithm", "none"],
    ["get", "--seconds-until-expiration", "0"], ["get", "--seconds-until-expiration", "1.5"],
    ["get", "--secret-file", "f", "--secret-stdin"], ["get", "--", "--session", "s"],
    ["get", "--secret", "x"], ["get", "-"],
]

#: Other commands, and spellings argparse reads that the small parser leaves to it.
ARGPARSE_ONLY = [
    ["demo"], ["inspect"], ["cache", "list"], ["--", "get"],
    ["get", "-vv"], ["get", "--claims", "-x y"], ["get", "--session", "-"],
    ["get", "--timeout", "-5"],  # refused by argparse too, after reading -5 as the value
]


@pytest.fixture(autouse=True)
def _no_get_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def _argparse(argv: list[str]) -> dict[str, object] | int:
    parsed = parse(argv, "swr-token")
    return parsed if isinstance(parsed, int) else vars(parsed)


@pytest.mark.parametrize("argv", ACCEPTED, ids=" ".join)
def test_what_the_small_parser_reads_argparse_reads_the_same(argv: list[str]) -> None:
    small = parse_get(argv)
    assert small is not None
    assert vars(small) == _argparse(argv)


@pytest.mark.parametrize("argv", LEFT_TO_ARGPARSE, ids=" ".join)
def test_what_it_leaves_to_argparse_argparse_refuses_or_explains(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_get(argv) is None
    assert isinstance(_argparse(argv), int)  # help, version or a usage error, printed
    out, err = capsys.readouterr()
    assert out or err


@pytest.mark.parametrize("argv", ARGPARSE_ONLY, ids=" ".join)
def test_unusual_spellings_are_left_to_argparse(argv: list[str]) -> None:
    assert parse_get(argv) is None


@pytest.mark.parametrize("env", [
    {"SWR_TOKEN_SESSION": "sess_env", "SWR_TOKEN_TEMPLATE": "t", "CLERK_API_URL": "u"},
    {"SWR_TOKEN_M2M": "0", "SWR_TOKEN_M2M_CLAIMS": "{}", "SWR_TOKEN_M2M_SECONDS": "90",
     "SWR_TOKEN_M2M_FORMAT": "anything"},  # not held to the choices, as in argparse
    {"SWR_TOKEN_RESOURCE": "https://r1/ https://r2/", "SWR_TOKEN_AUTH_METHOD": "x",
     "SWR_TOKEN_SIGNING_ALG": "y", "SWR_TOKEN_KEY_ID": "k", "SWR_TOKEN_PRIVATE_KEY_FILE": "p"},
    {"SWR_TOKEN_TIMEOUT": "3", "SWR_TOKEN_NO_CACHE": "off", "SWR_TOKEN_CACHE_DIR": "/c"},
    {"SWR_TOKEN_TIMEOUT": "bad", "SWR_TOKEN_NO_CACHE": "yes", "SWR_TOKEN_M2M": ""},
    {"SWR_TOKEN_TOKEN_URL": "", "SWR_TOKEN_CLIENT_ID": "", "SWR_TOKEN_SCOPE": "",
     "SWR_TOKEN_AUDIENCE": ""},
])
@pytest.mark.parametrize("argv", [
    ["get"], ["get", "--resource", "https://r3/", "--m2m", "--timeout", "7"],
    ["get", "--seconds-until-expiration", "30", "--session", "typed"],
], ids=" ".join)
def test_environment_defaults_are_argparses(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], argv: list[str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    small = parse_get(argv)
    assert small is not None
    assert vars(small) == _argparse(argv)


def test_a_bad_number_in_the_environment_is_argparses_to_report(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SWR_TOKEN_M2M_SECONDS", "soon")
    assert parse_get(["get", "--m2m"]) is None
    assert _argparse(["get", "--m2m"]) == 2
    assert "--seconds-until-expiration: 'soon' must be a positive whole number" in \
        capsys.readouterr().err
    # Typed, the flag wins and the variable is never read.
    assert parse_get(["get", "--m2m", "--seconds-until-expiration", "5"]) is not None


def test_import_swr_token_does_not_load_the_command_line() -> None:
    probe = ("import sys, swr_token; from swr_token import TokenClient; "
             "print([m for m in sys.modules if m.startswith('swr_token.cli')])")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_python_m_swr_token_is_the_command_line() -> None:
    done = subprocess.run([sys.executable, "-m", "swr_token", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("swr_token ")
