"""Verifying tokens: check each fetched JWT against the issuer's JWKS before it is used.

Run: ``python examples/verify_tokens.py``. Everything runs on 127.0.0.1 against LocalIssuer.
"""

from __future__ import annotations

import swr_token
from swr_token.testing import LocalIssuer

with LocalIssuer() as issuer, LocalIssuer() as impostor:
    verifier = swr_token.JWKSVerifier(issuer.jwks_url, issuer=issuer.url)  # algorithms=("RS256",)
    source = swr_token.ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url)
    with swr_token.TokenClient(source, verifier=verifier) as client:
        token = client.get_token_info("sess_123")
        print("verified token for", token.claims["sid"], "signed by key", issuer.kid)

    # A token signed with another key is refused, and never cached.
    def forged(request: swr_token.TokenRequest) -> str:
        return impostor.mint(iss=issuer.url, sid=request.session_id)

    with swr_token.TokenClient(forged, verifier=verifier) as client:
        try:
            client.get_token("sess_123")
        except swr_token.InvalidTokenError as exc:
            print("refused:", exc)
