"""Flask: one TokenClient per process, made at start-up, shared by every request thread.

    python examples/flask_app.py            # a LocalIssuer and a stub API on 127.0.0.1, then
    curl http://127.0.0.1:5000/orders       # the view calls the API with a fresh token

With SWR_TOKEN_TOKEN_URL, SWR_TOKEN_CLIENT_ID, SWR_TOKEN_CLIENT_SECRET (and SWR_TOKEN_SCOPE)
and UPSTREAM_URL set, it uses those instead (OAuth2 client credentials). Under gunicorn, from
this directory: ``gunicorn -c gunicorn.conf.py 'flask_app:create_app()'``.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import requests
from flask import Flask, jsonify

import swr_token

SETTINGS = ("SWR_TOKEN_TOKEN_URL", "SWR_TOKEN_CLIENT_ID", "SWR_TOKEN_CLIENT_SECRET",
            "SWR_TOKEN_SCOPE", "UPSTREAM_URL")


def create_app(**settings: str) -> Flask:
    """The app; each setting comes from ``settings`` or else the environment."""
    app = Flask(__name__)
    app.config.update({name: os.environ.get(name) for name in SETTINGS}, **settings)
    missing = [name for name in SETTINGS[:3] + SETTINGS[4:] if not app.config.get(name)]
    if missing:  # say which, rather than fail on the first None
        raise RuntimeError(f"flask_app needs {', '.join(missing)} (see the top of flask_app.py)")
    source = swr_token.OAuth2ClientCredentialsSource(
        app.config["SWR_TOKEN_TOKEN_URL"], app.config["SWR_TOKEN_CLIENT_ID"],
        app.config["SWR_TOKEN_CLIENT_SECRET"], scope=app.config["SWR_TOKEN_SCOPE"])
    client = swr_token.TokenClient(source)  # at start-up: one per process, for every thread
    atexit.register(client.close)
    app.extensions["swr_token"] = client
    upstream = requests.Session()

    @app.get("/orders")
    def orders() -> Any:
        token = client.get_token(timeout=5)  # a dict read while fresh; waits only near expiry
        reply = upstream.get(f"{app.config['UPSTREAM_URL']}/orders", timeout=5,
                             headers={"Authorization": f"Bearer {token}"})
        if reply.status_code == 401:
            client.invalidate(token=token)  # drop exactly this token; the next call gets a new one
        return jsonify(reply.json()), reply.status_code

    @app.errorhandler(swr_token.TokenFetchError)
    def issuer_unavailable(exc: swr_token.TokenFetchError) -> Any:
        return jsonify(error="the token issuer is unavailable; try again"), 503, {
            "Retry-After": str(round(exc.retry_after or 2))}

    @app.errorhandler(swr_token.TokenError)
    def no_token(exc: swr_token.TokenError) -> Any:  # refused: a configuration problem
        app.logger.error("cannot get a token for the upstream API: %s", exc)
        return jsonify(error="cannot authenticate to the upstream API"), 502

    return app


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "5000"))
    if os.environ.get("SWR_TOKEN_TOKEN_URL"):
        create_app().run(host="127.0.0.1", port=port)
    else:
        import upstream_stub

        from swr_token.testing import LocalIssuer

        with LocalIssuer() as issuer, upstream_stub.running(issuer.jwks_url) as upstream_url:
            create_app(SWR_TOKEN_TOKEN_URL=issuer.token_url, SWR_TOKEN_CLIENT_ID=issuer.client_id,
                       SWR_TOKEN_CLIENT_SECRET=issuer.client_secret, UPSTREAM_URL=upstream_url,
                       ).run(host="127.0.0.1", port=port)
