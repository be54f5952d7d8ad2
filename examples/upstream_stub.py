"""A stand-in for the API your app calls: ``GET /orders`` with a bearer JWT.

It checks the token's signature against the issuer's JWKS, as a real resource server would,
and answers 401 without a valid token. Used by the Flask, Django and cron examples.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt


@contextlib.contextmanager
def running(jwks_url: str) -> Iterator[str]:
    """Serve on 127.0.0.1 (a free port) while the block runs; yields the base URL."""
    keys = jwt.PyJWKClient(jwks_url)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            scheme, _, token = self.headers.get("Authorization", "").partition(" ")
            try:
                if self.path != "/orders" or scheme.lower() != "bearer":
                    raise jwt.InvalidTokenError("no bearer token")
                key = keys.get_signing_key_from_jwt(token).key
                claims = jwt.decode(token, key, algorithms=["RS256"],
                                    options={"verify_aud": False})
            except jwt.PyJWTError:
                self.answer(401, {"error": "a valid bearer token is required"})
                return
            self.answer(200, {"orders": [{"id": 1, "item": "tea"}], "for": claims.get("sub")})

        def answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="upstream-stub", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
