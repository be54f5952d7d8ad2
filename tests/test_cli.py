"""The ``swr-token`` command, run as a user runs it: a subprocess against a LocalIssuer."""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from swr_token.testing import LocalIssuer

TIMEOUT = 20.0  # upper bound for any one command; a healthy one takes well under a second
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
SECRET_VARS = ("CLERK_SECRET_KEY", "SWR_TOKEN_CLIENT_SECRET")
CONFIG_VARS = ("SWR_TOKEN_SESSION", "SWR_TOKEN_TEMPLATE", "CLERK_API_URL", "SWR_TOKEN_TOKEN_URL",
               "SWR_TOKEN_CLIENT_ID", "SWR_TOKEN_SCOPE", "SWR_TOKEN_AUDIENCE",
               "SWR_TOKEN_TIMEOUT")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS + CONFIG_VARS}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def cli(*args: str, env: dict[str, str] | None = None, stdin: str = "",
        timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swr_token", *args], input=stdin, text=True,
                          capture_output=True, env=clean_env() if env is None else env,
                          timeout=timeout)


class Ran:
    """The outcome of one in-process ``main()`` run."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """``main()`` in this process (fast) with a clean environment; for the finer cases."""
    from swr_token.cli import main

    for name in SECRET_VARS + CONFIG_VARS:
        monkeypatch.delenv(name, raising=False)

    def call(*args: str, env: dict[str, str] | None = None, stdin: str = "") -> Ran:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return call


def one_line_error(proc: subprocess.CompletedProcess[str] | Ran, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.endswith("\n"), proc.stderr
    assert "error: " in proc.stderr
    assert not JWT.search(proc.stderr)
    return proc.stderr


@pytest.fixture
def clerk_env(issuer: LocalIssuer) -> dict[str, str]:
    return clean_env(CLERK_SECRET_KEY=issuer.secret_key, CLERK_API_URL=issuer.clerk_api_url)


def verified_claims(issuer: LocalIssuer, token: str) -> dict[str, object]:
    key = jwt.PyJWK(issuer.jwks()["keys"][0]).key
    claims: dict[str, object] = jwt.decode(token, key, algorithms=["RS256"],
                                           options={"verify_aud": False})
    return claims


# -- help and usage ----------------------------------------------------------------------


def test_python_m_help_lists_the_commands() -> None:
    proc = cli("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("demo", "get", "inspect"):
        assert command in proc.stdout
    assert proc.stderr == ""


def test_get_help_documents_env_vars_and_exit_codes() -> None:
    proc = cli("get", "--help")
    assert proc.returncode == 0
    for name in CONFIG_VARS + SECRET_VARS + ("--secret-file", "--secret-stdin"):
        assert name in proc.stdout, name
    for code in ("0 ", "2 ", "3 ", "4 ", "5 "):
        assert f"\n  {code}" in proc.stdout
    assert "--secret " not in proc.stdout and "--client-secret" not in proc.stdout


def test_no_command_prints_help_and_exits_2(run: Any) -> None:
    proc = run()
    assert proc.returncode == 2 and proc.stdout == "" and "get" in proc.stderr


def test_a_secret_flag_is_refused_without_echoing_the_value(run: Any) -> None:
    err = one_line_error(cli("get", "--session", "s", "--secret", "sk_live_hunter2"), 2)
    assert "sk_live_hunter2" not in err
    assert "--secret-file" in err and "--secret" in err
    err = one_line_error(run("get", "--client-secret=hunter2", "stray-value"), 2)
    assert "hunter2" not in err and "stray-value" not in err


@pytest.mark.parametrize("args, says", [
    (["get", "--bogus"], "--bogus"),
    (["get", "--timeout", "soon"], "--timeout"),
    (["demo", "--duration", "-1"], "--duration"),
    (["get"], "--session"),
    (["get", "--session", "s", "--token-url", "https://a.example/t"], "give one"),
    (["get", "--session", "s", "--scope", "x"], "--scope is for OAuth2"),
    (["get", "--secret-file", "f", "--secret-stdin"], "not allowed with"),
])
def test_bad_usage_is_one_line_on_stderr_and_exit_2(run: Any, args: list[str],
                                                    says: str) -> None:
    assert says in one_line_error(run(*args), 2)


def test_a_missing_secret_is_a_one_line_error_with_the_fix(issuer: LocalIssuer,
                                                           run: Any) -> None:
    err = one_line_error(cli("get", "--session", "sess_1", "--api-url", issuer.clerk_api_url), 2)
    assert "CLERK_SECRET_KEY" in err and "--secret-file" in err and "--secret-stdin" in err
    err = one_line_error(run("get", "--token-url", issuer.token_url, "--client-id", "c"), 2)
    assert "SWR_TOKEN_CLIENT_SECRET" in err
    assert issuer.request_count() == 0


def test_unreadable_secret_file_and_plain_http_are_usage_errors(
        tmp_path: Path, clerk_env: dict[str, str], run: Any) -> None:
    err = one_line_error(run("get", "--session", "s", "--secret-file", str(tmp_path / "no"),
                             env=clerk_env), 2)
    assert "--secret-file" in err
    (tmp_path / "two-lines").write_text("sk_one\nsk_two\n")
    err = one_line_error(run("get", "--session", "s", "--secret-file",
                             str(tmp_path / "two-lines"), env=clerk_env), 2)
    assert "one line" in err and "sk_one" not in err
    err = one_line_error(run("get", "--session", "s", "--api-url", "http://api.example/v1",
                             env=clerk_env), 2)
    assert "https://" in err


# -- get ---------------------------------------------------------------------------------


def test_get_prints_only_the_token(issuer: LocalIssuer, clerk_env: dict[str, str]) -> None:
    proc = cli("get", "--session", "sess_cli", env=clerk_env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    token = proc.stdout.removesuffix("\n")
    assert "\n" not in token and token.count(".") == 2
    assert verified_claims(issuer, token)["sid"] == "sess_cli"


def test_get_json_with_template_from_env_and_secret_file(
        issuer: LocalIssuer, tmp_path: Path, run: Any) -> None:
    secret = tmp_path / "secret"
    secret.write_text(issuer.secret_key + "\n")
    env = clean_env(SWR_TOKEN_SESSION="sess_json", SWR_TOKEN_TEMPLATE="orders",
                    CLERK_API_URL=issuer.clerk_api_url)
    proc = run("get", "--json", "--secret-file", str(secret), env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) == {"token", "expires_at", "remaining", "key"}
    assert doc["key"] == {"session_id": "sess_json", "template": "orders",
                          "organization_id": None, "audience": None}
    assert 50 < doc["remaining"] <= 60
    assert abs(doc["expires_at"] - (time.time() + doc["remaining"])) < 5
    assert issuer.requests("clerk")[-1].path.endswith("/sess_json/tokens/orders")


def test_get_oauth2_with_secret_on_stdin(issuer: LocalIssuer) -> None:
    proc = cli("get", "--json", "--token-url", issuer.token_url, "--client-id",
               issuer.client_id, "--scope", "read write", "--audience", "orders-api",
               "--secret-stdin", stdin=issuer.client_secret + "\n")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["key"]["audience"] == "orders-api" and doc["key"]["session_id"] is None
    claims = verified_claims(issuer, doc["token"])
    assert claims["aud"] == "orders-api" and claims["scope"] == "read write"


def test_get_rejected_exits_3_and_names_where_the_secret_came_from(
        issuer: LocalIssuer, clerk_env: dict[str, str], run: Any) -> None:
    env = {**clerk_env, "CLERK_SECRET_KEY": "sk_test_wrong_one"}
    err = one_line_error(cli("get", "--session", "sess_1", env=env), 3)
    assert "401" in err and "CLERK_SECRET_KEY" in err and "sk_test_wrong_one" not in err
    issuer.end_session("sess_gone")
    assert "404" in one_line_error(run("get", "--session", "sess_gone", env=clerk_env), 3)


def test_get_transient_failure_exits_4(issuer: LocalIssuer, clerk_env: dict[str, str],
                                       run: Any) -> None:
    issuer.fail(503)
    started = time.monotonic()
    err = one_line_error(run("get", "--session", "sess_1", "--timeout", "1", env=clerk_env), 4)
    assert "again later" in err
    assert time.monotonic() - started < 5


def test_get_unusable_token_exits_5(issuer: LocalIssuer, clerk_env: dict[str, str],
                                    run: Any) -> None:
    issuer.malformed(body='{"object": "token", "jwt": "not-a-jwt"}')
    assert "jwt" in one_line_error(run("get", "--session", "sess_1", env=clerk_env), 5)


# -- inspect -----------------------------------------------------------------------------


def test_inspect_reads_stdin_and_never_echoes_the_token(issuer: LocalIssuer, run: Any) -> None:
    token = issuer.mint(sid="sess_insp", sub="user_1")
    for n, given in enumerate((token, f"Bearer {token}\n", json.dumps({"token": token}))):
        proc = (cli if n == 0 else run)("inspect", stdin=given)
        assert proc.returncode == 0, proc.stderr
        assert "not verified" in proc.stdout
        assert "sess_insp" in proc.stdout and "remaining" in proc.stdout
        assert token not in proc.stdout + proc.stderr
        assert token.split(".")[1] not in proc.stdout
    doc = json.loads(run("inspect", "--json", stdin=token).stdout)
    assert doc["verified"] is False and doc["claims"]["sid"] == "sess_insp"
    assert 50 < doc["remaining"] <= 60 and doc["expired"] is False


def test_inspect_refuses_empty_and_opaque_input(run: Any) -> None:
    assert "stdin" in one_line_error(run("inspect", stdin=""), 2)
    assert "not hold a JWT" in one_line_error(run("inspect", stdin="opaque-abc"), 5)


# -- demo --------------------------------------------------------------------------------


def test_demo_ends_by_itself_with_a_sane_summary_and_no_token() -> None:
    started = time.monotonic()
    proc = cli("demo", "--duration", "5", "--lifetime", "4", "--fail-for", "1",
               timeout=30)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert 5 <= took < 15
    out = proc.stdout
    assert not JWT.search(out + proc.stderr)
    assert proc.stderr == ""
    assert "\x1b[" not in out  # not a terminal: a plain timeline
    assert "background refresh" in out and "outage" in out
    summary = out.split("\nsummary", 1)[1]
    numbers = {name: int(re.search(rf"{name}\s+([\d,]+)", summary)[1].replace(",", ""))
               for name in ("calls served", "upstream requests", "waits", "stale")}
    assert numbers["calls served"] > 100
    assert 4 <= numbers["upstream requests"] < numbers["calls served"] / 10
    assert numbers["waits"] >= 1 and "longest" in summary


def test_demo_runs_without_the_test_kit() -> None:
    """The demo's issuer is the library's own; the application never imports its test kit."""
    probe = ("import sys; from swr_token.cli import main; code = main(['demo', '--duration', "
             "'0.5']); print(sorted(m for m in sys.modules if m.startswith('swr_token.testing')"
             " or m == 'argparse'), file=sys.stderr); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=clean_env(), timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "['argparse']"  # demo's flags are argparse's


def test_demo_stops_cleanly_on_ctrl_c() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "swr_token", "demo", "--duration", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env())
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while "new token" not in lines.get(timeout=TIMEOUT):
            pass
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=5)
    finally:
        proc.kill()
    reader.join(5)
    out = "".join(lines.queue)
    assert proc.returncode == 130
    assert "summary (interrupted)" in out and not JWT.search(out)
