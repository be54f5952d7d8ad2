"""BearerAuth and bearer_session against a real API server and LocalIssuer on 127.0.0.1."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from swr_token import (
    ClerkBackendSource,
    ConfigurationError,
    TokenClient,
    TokenRejectedError,
    TokenRequest,
)
from swr_token._auth import BearerAuth, bearer_session, origin_of
from swr_token.testing import LocalIssuer

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
WAIT = 5.0
T = (2.0, 5.0)  # (connect, read) for every request


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    authorization: str | None
    body: bytes
    peer: int  # the client's port: which connection it came on


class Api:
    """A tiny API on 127.0.0.1 that records requests and checks bearer tokens.

    ``revoked`` tokens get a 401, after ``before_401(n)`` (n counts those 401s from 0) if
    set, so tests can order concurrent 401s; ``/always-401`` answers 401 to everyone;
    ``redirects`` maps a path to a Location.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seen: list[Seen] = []
        self.revoked: set[str] = set()
        self.redirects: dict[str, str] = {}
        self.before_401: Callable[[int], None] | None = None
        self.refused = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.server.api = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def record(self, seen: Seen) -> None:
        with self.cond:
            self.seen.append(seen)
            self.cond.notify_all()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(WAIT)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms stalls

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_GET

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        api: Api = self.server.api  # type: ignore[attr-defined]
        auth = self.headers.get("Authorization")
        api.record(Seen(self.command, self.path, auth, self._body(), self.client_address[1]))
        token = auth[len("Bearer "):] if auth and auth.startswith("Bearer ") else None
        if self.path == "/always-401":
            self._send(401, b'{"error": "unauthorized"}')
        elif token is not None and token in api.revoked:
            with api.cond:
                n, api.refused = api.refused, api.refused + 1
            if api.before_401 is not None:
                api.before_401(n)
            self._send(401, b'{"error": "token revoked"}',
                       {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        elif self.path in api.redirects:
            self._send(302, b"", {"Location": api.redirects[self.path]})
        else:
            self._send(200, json.dumps({"authorized": token is not None}).encode())

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer(private_key=KEY) as iss:
        yield iss


@pytest.fixture
def client(issuer: LocalIssuer) -> Iterator[TokenClient]:
    source = ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url)
    with TokenClient(source) as c:
        yield c


@pytest.fixture
def api() -> Iterator[Api]:
    server = Api()
    yield server
    server.stop()


@pytest.fixture
def elsewhere() -> Iterator[Api]:
    """A second API on another port: another origin."""
    server = Api()
    yield server
    server.stop()


@pytest.fixture
def session(client: TokenClient, api: Api) -> Iterator[requests.Session]:
    with bearer_session(client, "sess_1", origins=api.url) as s:
        yield s


def bearer(token: str) -> str:
    return f"Bearer {token}"


# -- the header and the origins -------------------------------------------------------------

def test_sets_the_bearer_header_for_an_allowed_origin(
        session: requests.Session, client: TokenClient, api: Api) -> None:
    response = session.get(f"{api.url}/items", timeout=T)
    assert response.status_code == 200
    assert [s.authorization for s in api.seen] == [bearer(client.get_token("sess_1"))]
    assert response.json() == {"authorized": True}


def test_other_origins_get_no_header_and_cost_no_token(
        session: requests.Session, elsewhere: Api, issuer: LocalIssuer) -> None:
    response = session.get(f"{elsewhere.url}/items", timeout=T)  # same host, other port
    assert response.status_code == 200
    assert [s.authorization for s in elsewhere.seen] == [None]
    assert issuer.request_count("clerk") == 0


def test_key_parts_select_the_token(issuer: LocalIssuer, client: TokenClient, api: Api) -> None:
    with bearer_session(client, "sess_2", template="orders", origins=[api.url]) as s:
        s.get(f"{api.url}/x", timeout=T)
    sent = api.seen[0].authorization
    assert sent == bearer(client.get_token("sess_2", template="orders"))
    assert issuer.requests("clerk")[0].path.endswith("/sessions/sess_2/tokens/orders")


def test_origins_match_scheme_host_and_port_with_default_ports_normalised() -> None:
    assert origin_of("https://API.example.com/x?y=1") == ("https", "api.example.com", 443)
    assert origin_of("https://api.example.com:443") == origin_of("https://api.example.com")
    assert origin_of("http://[::1]:8080/") == ("http", "::1", 8080)
    assert origin_of("https://api.example.com:8443") != origin_of("https://api.example.com")
    assert origin_of("http://api.example.com") != origin_of("https://api.example.com")
    assert origin_of("ftp://api.example.com") is None
    assert origin_of("https://api.example.com:99999") is None


def test_allowed_origins_are_normalised(client: TokenClient) -> None:
    auth = BearerAuth(client, "s", origins=["https://API.Example.com:443/", "http://localhost",
                                            "http://127.0.0.2:8080", "http://[::1]:9000"])
    assert auth.origins == {("https", "api.example.com", 443), ("http", "localhost", 80),
                            ("http", "127.0.0.2", 8080), ("http", "::1", 9000)}


@pytest.mark.parametrize("origins", [
    "http://api.example.com",  # plain http off loopback
    "ftp://api.example.com",
    "https://api.example.com/v1",  # a path is not an origin
    "https://api.example.com?x=1",
    "https://user:secret@api.example.com",
    "https://",
    [],
    [42],
])
def test_bad_origins_are_refused_at_construction(client: TokenClient, origins: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        BearerAuth(client, "s", origins=origins)
    assert isinstance(info.value, ValueError)
    assert "secret" not in str(info.value)


def test_repr_shows_key_and_origins_never_the_token(
        session: requests.Session, client: TokenClient, api: Api) -> None:
    session.get(f"{api.url}/x", timeout=T)
    text = repr(session.auth)
    assert "sess_1" in text and api.url in text
    assert client.get_token("sess_1") not in text


# -- 401: invalidate exactly the sent token, retry once -------------------------------------

def test_401_invalidates_the_sent_token_and_retries_once(
        session: requests.Session, client: TokenClient, api: Api, issuer: LocalIssuer) -> None:
    old = client.get_token("sess_1")
    api.revoked.add(old)
    response = session.post(f"{api.url}/items", json={"n": 1}, timeout=T)
    assert response.status_code == 200
    new = client.get_token("sess_1")
    assert new != old
    assert [(s.authorization, json.loads(s.body)) for s in api.seen] == [
        (bearer(old), {"n": 1}), (bearer(new), {"n": 1})]
    assert [r.status_code for r in response.history] == [401]
    assert response.request.headers["Authorization"] == bearer(new)
    assert issuer.request_count("clerk") == 2


def test_retry_reuses_the_connection_and_keeps_bytes_and_form_bodies(
        client: TokenClient, api: Api) -> None:
    unthrottled = bearer_session(client, "sess_1", origins=api.url, min_refresh_interval=0)
    for body in (b"raw-bytes", {"a": "1"}):
        api.revoked.add(client.get_token("sess_1"))
        assert unthrottled.put(f"{api.url}/b", data=body, timeout=T).status_code == 200
    unthrottled.close()
    assert [s.body for s in api.seen] == [b"raw-bytes", b"raw-bytes", b"a=1", b"a=1"]
    assert len({s.peer for s in api.seen}) == 1  # one keep-alive connection throughout


@pytest.mark.parametrize("order", ["answered together", "second after the first retried"])
def test_two_threads_hitting_401_at_once_cause_one_refresh(
        order: str, client: TokenClient, api: Api, issuer: LocalIssuer) -> None:
    """Both requests carry the old token and are in the server before either 401 goes out.
    Then either both 401s leave together (both threads race to refresh), or the second is
    held until the first thread's retry arrived (it must find that newer token, not drop it).
    """
    old = client.get_token("sess_1")
    api.revoked.add(old)
    arrived = threading.Barrier(2)

    def before_401(n: int) -> None:
        arrived.wait(WAIT)
        if n == 1 and order != "answered together":
            with api.cond:
                assert api.cond.wait_for(
                    lambda: any(s.authorization != bearer(old) for s in api.seen), WAIT)

    api.before_401 = before_401
    start = threading.Barrier(2)
    results: list[requests.Response] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            with bearer_session(client, "sess_1", origins=api.url) as s:
                start.wait(WAIT)
                results.append(s.get(f"{api.url}/items", timeout=T))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads) and errors == []
    assert [r.status_code for r in results] == [200, 200]
    new = client.get_token("sess_1")
    assert issuer.request_count("clerk") == 2  # the first token, then exactly one refresh
    assert sorted(s.authorization or "" for s in api.seen) == sorted(
        [bearer(old), bearer(old), bearer(new), bearer(new)])


def test_a_401_does_not_drop_a_newer_token(
        session: requests.Session, client: TokenClient, api: Api, issuer: LocalIssuer) -> None:
    """The auth hook's invalidate names the token it sent; a newer cached one survives."""
    old = client.get_token("sess_1")
    api.revoked.add(old)
    auth = session.auth
    assert isinstance(auth, BearerAuth)
    request = session.prepare_request(requests.Request("GET", f"{api.url}/x"))
    newer = client.get_token("sess_1", skip_cache=True)  # another thread refreshed meanwhile
    assert newer != old
    response = session.send(request, timeout=T)
    assert response.status_code == 200
    assert client.get_token("sess_1") == newer
    assert issuer.request_count("clerk") == 2  # no third fetch: the newer token was reused
    assert api.seen[-1].authorization == bearer(newer)


def test_streamed_body_is_not_retried(
        session: requests.Session, client: TokenClient, api: Api, issuer: LocalIssuer) -> None:
    old = client.get_token("sess_1")
    api.revoked.add(old)

    def chunks() -> Iterator[bytes]:
        yield b"part-1;"
        yield b"part-2"

    response = session.post(f"{api.url}/upload", data=chunks(), timeout=T)
    assert response.status_code == 401
    assert response.history == []
    assert [(s.authorization, s.body) for s in api.seen] == [(bearer(old), b"part-1;part-2")]
    assert issuer.request_count("clerk") == 1  # no fresh token fetched for a retry
    assert client.get_token("sess_1") != old  # but the refused token is gone


def test_file_body_is_not_retried(session: requests.Session, client: TokenClient,
                                  api: Api) -> None:
    api.revoked.add(client.get_token("sess_1"))
    response = session.post(f"{api.url}/upload", data=io.BytesIO(b"file"), timeout=T)
    assert response.status_code == 401
    assert len(api.seen) == 1


def test_retry_happens_once_only(session: requests.Session, api: Api,
                                 issuer: LocalIssuer) -> None:
    response = session.get(f"{api.url}/always-401", timeout=T)
    assert response.status_code == 401
    assert [r.status_code for r in response.history] == [401]
    assert len(api.seen) == 2
    assert issuer.request_count("clerk") == 2


# -- 401-driven refreshes are throttled per key -----------------------------------------------

def test_an_api_that_always_answers_401_cannot_turn_requests_into_token_mints(
        client: TokenClient, api: Api, issuer: LocalIssuer,
        caplog: pytest.LogCaptureFixture) -> None:
    client.get_token("sess_1")  # the key's first token
    issuer.reset_counts()
    responses = []
    for _ in range(20):
        # A BearerAuth per request, as in a view that builds its session each time: the
        # throttle is the client's, not the instance's.
        with bearer_session(client, "sess_1", origins=api.url) as s:
            responses.append(s.get(f"{api.url}/always-401", timeout=T))
    assert [r.status_code for r in responses] == [401] * 20
    assert issuer.request_count("clerk") == 1  # 20 requests -> 1 token request
    # The first 401 refreshed and retried; the other 19 came back as they were.
    assert [len(r.history) for r in responses] == [1] + [0] * 19
    assert len(api.seen) == 21
    assert len([r for r in caplog.records if "min_refresh_interval" in r.getMessage()]) == 1


def test_after_the_interval_a_401_refreshes_again(
        client: TokenClient, api: Api, issuer: LocalIssuer) -> None:
    now = [100.0]
    auth = BearerAuth(client, "sess_1", origins=api.url, min_refresh_interval=30,
                      clock=lambda: now[0])
    first = client.get_token("sess_1")
    api.revoked.add(first)
    assert requests.get(f"{api.url}/x", auth=auth, timeout=T).status_code == 200
    second = client.get_token("sess_1")
    api.revoked.add(second)
    now[0] += 29.0
    refused = requests.get(f"{api.url}/x", auth=auth, timeout=T)
    assert refused.status_code == 401 and refused.history == []  # inside the interval
    assert client.get_token("sess_1") == second  # not invalidated
    now[0] += 1.5
    assert requests.get(f"{api.url}/x", auth=auth, timeout=T).status_code == 200
    assert client.get_token("sess_1") not in (first, second)
    assert issuer.request_count("clerk") == 3


def test_inside_the_interval_a_401_on_an_older_token_still_gets_the_newest(
        client: TokenClient, api: Api, issuer: LocalIssuer) -> None:
    old = client.get_token("sess_1")
    api.revoked.add(old)
    with bearer_session(client, "sess_1", origins=api.url) as s:
        stale = s.prepare_request(requests.Request("GET", f"{api.url}/x"))  # carries old
        assert s.get(f"{api.url}/x", timeout=T).status_code == 200  # the interval starts
        newest = client.get_token("sess_1")
        # Refused inside the interval, the old token's request is still retried with the
        # newest token, and no token is minted.
        response = s.send(stale, timeout=T)
    assert response.status_code == 200 and [r.status_code for r in response.history] == [401]
    assert [a.authorization for a in api.seen][-2:] == [bearer(old), bearer(newest)]
    assert issuer.request_count("clerk") == 2


def test_min_refresh_interval_is_checked(client: TokenClient) -> None:
    for bad in (-1, float("nan"), "30", True):
        with pytest.raises(ConfigurationError, match="min_refresh_interval"):
            BearerAuth(client, "s", origins="https://api.example.com",
                       min_refresh_interval=bad)  # type: ignore[arg-type]


def test_no_retry_when_the_fresh_token_is_the_same(issuer: LocalIssuer, api: Api) -> None:
    fixed = issuer.mint()  # an issuer that re-serves one token: retrying is pointless

    def source(request: TokenRequest) -> str:
        return fixed

    with TokenClient(source) as same, bearer_session(same, "s", origins=api.url) as s:
        api.revoked.add(fixed)
        response = s.get(f"{api.url}/x", timeout=T)
    assert response.status_code == 401
    assert len(api.seen) == 1


def test_token_errors_propagate(client: TokenClient, api: Api, issuer: LocalIssuer) -> None:
    issuer.end_session("sess_gone")
    with bearer_session(client, "sess_gone", origins=api.url) as s, \
            pytest.raises(TokenRejectedError):
        s.get(f"{api.url}/x", timeout=T)
    assert api.seen == []


# -- redirects ------------------------------------------------------------------------------

def test_redirect_to_another_origin_does_not_carry_the_token(
        session: requests.Session, client: TokenClient, api: Api, elsewhere: Api) -> None:
    api.redirects["/go"] = f"{elsewhere.url}/landing"
    response = session.get(f"{api.url}/go", timeout=T)
    assert response.status_code == 200 and response.url == f"{elsewhere.url}/landing"
    assert [s.authorization for s in api.seen] == [bearer(client.get_token("sess_1"))]
    assert [s.authorization for s in elsewhere.seen] == [None]


def test_401_from_a_foreign_redirect_target_is_not_retried_with_the_token(
        session: requests.Session, client: TokenClient, api: Api, elsewhere: Api,
        issuer: LocalIssuer) -> None:
    token = client.get_token("sess_1")
    api.redirects["/go"] = f"{elsewhere.url}/always-401"
    response = session.get(f"{api.url}/go", timeout=T)
    assert response.status_code == 401
    assert [s.authorization for s in elsewhere.seen] == [None]
    assert client.get_token("sess_1") == token  # not invalidated by someone else's 401
    assert issuer.request_count("clerk") == 1


def test_redirect_within_the_origin_keeps_the_token(
        session: requests.Session, client: TokenClient, api: Api) -> None:
    api.redirects["/old"] = f"{api.url}/new"
    assert session.get(f"{api.url}/old", timeout=T).status_code == 200
    token = bearer(client.get_token("sess_1"))
    assert [(s.path, s.authorization) for s in api.seen] == [("/old", token), ("/new", token)]


def test_redirect_after_a_retry_carries_the_fresh_token(
        session: requests.Session, client: TokenClient, api: Api) -> None:
    old = client.get_token("sess_1")
    api.revoked.add(old)
    api.redirects["/moved"] = f"{api.url}/here"
    response = session.get(f"{api.url}/moved", timeout=T)
    assert response.status_code == 200
    new = client.get_token("sess_1")
    assert [(s.path, s.authorization) for s in api.seen] == [
        ("/moved", bearer(old)), ("/moved", bearer(new)), ("/here", bearer(new))]


def test_where_the_401_is_kept_when_the_retry_is_redirected(
        session: requests.Session, client: TokenClient, api: Api) -> None:
    """As the README says: requests rebuilds the history from the redirect hops, so after a
    redirected retry it holds the redirect, and the 401 is not kept."""
    old = client.get_token("sess_1")
    api.revoked.add(old)
    api.redirects["/moved"] = f"{api.url}/here"
    response = session.get(f"{api.url}/moved", timeout=T)
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [302]
    assert [r.status_code for r in response.history[0].history] == []
    assert api.seen[0].authorization == bearer(old)  # the 401 did happen


def test_same_host_scheme_change_drops_the_token(client: TokenClient) -> None:
    """requests keeps Authorization on an http -> https redirect to the same host (default
    ports); the hook drops it, since that is another origin. No socket: requests builds the
    next hop from the redirect response without sending it."""

    def next_hop(auth: BearerAuth | None, headers: dict[str, str]) -> requests.PreparedRequest:
        with requests.Session() as s:
            request = s.prepare_request(requests.Request(
                "GET", "http://localhost/start", auth=auth, headers=headers))
            redirect = requests.Response()
            redirect.status_code = 302
            redirect.headers["Location"] = "https://localhost/next"
            redirect.url = request.url or ""
            redirect.request = request
            redirect.raw = io.BytesIO(b"")
            for hook in request.hooks["response"]:
                redirect = hook(redirect) or redirect
            hop: Any = next(s.resolve_redirects(redirect, request, yield_requests=True))
            return hop  # type: ignore[no-any-return]

    plain = next_hop(None, {"Authorization": "Bearer plain"})
    assert plain.headers.get("Authorization") == "Bearer plain"  # what requests alone does
    ours = next_hop(BearerAuth(client, "sess_1", origins="http://localhost"), {})
    assert ours.url == "https://localhost/next"
    assert "Authorization" not in ours.headers


def test_jwt_in_header_is_the_clients_token(
        session: requests.Session, api: Api, issuer: LocalIssuer) -> None:
    session.get(f"{api.url}/x", timeout=T)
    raw = (api.seen[0].authorization or "").removeprefix("Bearer ")
    key = jwt.PyJWK(issuer.jwks()["keys"][0])
    assert jwt.decode(raw, key, algorithms=["RS256"])["sid"] == "sess_1"
