"""Django: a view that calls an upstream API with the signed-in user's Clerk session token.

The TokenClient is built from settings on first use, not at import: settings may not be ready
then, and a gunicorn ``--preload`` master should not hold one. It is closed through atexit.

    python examples/django_view.py                                # a LocalIssuer and a stub
    curl -H 'X-Session-Id: sess_123' http://127.0.0.1:8000/orders  # API on 127.0.0.1

With CLERK_SECRET_KEY (and CLERK_API_URL, SWR_TOKEN_TEMPLATE) and UPSTREAM_URL set, it uses
those instead. In a project, ``SWR_TOKEN`` and ``UPSTREAM_URL`` go in settings.py.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

import django
import requests
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path

import swr_token

_client: swr_token.TokenClient | None = None
_lock = threading.Lock()


def token_client() -> swr_token.TokenClient:
    """The process's client, built from ``settings.SWR_TOKEN`` on first use."""
    global _client
    with _lock:
        if _client is None:
            conf = settings.SWR_TOKEN
            source = swr_token.ClerkBackendSource(conf["CLERK_SECRET_KEY"],
                                                  api_url=conf["CLERK_API_URL"])
            _client = swr_token.TokenClient(source)
            atexit.register(close_token_client)
        return _client


def close_token_client() -> None:
    global _client
    with _lock:
        client, _client = _client, None
    if client is not None:
        client.close()


def orders(request: HttpRequest) -> JsonResponse:
    # A real app takes the session id from the verified Clerk session (its "sid" claim).
    session_id = request.headers.get("X-Session-Id")
    if not session_id:
        return JsonResponse({"error": "sign in first"}, status=401)
    try:
        token = token_client().get_token(
            session_id, template=settings.SWR_TOKEN.get("TEMPLATE"), timeout=5)
    except swr_token.TokenRejectedError:  # the session ended, or is not known
        return JsonResponse({"error": "your session has ended; sign in again"}, status=401)
    except swr_token.TokenError:  # the issuer is down and no token is servable
        return JsonResponse({"error": "try again shortly"}, status=503,
                            headers={"Retry-After": "2"})
    reply = requests.get(f"{settings.UPSTREAM_URL}/orders", timeout=5,
                         headers={"Authorization": f"Bearer {token}"})
    return JsonResponse(reply.json(), status=reply.status_code)


urlpatterns = [path("orders", orders)]


def configure(**overrides: Any) -> None:
    """Stand-alone settings, from the environment unless overridden (a project has settings.py)."""
    settings.configure(**{
        "ROOT_URLCONF": __name__,
        "ALLOWED_HOSTS": ["127.0.0.1", "localhost", "testserver"],
        "SWR_TOKEN": {
            "CLERK_SECRET_KEY": os.environ.get("CLERK_SECRET_KEY"),
            "CLERK_API_URL": os.environ.get("CLERK_API_URL", "https://api.clerk.com/v1"),
            "TEMPLATE": os.environ.get("SWR_TOKEN_TEMPLATE"),
        },
        "UPSTREAM_URL": os.environ.get("UPSTREAM_URL"),
        **overrides,
    })
    django.setup()


if __name__ == "__main__":
    from django.core.management import call_command

    address = f"127.0.0.1:{os.environ.get('PORT', '8000')}"
    if os.environ.get("CLERK_SECRET_KEY"):
        configure()
        call_command("runserver", address, use_reloader=False)
    else:
        import upstream_stub

        from swr_token.testing import LocalIssuer

        with LocalIssuer() as issuer, upstream_stub.running(issuer.jwks_url) as upstream_url:
            configure(UPSTREAM_URL=upstream_url, SWR_TOKEN={
                "CLERK_SECRET_KEY": issuer.secret_key, "CLERK_API_URL": issuer.clerk_api_url})
            call_command("runserver", address, use_reloader=False)
