"""The token cache ``get`` keeps between runs (a :class:`FileStore`), and ``swr-token cache
list|clear``."""

from __future__ import annotations

import math
import sys
import time

from .common import EXIT_OK, UsageError

TYPE_CHECKING = False  # not typing's: a cached `get` must not pay for importing typing
if TYPE_CHECKING:
    from .._filestore import FileEntry, FileStore
    from .flags import Args

__all__ = ["CACHE_MARGIN", "Cached", "cached", "open_store", "run"]

# A cached token is reused while it has more than this left (a quarter of its lifetime for
# tokens living under twice as long): what the script does next with it must not outlive it.
CACHE_MARGIN = 15.0

_KEY_PARTS = ("session_id", "template", "organization_id", "audience")


class Cached:
    """A cached token worth handing out; never shows the token in its repr."""

    __slots__ = ("expires_at", "fingerprint", "raw", "remaining")

    def __init__(self, raw: str, expires_at: float, remaining: float, fingerprint: str) -> None:
        self.raw, self.expires_at, self.remaining = raw, expires_at, remaining
        self.fingerprint = fingerprint

    def __repr__(self) -> str:
        return f"<Cached {self.fingerprint} {self.remaining:.0f} s left>"


def open_store(path: str | None) -> FileStore:
    """The cache directory (``path``, else the default one); a usage error if refused."""
    import os

    from .._errors import ConfigurationError
    from .._filestore import FileStore

    try:
        return FileStore(os.path.expanduser(path) if path else None)
    except ConfigurationError as exc:
        raise UsageError(f"{exc}; or pass --no-cache") from None


def cached(store: FileStore | None, identity: str | None,
           key: dict[str, str | None]) -> Cached | None:
    """The cached token for ``key`` if it has enough life left, read without loading the
    HTTP stack or the JWT parser; None to ask the issuer."""
    if store is None or identity is None:
        return None
    from .._token import effective_margin, fingerprint

    try:
        stored = store.peek(identity, (key["session_id"], key["template"], None,
                                       key["audience"]))
    except OSError:
        return None  # an unreadable cache is no cache: the client path says why with -v
    if stored is None:
        return None
    raw, expires_at, issued_at = stored
    remaining = expires_at - time.time()
    lifetime = math.inf if issued_at is None else expires_at - issued_at
    if remaining <= effective_margin(CACHE_MARGIN, lifetime):
        return None
    return Cached(raw, expires_at, remaining, fingerprint(raw))


def run(args: Args, prog: str) -> int:
    """``swr-token cache list|clear``."""
    store = open_store(args.cache_dir)
    if args.cache_command == "clear":
        removed = store.clear()
        sys.stdout.write(f"removed {removed} cached token(s) from {store.path}\n")
        return EXIT_OK
    now = time.time()
    entries = store.entries()
    if args.json:
        _list_json(store.path, entries, now)
    elif entries:
        _list_table(store.path, entries, now)
    else:
        sys.stdout.write(f"no cached tokens in {store.path}\n")
    return EXIT_OK


def _list_json(path: str, entries: list[FileEntry], now: float) -> None:
    import json

    rows = [{"key": dict(zip(_KEY_PARTS, entry.key, strict=True)), "source": entry.scope,
             "fingerprint": entry.fingerprint,
             "remaining": round(entry.token.expires_at - now, 1)} for entry in entries]
    sys.stdout.write(json.dumps({"path": path, "entries": rows}) + "\n")


def _list_table(path: str, entries: list[FileEntry], now: float) -> None:
    """Key, fingerprint and remaining life in aligned columns, then the source."""
    table = [("KEY", "FINGERPRINT", "REMAINING", "SOURCE")]
    for entry in entries:
        parts = [f"{name}={value}" for name, value in zip(_KEY_PARTS, entry.key, strict=True)
                 if value is not None]
        table.append((" ".join(parts) or "(no key parts)", entry.fingerprint,
                      f"{entry.token.expires_at - now:.0f} s", entry.scope))
    widths = [max(len(line[i]) for line in table) for i in range(3)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        sys.stdout.write("  ".join([*cells, line[3]]) + "\n")
    sys.stdout.write(f"({len(entries)} in {path})\n")
