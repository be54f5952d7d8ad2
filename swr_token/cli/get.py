"""``swr-token get``: print one token on stdout, for shell scripts and cron.

A token still in the file cache is printed without loading the client, the HTTP stack or
the JWT parser; otherwise a :class:`TokenClient` asks the issuer (and fills the cache).
"""

from __future__ import annotations

import os
import sys

from .cache import CACHE_MARGIN, cached, open_store
from .common import (
    EXIT_ERROR,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_TRANSIENT,
    UsageError,
    say,
    warn,
)
from .flags import BadValue, positive
from .sources import build_source

TYPE_CHECKING = False  # not typing's: a cached `get` must not pay for importing typing
if TYPE_CHECKING:
    import logging
    from typing import Any

    from .._errors import TimedOutError, TokenError
    from .._filestore import FileStore
    from .._token import Token
    from .flags import Args
    from .sources import Plan

__all__ = ["run"]


def run(args: Args, prog: str) -> int:
    """Print the token ``args`` ask for; the exit status."""
    _check_timeout_variable()
    plan = build_source(args)
    store = None if args.no_cache else open_store(args.cache_dir)
    hit = cached(store, plan.identity, plan.key)
    if hit is None:
        return _from_issuer(args, prog, plan, store)
    if args.verbose and store is not None:
        sys.stderr.write(f"{prog}: INFO token {hit.fingerprint} from the cache in "
                         f"{store.path}, {hit.remaining:.0f} s left\n")
    return _print_token(args, plan.key, hit.raw, hit.expires_at, hit.remaining)


def _check_timeout_variable() -> None:
    """A bad SWR_TOKEN_TIMEOUT is a usage error naming it (the flag's default ignores it)."""
    value = os.environ.get("SWR_TOKEN_TIMEOUT")
    if value is None:
        return
    try:
        positive(value)
    except BadValue as exc:
        raise UsageError(f"SWR_TOKEN_TIMEOUT: {exc}") from None


def _from_issuer(args: Args, prog: str, plan: Plan, store: FileStore | None) -> int:
    """Ask the issuer through a TokenClient; the library's errors become exit statuses."""
    import logging

    from .._errors import TokenError

    logger = logging.getLogger("swr_token")
    handler = _log_handler(logger, prog, verbose=args.verbose)
    logger.addHandler(handler)
    try:
        info = _fetch(args, prog, plan, store)
    except TokenError as exc:
        return _failed(exc, args, prog, plan)
    finally:
        logger.removeHandler(handler)
    return _print_token(args, plan.key, info.raw, info.expires_at, info.remaining())


def _log_handler(logger: logging.Logger, prog: str, *, verbose: bool) -> logging.Handler:
    """``-v``: the client's log on stderr; else nothing there but the one-line error."""
    import logging

    if not verbose:
        return logging.NullHandler()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prog}: %(levelname)s %(message)s"))
    logger.setLevel(logging.DEBUG)
    return handler


def _fetch(args: Args, prog: str, plan: Plan, store: FileStore | None) -> Token:
    from .._client import TokenClient

    source = plan.make()
    options: dict[str, Any] = {} if store is None else {"store": store,
                                                         "margin": CACHE_MARGIN}
    key = plan.key
    try:
        # --timeout bounds the whole wait: it is the fetch's budget, and its retries and
        # each request follow from it (the client stretches the source's own limits to
        # the budget). The wait itself gets a second more, as a safety net only.
        with TokenClient(source, fetch_timeout=args.timeout, **options) as client:
            info = client.get_token_info(key["session_id"], template=key["template"],
                                         audience=key["audience"], timeout=args.timeout + 1.0)
    finally:
        source.close()
    if store is not None and cached(store, getattr(source, "identity", plan.identity),
                                    key) is None:
        warn(prog, f"the token could not be cached in {store.path} (see -v); the next run "
             "will ask the issuer again (or pass --cache-dir PATH / --no-cache)")
    return info


def _failed(exc: TokenError, args: Args, prog: str, plan: Plan) -> int:
    """Say what went wrong on one line; the exit status for it."""
    from .._errors import (
        ConfigurationError,
        InvalidTokenError,
        TimedOutError,
        TokenFetchError,
        TokenRejectedError,
    )

    if isinstance(exc, ConfigurationError):
        raise UsageError(str(exc)) from None
    if isinstance(exc, TokenRejectedError):
        credential = "key" if plan.where.startswith("--private-key-file") else "secret"
        hint = f" (the {credential} came from {plan.where})" if exc.status in (401, 403) else ""
        say(sys.stderr, prog, f"{exc}{hint}")
        return EXIT_REJECTED
    if isinstance(exc, InvalidTokenError):
        say(sys.stderr, prog, exc)
        return EXIT_INVALID
    if isinstance(exc, TimedOutError):
        say(sys.stderr, prog, _timed_out(exc, args, plan))
        return EXIT_TRANSIENT
    if isinstance(exc, TokenFetchError):
        say(sys.stderr, prog, f"{exc} [gave up after retrying within --timeout "
            f"{args.timeout:g} s; run again later]")
        return EXIT_TRANSIENT
    say(sys.stderr, prog, exc)
    return EXIT_ERROR


def _timed_out(exc: TimedOutError, args: Args, plan: Plan) -> str:
    from .._request import TokenRequest

    key = plan.key
    wanted = TokenRequest(key["session_id"], key["template"], None, key["audience"])
    why = "the issuer did not answer in time" if exc.last_error is None \
        else f"the last attempt failed: {exc.last_error}"
    return (f"no token for {wanted.describe()} within --timeout {args.timeout:g} s ({why}); "
            "raise --timeout if the issuer is this slow, or run again later")


def _print_token(args: Args, key: dict[str, str | None], raw: str, expires_at: float,
                 remaining: float) -> int:
    if args.json:
        import json

        document = {
            "token": raw,
            "expires_at": round(expires_at, 3),
            "remaining": round(remaining, 3),
            "key": {"session_id": key["session_id"], "template": key["template"],
                    "organization_id": None, "audience": key["audience"]},
        }
        sys.stdout.write(json.dumps(document) + "\n")
    else:
        sys.stdout.write(raw + "\n")
    sys.stdout.flush()
    return EXIT_OK
