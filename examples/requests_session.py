"""Calling APIs with requests: every request to your API carries a fresh bearer token.

Run: ``python examples/requests_session.py``. Everything runs on 127.0.0.1: a LocalIssuer mints
the tokens, and a second LocalIssuer stands in for your API (it records each request's headers).
"""

from __future__ import annotations

import swr_token
from swr_token.testing import LocalIssuer

with LocalIssuer() as issuer, LocalIssuer() as api:
    source = swr_token.ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url)
    with swr_token.TokenClient(source) as client, \
            swr_token.bearer_session(client, "sess_123", origins=[api.url]) as http:
        response = http.get(api.jwks_url, timeout=5)  # any URL on an allowed origin
        sent = api.requests()[-1].headers["authorization"]
        print("sent the token:", response.status_code,
              sent == f"Bearer {client.get_token('sess_123')}")

        # A 401 drops exactly the token that was sent; the request is retried once.
        api.fail(401, endpoint="jwks", count=1)
        response = http.get(api.jwks_url, timeout=5)
        print("after a 401:", [r.status_code for r in response.history], response.status_code)

        # Other origins (here: the issuer's port) never see the token.
        http.get(issuer.jwks_url, timeout=5)
        print("token sent elsewhere:", "authorization" in issuer.requests("jwks")[-1].headers)
