"""ClerkM2MSource against LocalIssuer's M2M endpoint over real loopback HTTP (no mocks)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import swr_token
from swr_token import (
    ClerkM2MSource,
    ConfigurationError,
    InvalidTokenError,
    TokenClient,
    TokenError,
    TokenFetchError,
    TokenRejectedError,
    TokenRequest,
)
from swr_token._clerk_m2m import DEFAULT_SECONDS_UNTIL_EXPIRATION, NON_EXPIRING_CACHE_LIFE
from swr_token._token import Token
from swr_token._version import __version__
from swr_token.testing import FakeClock, InlineExecutor, LocalIssuer

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
MACHINE_KEY = "ak_test_Zq9very_secret_machine_key"
TIMEOUT = (2.0, 5.0)
NO_KEY = TokenRequest()
WAIT = 5.0


@pytest.fixture(scope="module")
def shared_issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer(private_key=KEY, machine_secret_key=MACHINE_KEY) as iss:
        yield iss


@pytest.fixture
def issuer(shared_issuer: LocalIssuer) -> Iterator[LocalIssuer]:
    shared_issuer.reset_counts()
    yield shared_issuer
    shared_issuer.clear_faults()


@pytest.fixture
def make(issuer: LocalIssuer) -> Iterator[Callable[..., ClerkM2MSource]]:
    made: list[ClerkM2MSource] = []

    def factory(**options: Any) -> ClerkM2MSource:
        options.setdefault("timeout", TIMEOUT)
        options.setdefault("api_url", issuer.clerk_api_url)
        source = ClerkM2MSource(options.pop("machine_secret_key", MACHINE_KEY), **options)
        made.append(source)
        return source

    yield factory
    for source in made:
        source.close()


def receive(token: Token) -> Token:
    now = time.time()
    return token.received(deadline_now=time.monotonic(), deadline_clock=time.monotonic,
                          wall_now=now, started_wall_now=now)


def sent_body(issuer: LocalIssuer) -> Any:
    return json.loads(issuer.requests("m2m")[-1].body)


def answer(issuer: LocalIssuer, token: str, *, life_ms: int | None, **extra: Any) -> str:
    """A 201 body as Clerk shapes it, for answers the issuer would not give by itself."""
    created = int(time.time() * 1000)
    doc = {"object": "machine_to_machine_token", "id": "mt_x", "token": token,
           "subject": "mch_1", "created_at": created,
           "expiration": None if life_ms is None else created + life_ms}
    doc.update(extra)
    return json.dumps(doc)


# -- what goes on the wire --------------------------------------------------------------------


def test_request_shape_and_default_lifetime(
    issuer: LocalIssuer, make: Callable[..., ClerkM2MSource]
) -> None:
    token = receive(make()(NO_KEY))
    sent = issuer.requests("m2m")[0]
    assert sent.path == "/v1/m2m_tokens" and sent.method == "POST"
    assert sent.headers["authorization"] == f"Bearer {MACHINE_KEY}"
    assert sent.headers["user-agent"] == f"swr_token/{__version__}"
    assert sent.headers["content-type"] == "application/json"
    # Only what is set; the lifetime is never left to Clerk's "never expires" default.
    assert json.loads(sent.body) == {"token_format": "jwt",
                                     "seconds_until_expiration": DEFAULT_SECONDS_UNTIL_EXPIRATION}
    assert token.claims["sub"].startswith("mch_")
    assert token.lifetime == pytest.approx(3600, abs=1)


def test_claims_and_lifetime_are_sent(
    issuer: LocalIssuer, make: Callable[..., ClerkM2MSource]
) -> None:
    claims = {"role": "billing", "tenants": ["a", "b"]}
    token = receive(make(claims=claims, seconds_until_expiration=120)(NO_KEY))
    assert sent_body(issuer) == {"token_format": "jwt", "seconds_until_expiration": 120,
                                 "claims": claims}
    assert token.claims["role"] == "billing"
    assert token.lifetime == pytest.approx(120, abs=1)


def test_claims_are_copied_at_construction(
    issuer: LocalIssuer, make: Callable[..., ClerkM2MSource]
) -> None:
    claims: dict[str, Any] = {"role": "a"}
    source = make(claims=claims)
    identity = source.identity
    claims["role"] = "changed"
    source(NO_KEY)
    assert sent_body(issuer)["claims"] == {"role": "a"}
    assert source.identity == identity


def test_opaque_token_lives_by_expiration(
    issuer: LocalIssuer, make: Callable[..., ClerkM2MSource]
) -> None:
    token = receive(make(token_format="opaque", seconds_until_expiration=90)(NO_KEY))
    assert token.raw.startswith("mt_") and token.claims == {}
    assert token.lifetime == pytest.approx(90, abs=0.01)
    assert sent_body(issuer)["token_format"] == "opaque"


@pytest.mark.parametrize(("exp_life", "expiration_life", "expected"),
                         [(30, 3600, 30), (3600, 60, 60)])
def test_jwt_lives_by_the_shorter_of_exp_and_expiration(
    issuer: LocalIssuer, make: Callable[..., ClerkM2MSource], exp_life: int,
    expiration_life: int, expected: int,
) -> None:
    issuer.malformed(body=answer(issuer, issuer.mint(lifetime=exp_life),
                                 life_ms=expiration_life * 1000), count=1, endpoint="m2m")
    token = receive(make()(NO_KEY))
    assert token.remaining() == pytest.approx(expected, abs=1.5)


def test_expiration_counts_from_created_at_not_the_local_clock(
    issuer: LocalIssuer, make: Callable[..., ClerkM2MSource]
) -> None:
    # Clerk's clock a day ahead: created_at and expiration move together, the life stays 300 s.
    ahead = int((time.time() + 86400) * 1000)
    issuer.malformed(body=json.dumps({"token": "mt_skewed", "created_at": ahead,
                                      "expiration": ahead + 300_000}), count=1, endpoint="m2m")
    assert receive(make(token_format="opaque")(NO_KEY)).remaining() == pytest.approx(300, abs=1)


def test_no_created_at_counts_from_the_date_header(
    issuer: LocalIssuer, make: Callable[..., ClerkM2MSource]
) -> None:
    expiration = int((issuer.now() + 200) * 1000)
    issuer.malformed(body=json.dumps({"token": "mt_x", "expiration": expiration}), count=1,
                     endpoint="m2m")
    assert receive(make(token_format="opaque")(NO_KEY)).remaining() == pytest.approx(200, abs=2)


# -- tokens that never expire -------------------------------------------------------------------


@pytest.mark.parametrize("token_format", ["jwt", "opaque"])
def test_non_expiring_tokens_are_held_at_most_the_bound(
    issuer: LocalIssuer, make: Callable[..., ClerkM2MSource], token_format: str
) -> None:
    source = make(non_expiring=True, token_format=token_format)
    token = receive(source(NO_KEY))
    assert sent_body(issuer) == {"token_format": token_format}  # Clerk's default: no expiry
    if token_format == "jwt":
        assert "exp" not in token.claims  # the issuer really minted a non-expiring JWT
    assert token.lifetime == pytest.approx(NON_EXPIRING_CACHE_LIFE, abs=1)
    assert NON_EXPIRING_CACHE_LIFE == 86400


def test_non_expiring_through_a_client_is_bounded(
    issuer: LocalIssuer, make: Callable[..., ClerkM2MSource]
) -> None:
    with TokenClient(make(non_expiring=True, token_format="opaque")) as client:
        info = client.get_token_info()
    assert 0 < info.expires_at - time.time() <= NON_EXPIRING_CACHE_LIFE + 1


def test_answer_without_expiration_when_one_was_asked_for(
    issuer: LocalIssuer, make: Callable[..., ClerkM2MSource]
) -> None:
    """Kept for what was asked, not forever: the request said 300 s."""
    issuer.malformed(body=answer(issuer, "mt_forever", life_ms=None), count=1, endpoint="m2m")
    token = receive(make(token_format="opaque", seconds_until_expiration=300)(NO_KEY))
    assert token.lifetime == pytest.approx(300, abs=0.01)


def test_non_expiring_with_a_lifetime_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="non_expiring"):
        ClerkM2MSource(MACHINE_KEY, non_expiring=True, seconds_until_expiration=60)


# -- answers that hold no usable token ----------------------------------------------------------


@pytest.mark.parametrize(("body", "says"), [
    ({"id": "mt_1", "expiration": None}, "without a 'token' string"),
    ({"token": "", "expiration": None}, "without a 'token' string"),
    ({"token": 12, "expiration": None}, "without a 'token' string"),
    ({"token": "mt_1", "expiration": int(time.time()) + 60}, "milliseconds"),  # seconds
    ({"token": "mt_1", "expiration": "soon"}, "milliseconds"),
    ({"token": "mt_1", "expiration": float("1e300")}, "milliseconds"),
    ({"token": "mt_1", "expiration": True}, "milliseconds"),
    ({"token": "mt_1", "created_at": 1_800_000_000_000, "expiration": 1_799_999_999_000},
     "already expired"),
])
def test_unusable_answers_are_invalid(
    issuer: LocalIssuer, make: Callable[..., ClerkM2MSource], body: dict[str, Any], says: str
) -> None:
    issuer.malformed(body=json.dumps(body), count=1, endpoint="m2m")
    with pytest.raises(InvalidTokenError, match=says) as caught:
        make(token_format="opaque")(NO_KEY)
    assert caught.value.status == 200


def test_unparseable_body_is_transient(
    issuer: LocalIssuer, make: Callable[..., ClerkM2MSource]
) -> None:
    issuer.malformed(count=1, endpoint="m2m")
    with pytest.raises(TokenFetchError, match="not JSON"):
        make()(NO_KEY)


# -- the cache key ------------------------------------------------------------------------------


@pytest.mark.parametrize(("request_", "part"), [
    (TokenRequest(session_id="sess_1"), "session_id"),
    (TokenRequest(template="t"), "template"),
    (TokenRequest(organization_id="org_1"), "organization_id"),
    (TokenRequest(audience="https://api"), "audience"),
])
def test_key_parts_are_refused_before_any_request(
    issuer: LocalIssuer, make: Callable[..., ClerkM2MSource], request_: TokenRequest, part: str
) -> None:
    with pytest.raises(TokenRejectedError, match=f"cannot honour {part}"):
        make()(request_)
    assert issuer.request_count() == 0


def test_identity_separates_every_configuration(issuer: LocalIssuer) -> None:
    url = issuer.clerk_api_url
    base = {"api_url": url, "timeout": TIMEOUT}
    variants = [
        ClerkM2MSource(MACHINE_KEY, **base),
        ClerkM2MSource(MACHINE_KEY, **base, claims={"role": "a"}),
        ClerkM2MSource(MACHINE_KEY, **base, claims={"role": "b"}),
        ClerkM2MSource(MACHINE_KEY, **base, seconds_until_expiration=600),
        ClerkM2MSource(MACHINE_KEY, **base, non_expiring=True),
        ClerkM2MSource(MACHINE_KEY, **base, token_format="opaque"),
        ClerkM2MSource("ak_test_other_machine", **base),
        ClerkM2MSource(MACHINE_KEY, api_url="https://api.clerk.com/v1", timeout=TIMEOUT),
    ]
    identities = [source.identity for source in variants]
    assert len(set(identities)) == len(identities)
    # Stable: another instance (another process) with the same configuration agrees.
    assert ClerkM2MSource(MACHINE_KEY, **base).identity == identities[0]
    assert ClerkM2MSource(MACHINE_KEY, **base, seconds_until_expiration=3600).identity == (
        identities[0])  # the default, spelled out
    for identity in identities:
        assert "very_secret" not in identity and "other_machine" not in identity
    for source in variants:
        source.close()


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "error", "code", "hint"), [
    (400, TokenRejectedError, "malformed_request_body", "claims, seconds_until_expiration"),
    (401, TokenRejectedError, "authentication_invalid", "CLERK_MACHINE_SECRET_KEY"),
    (403, TokenRejectedError, "machine_not_allowed", "may not create M2M tokens"),
    (404, TokenRejectedError, "resource_not_found", "check api_url"),
    (409, TokenRejectedError, "conflict", "conflicting"),
    (422, TokenRejectedError, "form_param_format_invalid", "claims, seconds_until_expiration"),
    (429, TokenFetchError, "too_many_requests", "billed"),
    (500, TokenFetchError, "server_error", "try again later"),
    (502, TokenFetchError, "server_error", "try again later"),
    (503, TokenFetchError, "server_error", "try again later"),
])
def test_error_table(
    issuer: LocalIssuer, make: Callable[..., ClerkM2MSource], status: int,
    error: type[TokenError], code: str, hint: str,
) -> None:
    retry_after = 7 if error is TokenFetchError else None
    issuer.fail(status, code=code, retry_after=retry_after, endpoint="m2m")
    with pytest.raises(error) as caught:
        make()(NO_KEY)
    assert type(caught.value) is error
    assert (caught.value.status, caught.value.code) == (status, code)
    message = str(caught.value)
    assert f"HTTP {status} ({code}): injected fault" in message
    assert hint in message
    if isinstance(caught.value, TokenFetchError):
        assert caught.value.retry_after == 7
    assert issuer.request_count("m2m") == 1  # the source never retries: the engine does
    assert issuer.issued_count("m2m") == 0


def test_issuer_default_codes_are_clerks(
    issuer: LocalIssuer, make: Callable[..., ClerkM2MSource]
) -> None:
    issuer.fail(403, endpoint="m2m")
    with pytest.raises(TokenRejectedError) as caught:
        make()(NO_KEY)
    assert caught.value.code == "machine_not_allowed"


@pytest.mark.parametrize("key", ["ak_test_wrong_very_secret", "ak_revoked_very_secret"])
def test_wrong_or_revoked_machine_key(
    issuer: LocalIssuer, make: Callable[..., ClerkM2MSource], key: str
) -> None:
    if "revoked" in key:
        issuer.add_machine(key)
        make(machine_secret_key=key)(NO_KEY)  # accepted until revoked
        issuer.revoke_machine_key(key)
    source = make(machine_secret_key=key)
    with pytest.raises(TokenRejectedError) as caught:
        source(NO_KEY)
    assert (caught.value.status, caught.value.code) == (401, "authentication_invalid")
    assert "very_secret" not in str(caught.value) + repr(caught.value) + repr(source)


def test_a_second_machine_gets_its_own_subject(
    issuer: LocalIssuer, make: Callable[..., ClerkM2MSource]
) -> None:
    other = issuer.add_machine("ak_test_second_machine")
    first = make()(NO_KEY)
    second = make(machine_secret_key="ak_test_second_machine")(NO_KEY)
    assert second.claims["sub"] == other != first.claims["sub"]


def test_issuer_refuses_what_clerk_refuses(issuer: LocalIssuer) -> None:
    """The endpoint validates like Clerk, so the source's own checks are not the only ones."""
    import requests

    url = f"{issuer.clerk_api_url}/m2m_tokens"
    auth = {"Authorization": f"Bearer {MACHINE_KEY}"}
    for body, status in [({"seconds_until_expiration": 0}, 422),
                         ({"seconds_until_expiration": "60"}, 422),
                         ({"claims": [1]}, 422), ({"token_format": "paseto"}, 422)]:
        got = requests.post(url, json=body, headers=auth, timeout=TIMEOUT)
        assert got.status_code == status, body
        assert got.json()["errors"][0]["code"].startswith("form_param")
    got = requests.post(url, data=b"[", headers=auth, timeout=TIMEOUT)
    assert got.status_code == 400
    got = requests.post(url, json={}, timeout=TIMEOUT)
    assert got.status_code == 401 and got.json()["errors"][0]["long_message"]
    got = requests.post(url, json={}, headers=auth, timeout=TIMEOUT)  # Clerk's defaults
    assert got.status_code == 201
    assert got.json()["token"].startswith("mt_") and got.json()["expiration"] is None


def test_secret_echoed_by_the_issuer_is_scrubbed(
    issuer: LocalIssuer, make: Callable[..., ClerkM2MSource]
) -> None:
    body = json.dumps({"errors": [{"code": "authentication_invalid",
                                   "message": f"bad key {MACHINE_KEY}",
                                   "long_message": f"bad key {MACHINE_KEY}"}]})
    issuer.fail(401, body=body, endpoint="m2m")
    with pytest.raises(TokenRejectedError) as caught:
        make()(NO_KEY)
    assert MACHINE_KEY not in str(caught.value) and "***" in str(caught.value)


# -- configuration ------------------------------------------------------------------------------


def test_key_from_the_environment(
    issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLERK_MACHINE_SECRET_KEY", MACHINE_KEY)
    source = ClerkM2MSource(api_url=issuer.clerk_api_url, timeout=TIMEOUT)
    assert source(NO_KEY).raw
    monkeypatch.delenv("CLERK_MACHINE_SECRET_KEY")
    with pytest.raises(ConfigurationError, match="CLERK_MACHINE_SECRET_KEY"):
        ClerkM2MSource()
    source.close()


@pytest.mark.parametrize(("options", "says"), [
    ({"machine_secret_key": "sk_test_instance_key"}, "instance secret key"),
    ({"machine_secret_key": "ak_two\nlines"}, "whitespace or control"),
    ({"machine_secret_key": ""}, "missing or empty"),
    ({"token_format": "paseto"}, "token_format"),
    ({"seconds_until_expiration": 0}, "positive whole number"),
    ({"seconds_until_expiration": 1.5}, "positive whole number"),
    ({"seconds_until_expiration": True}, "positive whole number"),
    ({"claims": {"when": object()}}, "JSON-serialisable"),
    ({"claims": {"x": float("nan")}}, "JSON-serialisable"),
    ({"claims": {1: "a"}}, "string keys"),
    ({"claims": {"big": "x" * 20000}}, "keep them under"),
    ({"api_url": "http://api.clerk.com/v1"}, "https://"),
])
def test_bad_configuration(options: dict[str, Any], says: str) -> None:
    key = options.pop("machine_secret_key", MACHINE_KEY)
    with pytest.raises(ConfigurationError, match=says) as caught:
        ClerkM2MSource(key, **options)
    assert isinstance(caught.value, ValueError)
    assert "instance_key" not in str(caught.value)


def test_repr_hides_the_key(make: Callable[..., ClerkM2MSource]) -> None:
    text = repr(make())
    assert "very_secret" not in text and "machine_secret_key='***'" in text


def test_exported() -> None:
    assert swr_token.ClerkM2MSource is ClerkM2MSource


# -- billing: one creation per key per refresh cycle --------------------------------------------


def test_one_creation_per_refresh_cycle_across_threads() -> None:
    """16 threads reading through 5 refresh cycles cost 1 + 5 creations, not one per read."""
    clock = FakeClock()
    with LocalIssuer(private_key=KEY, machine_secret_key=MACHINE_KEY, clock=clock) as iss:
        source = ClerkM2MSource(MACHINE_KEY, api_url=iss.clerk_api_url,
                                seconds_until_expiration=60, timeout=TIMEOUT)
        with TokenClient(source, clock=clock, executor=InlineExecutor()) as client:
            barrier = threading.Barrier(16, timeout=WAIT)
            seen: set[str] = set()
            lock = threading.Lock()

            def reader() -> None:
                barrier.wait()
                for _ in range(50):
                    raw = client.get_token()
                    with lock:
                        seen.add(raw)

            threads = [threading.Thread(target=reader, daemon=True) for _ in range(16)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WAIT)
            assert not any(t.is_alive() for t in threads)
            assert iss.issued_count("m2m") == 1
            for cycle in range(1, 6):
                clock.advance(50)  # 10 s left: stale; the next read refreshes in background
                for _ in range(20):
                    client.get_token()
                assert iss.issued_count("m2m") == 1 + cycle
        source.close()
    assert len(seen) == 1


def test_issued_jwt_verifies_against_the_issuers_jwks(
    issuer: LocalIssuer, make: Callable[..., ClerkM2MSource]
) -> None:
    raw = make()(NO_KEY).raw
    header = jwt.get_unverified_header(raw)
    assert header["kid"] == issuer.kid
    claims = jwt.decode(raw, KEY.public_key(), algorithms=["RS256"])
    assert claims["exp"] - claims["iat"] == 3600
