"""The Flask, Django, cron and gunicorn examples, each run against a LocalIssuer."""

from __future__ import annotations

import os
import queue
import runpy
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

import swr_token
from swr_token.testing import LocalIssuer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import cron_job  # noqa: E402
import flask_app  # noqa: E402
import upstream_stub  # noqa: E402

TIMEOUT = 10.0  # upper bound for any wait here


@pytest.fixture(scope="module")
def upstream(module_issuer: LocalIssuer) -> Iterator[str]:
    with upstream_stub.running(module_issuer.jwks_url) as url:
        yield url


def oauth_settings(issuer: LocalIssuer, upstream: str, **extra: str) -> dict[str, str]:
    return {"SWR_TOKEN_TOKEN_URL": issuer.token_url, "SWR_TOKEN_CLIENT_ID": issuer.client_id,
            "SWR_TOKEN_CLIENT_SECRET": issuer.client_secret, "UPSTREAM_URL": upstream, **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve_example(script: str, ready: str, url: str, **request: Any) -> requests.Response:
    """Run an example server as written (its own LocalIssuer), call it once, stop it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SWR_TOKEN_", "CLERK_", "UPSTREAM_"))}
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / script)], env={**env, "PORT": str(
        port), "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        while ready not in lines.get(timeout=TIMEOUT):
            pass
        return requests.get(f"http://127.0.0.1:{port}{url}", timeout=TIMEOUT, **request)
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


# -- Flask -------------------------------------------------------------------------------


def test_flask_app_calls_the_api_with_one_token_per_process(
        issuer: LocalIssuer, upstream: str) -> None:
    app = flask_app.create_app(**oauth_settings(issuer, upstream))
    try:
        before = issuer.request_count("oauth")
        with app.test_client() as http:
            replies = [http.get("/orders") for _ in range(5)]
        assert [r.status_code for r in replies] == [200] * 5
        assert replies[0].get_json()["for"] == issuer.client_id
        assert issuer.request_count("oauth") - before == 1  # made at start-up, shared
    finally:
        app.extensions["swr_token"].close()


def test_flask_app_answers_502_when_the_issuer_refuses(issuer: LocalIssuer, upstream: str) -> None:
    app = flask_app.create_app(**oauth_settings(issuer, upstream,
                                                SWR_TOKEN_CLIENT_SECRET="wrong-secret"))
    try:
        reply = app.test_client().get("/orders")
        assert reply.status_code == 502
        assert "secret" not in reply.get_data(as_text=True)
    finally:
        app.extensions["swr_token"].close()


def test_flask_app_runs_as_written() -> None:
    reply = serve_example("flask_app.py", "Running on", "/orders")
    assert reply.status_code == 200 and reply.json()["orders"]


# -- Django ------------------------------------------------------------------------------


@pytest.fixture
def django_view(issuer: LocalIssuer, upstream: str,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import django_view as view
    from django.conf import settings
    from django.test import override_settings

    if not settings.configured:
        view.configure()
    registered: list[Any] = []
    monkeypatch.setattr(view.atexit, "register", registered.append)
    conf = {"CLERK_SECRET_KEY": issuer.secret_key, "CLERK_API_URL": issuer.clerk_api_url}
    with override_settings(SWR_TOKEN=conf, UPSTREAM_URL=upstream, ROOT_URLCONF="django_view",
                           ALLOWED_HOSTS=["testserver"]):
        view.close_token_client()
        yield SimpleNamespace(module=view, atexit=registered)
        view.close_token_client()


def test_django_view_builds_its_client_lazily_and_closes_it_at_exit(
        django_view: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from django.test import RequestFactory

    view = django_view.module
    made: list[swr_token.TokenClient] = []
    real = swr_token.TokenClient

    def counting(*args: Any, **kwargs: Any) -> swr_token.TokenClient:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(view.swr_token, "TokenClient", counting)
    reply = view.orders(RequestFactory().get("/orders", headers={"X-Session-Id": "sess_dj"}))
    assert reply.status_code == 200, reply.content
    # Importing and configuring made no client: the first request made the only one.
    assert len(made) == 1
    client = view.token_client()
    assert view.token_client() is client is made[0]
    assert django_view.atexit == [view.close_token_client]
    view.close_token_client()
    with pytest.raises(Exception, match="closed"):
        client.get_token("sess_dj")
    assert view.token_client() is not client and len(made) == 2  # closed: a new one next


def test_django_view_through_the_url_and_its_errors(
        django_view: Any, issuer: LocalIssuer) -> None:
    from django.test import Client

    http = Client()
    reply = http.get("/orders", headers={"X-Session-Id": "sess_url"})
    assert reply.status_code == 200 and reply.json()["for"] == "user_sess_url"
    assert http.get("/orders").status_code == 401
    issuer.end_session("sess_ended")
    reply = http.get("/orders", headers={"X-Session-Id": "sess_ended"})
    assert reply.status_code == 401 and "sign in again" in reply.json()["error"]


def test_django_view_runs_as_written() -> None:
    reply = serve_example("django_view.py", "Starting development server", "/orders",
                          headers={"X-Session-Id": "sess_main"})
    assert reply.status_code == 200 and reply.json()["for"] == "user_sess_main"


# -- cron --------------------------------------------------------------------------------


def test_cron_job_runs_as_written_and_exits() -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / "cron_job.py")], capture_output=True,
                          text=True, timeout=TIMEOUT * 2,
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith(("SWR_TOKEN_", "UPSTREAM_"))})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "cron_job: synced 1 orders\n" and done.stderr == ""


def test_cron_job_statuses(issuer: LocalIssuer, upstream: str,
                           capsys: pytest.CaptureFixture[str]) -> None:
    assert cron_job.run(oauth_settings(issuer, upstream)) == 0
    assert cron_job.run(oauth_settings(issuer, upstream, SWR_TOKEN_CLIENT_SECRET="nope")) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "401" in err and "nope" not in err


def _cron_case(case: str, issuer: LocalIssuer, upstream: str) -> dict[str, str]:
    settings = oauth_settings(issuer, upstream, TOKEN_TIMEOUT="2")
    dead = f"http://127.0.0.1:{free_port()}"
    changes: dict[str, dict[str, str | None]] = {
        "missing client id": {"SWR_TOKEN_CLIENT_ID": None},
        "missing API URL": {"UPSTREAM_URL": None},
        "plain http issuer": {"SWR_TOKEN_TOKEN_URL": "http://auth.example.com/token"},
        "issuer unreachable": {"SWR_TOKEN_TOKEN_URL": dead + "/oauth/token"},
        "issuer refuses": {"SWR_TOKEN_CLIENT_SECRET": "nope"},
        "API unreachable": {"UPSTREAM_URL": dead},
        "API 404": {"UPSTREAM_URL": issuer.url},  # the issuer has no /orders
    }
    for name, value in changes[case].items():
        if value is None:
            settings.pop(name)
        else:
            settings[name] = value
    return settings


@pytest.mark.parametrize(("case", "status", "words"), [
    ("missing client id", 2, "set SWR_TOKEN_CLIENT_ID"),
    ("missing API URL", 2, "set UPSTREAM_URL"),
    ("plain http issuer", 2, "use https://"),
    ("issuer unreachable", 4, "Connection refused"),
    ("issuer refuses", 3, "HTTP 401"),
    ("API unreachable", 4, "the API at http://127.0.0.1:"),
    ("API 404", 5, "answered HTTP 404; check UPSTREAM_URL"),
])
def test_cron_job_keeps_its_exit_status_promise_with_one_line_on_stderr(
        issuer: LocalIssuer, upstream: str, case: str, status: int, words: str) -> None:
    """Run as cron runs it (a process with no logging set up): one line, never a traceback,
    and no second report of the same failure from swr_token's logger."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWR_TOKEN_", "UPSTREAM_"))}
    settings = _cron_case(case, issuer, upstream)
    done = subprocess.run([sys.executable, str(EXAMPLES / "cron_job.py")], capture_output=True,
                          text=True, timeout=TIMEOUT * 2, env={**env, **settings})
    assert done.returncode == status, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cron_job: "), done.stderr
    assert words in lines[0]
    assert "nope" not in done.stderr and issuer.client_secret not in done.stderr


def test_cron_job_exits_promptly_with_a_request_hung(issuer: LocalIssuer, upstream: str) -> None:
    issuer.hang()  # the issuer accepts the request and never answers
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(EXAMPLES / "cron_job.py")], capture_output=True,
                          text=True, timeout=TIMEOUT,
                          env={**os.environ, **oauth_settings(issuer, upstream),
                               "TOKEN_TIMEOUT": "1"})
    assert done.returncode == 4, done.stderr
    assert time.monotonic() - started < 6  # the hung request (a daemon thread) held nothing
    assert issuer.request_count("oauth") >= 1


# -- gunicorn ----------------------------------------------------------------------------


def test_gunicorn_conf_parses_and_says_how_to_fork() -> None:
    conf = runpy.run_path(str(EXAMPLES / "gunicorn.conf.py"))
    assert conf["bind"].startswith("127.0.0.1:") and conf["preload_app"] is False
    text = (EXAMPLES / "gunicorn.conf.py").read_text()
    assert "fork-safe" in text and "post_fork" in text and "lazily" in text


def test_gunicorn_runs_the_flask_app_as_documented(issuer: LocalIssuer, upstream: str) -> None:
    """``cd examples && gunicorn -c gunicorn.conf.py 'flask_app:create_app()'``, for real:
    each of the two workers fetches its token at boot (post_worker_init), then serves."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWR_TOKEN_", "UPSTREAM_"))}
    before = issuer.request_count("oauth")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}",
         "flask_app:create_app()"], cwd=EXAMPLES, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, env={**env, **oauth_settings(issuer, upstream)})
    try:
        deadline = time.monotonic() + TIMEOUT * 2
        while issuer.request_count("oauth") < before + 2 and time.monotonic() < deadline:
            assert proc.poll() is None, "gunicorn exited while booting"
            time.sleep(0.05)
        assert issuer.request_count("oauth") == before + 2  # one warm-up per worker
        reply = None
        while reply is None and time.monotonic() < deadline:
            try:
                reply = requests.get(f"http://127.0.0.1:{port}/orders", timeout=TIMEOUT)
            except requests.ConnectionError:
                time.sleep(0.05)  # a worker is up, the socket not yet accepting
        assert reply is not None and reply.status_code == 200, reply
        assert reply.json()["orders"]
        assert issuer.request_count("oauth") == before + 2  # the request used a warm token
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert "Traceback" not in err and "warm-up failed" not in err, err


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_preloaded_client_works_in_a_forked_worker(issuer: LocalIssuer, upstream: str) -> None:
    """What ``--preload`` does: the client made (and warmed) in the master, then a fork."""
    hook = runpy.run_path(str(EXAMPLES / "gunicorn.conf.py"))["post_worker_init"]
    app = flask_app.create_app(**oauth_settings(issuer, upstream))
    client = app.extensions["swr_token"]
    try:
        client.get_token()
        before = issuer.request_count("oauth")
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into pytest
            status = 1
            try:
                log = SimpleNamespace(warning=lambda *a: None)
                hook(SimpleNamespace(wsgi=app, log=log))
                status = 0 if app.test_client().get("/orders").status_code == 200 else 2
            finally:
                os.write(write_end, bytes([status]))
                os._exit(status)
        os.close(write_end)
        ready, _, _ = select.select([read_end], [], [], TIMEOUT)
        if not ready:
            os.kill(pid, 9)
        os.waitpid(pid, 0)
        assert ready and os.read(read_end, 1) == b"\x00", "the forked worker failed or hung"
        os.close(read_end)
        assert issuer.request_count("oauth") == before  # it used the token it inherited
    finally:
        client.close()
