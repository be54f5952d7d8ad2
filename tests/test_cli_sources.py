"""``swr-token get --m2m`` and the OAuth2 assertion options, against a real LocalIssuer."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from swr_token import ClerkM2MSource, OAuth2ClientCredentialsSource
from swr_token.testing import LocalIssuer

MACHINE_KEY = "ak_test_cli_very_secret_machine"
CLIENT_SECRET = "cli_0123456789abcdef0123456789abcdef_very_secret"
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OUR_VARS = ("CLERK_SECRET_KEY", "CLERK_MACHINE_SECRET_KEY", "SWR_TOKEN_CLIENT_SECRET",
            "SWR_TOKEN_SESSION", "SWR_TOKEN_TEMPLATE", "CLERK_API_URL", "SWR_TOKEN_TOKEN_URL",
            "SWR_TOKEN_CLIENT_ID", "SWR_TOKEN_SCOPE", "SWR_TOKEN_AUDIENCE", "SWR_TOKEN_TIMEOUT",
            "SWR_TOKEN_M2M", "SWR_TOKEN_M2M_CLAIMS", "SWR_TOKEN_M2M_SECONDS",
            "SWR_TOKEN_M2M_FORMAT", "SWR_TOKEN_RESOURCE", "SWR_TOKEN_AUTH_METHOD",
            "SWR_TOKEN_PRIVATE_KEY_FILE", "SWR_TOKEN_KEY_ID", "SWR_TOKEN_SIGNING_ALG",
            "SWR_TOKEN_NO_CACHE", "SWR_TOKEN_CACHE_DIR")


class Ran:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture(scope="module")
def shared_issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer(machine_secret_key=MACHINE_KEY, client_secret=CLIENT_SECRET) as iss:
        iss.register_client_key(EC_KEY, kid="cli-key")
        yield iss


@pytest.fixture
def issuer(shared_issuer: LocalIssuer) -> Iterator[LocalIssuer]:
    shared_issuer.reset_counts()
    yield shared_issuer
    shared_issuer.clear_faults()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "client.pem"
    path.write_bytes(EC_KEY.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return path


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> Any:
    """``main()`` in this process, a clean environment and a private cache directory."""
    from swr_token.cli import main

    for name in OUR_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SWR_TOKEN_CACHE_DIR", str(tmp_path / "cache"))

    def call(*args: str, env: dict[str, str] | None = None, stdin: str = "") -> Ran:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = main(["get", *args])
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return call


def error_line(ran: Ran, code: int) -> str:
    assert ran.returncode == code, (ran.returncode, ran.stderr)
    assert ran.stdout == "" and ran.stderr.count("\n") == 1
    for secret in (MACHINE_KEY, CLIENT_SECRET, "very_secret", "PRIVATE KEY"):
        assert secret not in ran.stderr
    return ran.stderr


# -- --m2m --------------------------------------------------------------------------------------


def test_m2m_from_the_environment(run: Any, issuer: LocalIssuer) -> None:
    ran = run("--m2m", "--api-url", issuer.clerk_api_url, "--claims", '{"role": "cron"}',
              "--seconds-until-expiration", "600", "--json",
              env={"CLERK_MACHINE_SECRET_KEY": MACHINE_KEY})
    assert ran.returncode == 0, ran.stderr
    document = json.loads(ran.stdout)
    claims = jwt.decode(document["token"], options={"verify_signature": False})
    assert claims["role"] == "cron" and claims["exp"] - claims["iat"] == 600
    assert document["key"] == {"session_id": None, "template": None, "organization_id": None,
                               "audience": None}
    sent = issuer.requests("m2m")[0]
    assert sent.headers["authorization"] == f"Bearer {MACHINE_KEY}"
    assert json.loads(sent.body) == {"token_format": "jwt", "seconds_until_expiration": 600,
                                     "claims": {"role": "cron"}}


@pytest.mark.parametrize("how", ["file", "stdin"])
def test_m2m_secret_from_a_file_or_stdin(run: Any, issuer: LocalIssuer, tmp_path: Path,
                                         how: str) -> None:
    secret_file = tmp_path / "machine-key"
    secret_file.write_text(MACHINE_KEY + "\n")
    flags = ["--secret-file", str(secret_file)] if how == "file" else ["--secret-stdin"]
    ran = run("--m2m", "--api-url", issuer.clerk_api_url, "--token-format", "opaque", *flags,
              stdin=MACHINE_KEY + "\n")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("mt_")


def test_m2m_runs_reuse_the_cached_token_one_creation(run: Any, issuer: LocalIssuer) -> None:
    """Each creation is billed: a loop of runs on one host creates one token per lifetime."""
    env = {"CLERK_MACHINE_SECRET_KEY": MACHINE_KEY}
    tokens = {run("--m2m", "--api-url", issuer.clerk_api_url, env=env).stdout
              for _ in range(5)}
    assert len(tokens) == 1 and issuer.issued_count("m2m") == 1
    # Other claims are another source: never the cached token of the first.
    other = run("--m2m", "--api-url", issuer.clerk_api_url, "--claims", '{"a": 1}', env=env)
    assert other.stdout not in tokens and issuer.issued_count("m2m") == 2


def test_m2m_cli_identity_is_the_sources(issuer: LocalIssuer) -> None:
    """The cached path names the cache entry without building the source: the same name."""
    from swr_token._identity import M2M_DEFAULT_SECONDS, clerk_m2m_identity

    source = ClerkM2MSource(MACHINE_KEY, api_url=issuer.clerk_api_url, claims={"b": [1, 2]})
    assert source.identity == clerk_m2m_identity(
        issuer.clerk_api_url, MACHINE_KEY, token_format="jwt",
        seconds_until_expiration=M2M_DEFAULT_SECONDS, claims={"b": [1, 2]})
    source.close()


@pytest.mark.parametrize(("args", "says"), [
    (("--m2m", "--claims", "[1]"), "--claims must be a JSON object"),
    (("--m2m", "--claims", "{nope"), "--claims must be a JSON object"),
    (("--m2m", "--session", "sess_1"), "drop --session"),
    (("--m2m", "--audience", "api"), "--audience is not for --m2m"),
    (("--m2m", "--seconds-until-expiration", "0"), "positive whole number"),
    (("--session", "sess_1", "--claims", "{}"), "--claims: only for Clerk M2M tokens (--m2m)"),
    (("--m2m",), "no Clerk machine secret key: set CLERK_MACHINE_SECRET_KEY"),
])
def test_m2m_usage_errors(run: Any, issuer: LocalIssuer, args: tuple[str, ...],
                          says: str) -> None:
    env = {} if args == ("--m2m",) else {"CLERK_MACHINE_SECRET_KEY": MACHINE_KEY,
                                         "CLERK_SECRET_KEY": "sk_test_x"}
    ran = run(*args, "--api-url", issuer.clerk_api_url, env=env)
    assert says in error_line(ran, 2)
    assert issuer.request_count() == 0


def test_m2m_rejected_key_says_where_it_came_from(run: Any, issuer: LocalIssuer) -> None:
    ran = run("--m2m", "--api-url", issuer.clerk_api_url, "--no-cache", "--secret-stdin",
              stdin="ak_test_wrong_very_secret")
    line = error_line(ran, 3)
    assert "HTTP 401 (authentication_invalid)" in line
    assert "CLERK_MACHINE_SECRET_KEY, --secret-file PATH or --secret-stdin" in line
    assert "(the secret came from --secret-stdin)" in line


def test_m2m_outage_is_transient(run: Any, issuer: LocalIssuer) -> None:
    issuer.fail(503, endpoint="m2m")
    ran = run("--m2m", "--api-url", issuer.clerk_api_url, "--no-cache", "--timeout", "1",
              env={"CLERK_MACHINE_SECRET_KEY": MACHINE_KEY})
    assert "HTTP 503" in error_line(ran, 4)


def test_secret_flags_are_still_refused(run: Any) -> None:
    ran = run("--m2m", "--machine-secret-key", MACHINE_KEY)
    line = error_line(ran, 2)
    assert "never taken from flags" in line


# -- OAuth2 assertions --------------------------------------------------------------------------


def test_private_key_file(run: Any, issuer: LocalIssuer, key_file: Path) -> None:
    args = ("--token-url", issuer.token_url, "--client-id", issuer.client_id,
            "--private-key-file", str(key_file), "--key-id", "cli-key",
            "--resource", "https://a.example/", "--resource", "https://b.example/")
    first = run(*args)
    assert first.returncode == 0, first.stderr
    assert jwt.decode(first.stdout.strip(), options={"verify_signature": False})["aud"] == [
        "https://a.example/", "https://b.example/"]
    sent = issuer.requests("oauth")[0]
    assert sent.form()["client_assertion_type"].endswith(":jwt-bearer")
    assert "authorization" not in sent.headers
    assert run(*args).stdout == first.stdout  # cached under the key's identity
    assert issuer.request_count("oauth") == 1
    source = OAuth2ClientCredentialsSource(
        issuer.token_url, issuer.client_id, private_key=key_file, key_id="cli-key",
        resource=["https://a.example/", "https://b.example/"])
    from swr_token.cli.flags import parse_get
    from swr_token.cli.sources import build_source

    parsed = parse_get(["get", *args])
    assert parsed is not None
    parsed.given = {a for a in args if a.startswith("--")}
    assert build_source(parsed).identity == source.identity
    source.close()


def test_client_secret_jwt(run: Any, issuer: LocalIssuer) -> None:
    ran = run("--token-url", issuer.token_url, "--client-id", issuer.client_id,
              "--auth-method", "client_secret_jwt", "--no-cache",
              env={"SWR_TOKEN_CLIENT_SECRET": CLIENT_SECRET})
    assert ran.returncode == 0, ran.stderr
    form = issuer.requests("oauth")[0].form()
    assert jwt.get_unverified_header(form["client_assertion"])["alg"] == "HS256"


@pytest.mark.parametrize(("args", "says", "code"), [
    (("--key-id", "other"), "no registered client key for kid 'other'", 3),
    (("--private-key-file", "/nonexistent/k.pem"),
     "--private-key-file '/nonexistent/k.pem' could not be read", 2),
    (("--private-key-file", "/etc/hostname"), "the key in --private-key-file could not be "
     "parsed", 2),
    (("--signing-algorithm", "RS256"), "does not fit an EC key", 2),
    (("--secret-stdin",), "drop --secret-file / --secret-stdin", 2),
    (("--resource", "relative"), "not an absolute URI", 2),
])
def test_assertion_errors(run: Any, issuer: LocalIssuer, key_file: Path,
                          args: tuple[str, ...], says: str, code: int) -> None:
    base = ["--token-url", issuer.token_url, "--client-id", issuer.client_id, "--no-cache"]
    if "--private-key-file" not in args:
        base += ["--private-key-file", str(key_file)]
    line = error_line(run(*base, *args), code)
    assert says in line
    if code == 3:
        assert f"(the key came from --private-key-file {key_file})" in line
        assert "--key-id" in line  # the hint speaks in flags


def test_assertion_flags_need_a_token_url(run: Any, key_file: Path) -> None:
    ran = run("--session", "sess_1", "--private-key-file", str(key_file),
              env={"CLERK_SECRET_KEY": "sk_test_x"})
    assert "--private-key-file: only for OAuth2 (--token-url)" in error_line(ran, 2)


def test_help_lists_the_new_options() -> None:
    out = subprocess.run([sys.executable, "-m", "swr_token", "get", "--help"],
                         capture_output=True, text=True, timeout=20,
                         env={k: v for k, v in os.environ.items() if k not in OUR_VARS})
    assert out.returncode == 0
    for flag in ("--m2m", "--claims", "--seconds-until-expiration", "--token-format",
                 "--private-key-file", "--key-id", "--signing-algorithm", "--auth-method",
                 "--resource", "CLERK_MACHINE_SECRET_KEY"):
        assert flag in out.stdout, flag
