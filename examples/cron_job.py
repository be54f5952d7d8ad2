"""A cron job: get a token, call the API once, exit promptly, whatever the issuer does.

    python examples/cron_job.py       # against a LocalIssuer and a stub API it starts itself

With SWR_TOKEN_TOKEN_URL set it uses your issuer and API instead (OAuth2 client credentials),
configured by SWR_TOKEN_TOKEN_URL, SWR_TOKEN_CLIENT_ID, SWR_TOKEN_CLIENT_SECRET and
UPSTREAM_URL (TOKEN_TIMEOUT, in seconds, is optional: 10).

Exit status, and always exactly one line on stderr when it is not 0:

- 0 done;
- 2 configuration missing or invalid (the line names the variable);
- 3 refused: the issuer refused the credentials, or the API refused the token (fix them);
- 4 unavailable: the issuer or the API is unreachable, timed out or failing (the next run
  tries again);
- 5 unexpected answer: the issuer's token is unusable, or the API answered something other
  than the orders (check UPSTREAM_URL).

swr_token's threads are daemons, so a hung request never holds the job open. For a token in a
shell script, ``swr-token get`` does this.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

import requests

import swr_token

EXIT_OK, EXIT_CONFIG, EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_UNEXPECTED = 0, 2, 3, 4, 5
REQUIRED = ("SWR_TOKEN_TOKEN_URL", "SWR_TOKEN_CLIENT_ID", "SWR_TOKEN_CLIENT_SECRET",
            "UPSTREAM_URL")


class JobFailed(Exception):
    """One failure, with the exit status it means and one line saying what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(" ".join(message.split()))
        self.status = status


def run(env: Mapping[str, str]) -> int:
    """Run the job once; the exit status. Failures are one line on stderr, never a traceback."""
    # The job reports each failure itself, once: without this, swr_token's own warning for
    # the same failure would reach stderr too (Python prints unhandled WARNINGs there).
    logging.getLogger("swr_token").addHandler(logging.NullHandler())
    try:
        print(f"cron_job: {sync(env)}")
    except JobFailed as failure:
        print(f"cron_job: {failure}", file=sys.stderr)
        return failure.status
    return EXIT_OK


def sync(env: Mapping[str, str]) -> str:
    """Get a token, fetch the orders; what was done, or :class:`JobFailed`."""
    missing = [name for name in REQUIRED if not env.get(name)]
    if missing:
        raise JobFailed(EXIT_CONFIG, f"set {', '.join(missing)} (see the top of cron_job.py)")
    try:
        timeout = float(env.get("TOKEN_TIMEOUT", "10"))
    except ValueError:
        raise JobFailed(EXIT_CONFIG, "TOKEN_TIMEOUT must be a number of seconds") from None
    try:
        source = swr_token.OAuth2ClientCredentialsSource(
            env["SWR_TOKEN_TOKEN_URL"], env["SWR_TOKEN_CLIENT_ID"],
            env["SWR_TOKEN_CLIENT_SECRET"])
    except swr_token.ConfigurationError as exc:
        raise JobFailed(EXIT_CONFIG, f"SWR_TOKEN_TOKEN_URL and the credentials: {exc}") from None
    try:
        with swr_token.TokenClient(source) as client:
            token = client.get_token(timeout=timeout)
    except swr_token.TokenRejectedError as exc:
        raise JobFailed(EXIT_REFUSED, str(exc)) from None
    except swr_token.TokenFetchError as exc:
        raise JobFailed(EXIT_UNAVAILABLE, f"{exc} (the next run tries again)") from None
    except swr_token.TokenError as exc:  # InvalidTokenError: the issuer's answer is unusable
        raise JobFailed(EXIT_UNEXPECTED, str(exc)) from None
    finally:
        source.close()
    return f"synced {len(_orders(env['UPSTREAM_URL'].rstrip('/') + '/orders', token))} orders"


def _orders(url: str, token: str) -> list[object]:
    try:
        reply = requests.get(url, timeout=10, headers={"Authorization": f"Bearer {token}"})
    except requests.RequestException as exc:
        raise JobFailed(EXIT_UNAVAILABLE, f"the API at {url} is unreachable "
                        f"({type(exc).__name__}); the next run tries again") from None
    status = reply.status_code
    if status in (401, 403):
        raise JobFailed(EXIT_REFUSED, f"the API at {url} refused the token (HTTP {status}); "
                        "check that this client may call it (scope, audience)")
    if status in (408, 429) or status >= 500:
        raise JobFailed(EXIT_UNAVAILABLE, f"the API at {url} answered HTTP {status}; the next "
                        "run tries again")
    if status != 200:
        raise JobFailed(EXIT_UNEXPECTED, f"the API at {url} answered HTTP {status}; check "
                        "UPSTREAM_URL")
    try:
        orders = reply.json()["orders"]
    except (ValueError, KeyError, TypeError):
        orders = None
    if not isinstance(orders, list):
        raise JobFailed(EXIT_UNEXPECTED, f"the API at {url} answered without an 'orders' list; "
                        "check UPSTREAM_URL")
    return orders


if __name__ == "__main__":
    if os.environ.get("SWR_TOKEN_TOKEN_URL"):
        sys.exit(run(os.environ))
    import upstream_stub

    from swr_token.testing import LocalIssuer

    with LocalIssuer() as issuer, upstream_stub.running(issuer.jwks_url) as upstream_url:
        status = run({"SWR_TOKEN_TOKEN_URL": issuer.token_url, "UPSTREAM_URL": upstream_url,
                      "SWR_TOKEN_CLIENT_ID": issuer.client_id,
                      "SWR_TOKEN_CLIENT_SECRET": issuer.client_secret})
    sys.exit(status)
