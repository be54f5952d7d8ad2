"""A cron job: get a token, call the API once, exit promptly, whatever the issuer does.

    python examples/cron_job.py       # against a LocalIssuer and a stub API it starts itself

With SWR_TOKEN_TOKEN_URL, SWR_TOKEN_CLIENT_ID, SWR_TOKEN_CLIENT_SECRET and UPSTREAM_URL set, it
uses those (OAuth2 client credentials). Exit status: 0 done, 3 refused (fix the credentials),
4 issuer unavailable (the next run tries again). swr_token's threads are daemons, so a hung
request never holds the job open. For a token in a shell script, ``swr-token get`` does this.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import requests

import swr_token


def run(env: Mapping[str, str]) -> int:
    source = swr_token.OAuth2ClientCredentialsSource(
        env["SWR_TOKEN_TOKEN_URL"], env["SWR_TOKEN_CLIENT_ID"], env["SWR_TOKEN_CLIENT_SECRET"])
    with swr_token.TokenClient(source) as client:
        try:
            token = client.get_token(timeout=float(env.get("TOKEN_TIMEOUT", "10")))
        except swr_token.TokenRejectedError as exc:
            print(f"cron_job: {exc}", file=sys.stderr)
            return 3
        except swr_token.TokenError as exc:
            print(f"cron_job: {exc}", file=sys.stderr)
            return 4
    reply = requests.get(f"{env['UPSTREAM_URL']}/orders", timeout=10,
                         headers={"Authorization": f"Bearer {token}"})
    reply.raise_for_status()
    print(f"cron_job: synced {len(reply.json()['orders'])} orders")
    return 0


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
