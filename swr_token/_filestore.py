"""``FileStore``: tokens shared by the processes of one host through a private directory.

- one entry file per (source identity, key), named by a hash of both: a small JSON document
  with the raw token, its absolute expiry and its issue time, so opaque tokens are shared too;
- writes go to a temporary file in the same directory, are fsynced, then ``os.replace``\\ d
  over the entry: a reader sees the old entry or the new one, never half of one;
- single-flight across processes: ``fcntl.flock`` on a per-key lock file; the kernel drops
  the lock of a process that dies, so a crashed fetcher never locks a key out;
- everything read is hostile: an entry that is not a regular file of ours, too large, not
  JSON, of another key or with out-of-range numbers is ignored (and replaced on the next
  write), never raised into ``get_token``.

The directory is created ``0700`` and entries ``0600``; one that others can write to, or that
another user owns, is refused. No secret is ever written: only tokens, which are as sensitive
as passwords for their short life.

Kept light on purpose (no logging, dataclasses or engine imports at module level): a cached
``swr-token get`` reads its answer through :meth:`FileStore.peek` and exits.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator

from ._errors import ConfigurationError

TYPE_CHECKING = False  # not typing's: a cached `swr-token get` must not import typing
if TYPE_CHECKING:
    from ._request import TokenRequest
    from ._store import StoredToken

__all__ = ["FileEntry", "FileStore", "default_cache_dir"]

#: A key as its four parts: a TokenRequest, or the plain tuple the cached CLI path builds
#: (a TokenRequest would import typing there).
KeyParts = tuple[str | None, str | None, str | None, str | None]

_ENTRY = ".tok"
_LOCK = ".lock"
_TEMP = ".tmp-"
_VERSION = 1
_ORPHAN_AGE = 60.0  # seconds before an unused lock or temporary file may be swept
_MAX_EXPIRES_AT = 4102444800.0  # 2100-01-01: a larger expiry is garbage, not a token


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/swr_token`` (when absolute, per the XDG spec), else
    ``~/.cache/swr_token``."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "swr_token")


class FileEntry:
    """One entry as :meth:`FileStore.entries` lists it (the token's ``raw`` stays inside
    ``token``; show ``fingerprint``, never the token)."""

    __slots__ = ("fingerprint", "key", "scope", "token")

    def __init__(self, scope: str, key: TokenRequest, token: StoredToken, fingerprint: str) -> None:
        self.scope = scope
        self.key = key
        self.token = token
        self.fingerprint = fingerprint

    def __repr__(self) -> str:
        return f"<FileEntry {self.key!r} {self.fingerprint}>"


class _Record:
    """A sound entry file, parsed."""

    __slots__ = ("expires_at", "issued_at", "key", "raw", "scope")

    def __init__(self, scope: str, key: TokenRequest, raw: str, expires_at: float,
                 issued_at: float | None) -> None:
        self.scope = scope
        self.key = key
        self.raw = raw
        self.expires_at = expires_at
        self.issued_at = issued_at


class _Held:
    """A refresh lock this process holds: the open lock file and the pid that took it."""

    __slots__ = ("fd", "path", "pid")

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self.pid = os.getpid()


def _decode_key(value: object) -> TokenRequest | None:
    if (isinstance(value, list) and len(value) == 4
            and all(part is None or isinstance(part, str) for part in value)):
        # A plain tuple equals the TokenRequest (a NamedTuple) it stands for; building one
        # would import typing on the cached CLI path.
        return (value[0], value[1], value[2], value[3])  # type: ignore[return-value]
    return None


def _load_document(data: bytes) -> dict[str, object] | None:
    """The JSON object of an entry file of this format version, or None."""
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or document.get("v") != _VERSION:
        return None
    return document


def _finite(value: object, *, low: float, high: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and low <= number <= high else None


class FileStore:
    """A shared token store in a local directory; pass it as
    ``TokenClient(..., store=FileStore())``.

    ``path``: the directory (default :func:`default_cache_dir`), created ``0700``; refused
    with :class:`ConfigurationError` if group- or world-writable or owned by another user.
    ``max_entries`` (1,000) caps the entry files (expired ones are swept first, then those
    expiring soonest); ``max_token_size`` (16 KiB) bounds a stored token, and so the file
    read. Processes of one host share tokens and refresh each key once between them; across
    hosts use ``RedisStore``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 max_entries: int = 1000, max_token_size: int = 16 * 1024) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigurationError(f"max_entries must be a positive int, got {max_entries!r}")
        if (isinstance(max_token_size, bool) or not isinstance(max_token_size, int)
                or max_token_size < 256):
            raise ConfigurationError(
                f"max_token_size must be an int of at least 256 bytes, got {max_token_size!r}")
        self._dir = os.path.abspath(os.fspath(path) if path is not None else default_cache_dir())
        self._max_entries = max_entries
        self._max_token = max_token_size
        # An entry is the token plus a few hundred bytes of JSON: key parts and identity.
        self._max_file = 2 * max_token_size + 16 * 1024
        self._prepare_dir()
        self._init_process_state()

    def _init_process_state(self) -> None:
        self._held: dict[int, _Held] = {}
        self._guard = threading.Lock()
        self._closing = threading.Event()

    @property
    def path(self) -> str:
        """The directory holding the entries."""
        return self._dir

    def __repr__(self) -> str:
        return f"<FileStore {self._dir!r}>"

    # -- the directory --------------------------------------------------------------------

    def _prepare_dir(self) -> None:
        where = self._dir
        try:
            if not os.path.lexists(where):
                os.makedirs(where, mode=0o700, exist_ok=True)
            info = os.stat(where)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the token cache directory {where}: {exc.strerror or exc}; "
                "pass another path (or --cache-dir), or --no-cache on the command line"
            ) from None
        if not stat.S_ISDIR(info.st_mode):
            raise ConfigurationError(f"the token cache path {where} is not a directory; "
                                     "remove it or pass another path")
        uid = os.geteuid()
        if info.st_uid != uid:
            raise ConfigurationError(
                f"the token cache directory {where} is owned by uid {info.st_uid}, not by "
                f"this user (uid {uid}): another user could read or plant tokens there; "
                "pass a directory of your own")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ConfigurationError(
                f"the token cache directory {where} is writable by "
                f"{'others' if info.st_mode & stat.S_IWOTH else 'its group'} (mode "
                f"{stat.S_IMODE(info.st_mode):04o}): anyone who can write there could plant "
                f"tokens; run: chmod 700 {where}")
        if stat.S_IMODE(info.st_mode) & 0o077:
            # Ours and not writable by others: tighten read access (tokens are secrets).
            with contextlib.suppress(OSError):
                os.chmod(where, 0o700)

    def _name(self, scope: str, key: KeyParts) -> str:
        digest = hashlib.sha256(json.dumps([scope, *key], separators=(",", ":"))
                                .encode("utf-8", "surrogatepass")).hexdigest()[:40]
        return os.path.join(self._dir, digest)

    # -- tokens ---------------------------------------------------------------------------

    def get(self, scope: str, key: TokenRequest) -> StoredToken | None:
        """The stored token for ``key`` of the source ``scope``, if one is there and still
        alive; anything unusable reads as nothing."""
        found = self.peek(scope, key)
        if found is None:
            return None
        from ._store import StoredToken

        return StoredToken(*found)

    def peek(self, scope: str, key: KeyParts) -> tuple[str, float, float | None] | None:
        """Like :meth:`get`, as ``(raw, expires_at, issued_at)``: for a caller that must
        start fast (the CLI's cached path) and so loads nothing of the engine."""
        path = self._name(scope, key) + _ENTRY
        entry = self._read(path)
        if entry is None:
            return None
        if entry.scope != scope or entry.key != key:
            return None  # another key's entry (a hash clash) or a file copied here
        if entry.expires_at <= time.time():
            self._remove_if(path, entry.raw)  # lazy housekeeping
            return None
        return entry.raw, entry.expires_at, entry.issued_at

    def _read(self, path: str) -> _Record | None:
        """Parse one entry file; ``None`` for anything that is not a sound entry of ours.

        Only failures of the store itself (an unreadable directory, an I/O error) raise.
        """
        try:
            # O_NONBLOCK: a FIFO planted here must not hang the open.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
                return None  # a symlink, socket or directory where an entry belongs
            raise
        try:
            info = os.fstat(fd)
            if (not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid()
                    or info.st_size > self._max_file):
                return None
            data = os.read(fd, self._max_file + 1)
        finally:
            os.close(fd)
        if len(data) > self._max_file:
            return None
        return self._parse(data)

    def _parse(self, data: bytes) -> _Record | None:
        document = _load_document(data)
        if document is None:
            return None
        scope, key, raw = document.get("scope"), _decode_key(document.get("key")), \
            self._token_text(document.get("raw"))
        expires_at = _finite(document.get("expires_at"), low=0.0, high=_MAX_EXPIRES_AT)
        issued = document.get("issued_at")
        issued_at = None if issued is None else _finite(issued, low=0.0, high=_MAX_EXPIRES_AT)
        if (not isinstance(scope, str) or key is None or raw is None
                or expires_at is None or (issued is not None and issued_at is None)):
            return None
        return _Record(scope, key, raw, expires_at, issued_at)

    def _token_text(self, value: object) -> str | None:
        """``value`` if it is a token this store keeps (a non-empty str within the cap)."""
        if not isinstance(value, str) or not value or len(value) > self._max_token:
            return None
        return value

    def put(self, scope: str, key: TokenRequest, token: StoredToken) -> None:
        """Store ``token`` for ``key`` (kept until it expires), atomically, unless the entry
        already holds a newer one."""
        if not token.raw or len(token.raw) > self._max_token:
            return  # too large to read back: not stored (the client keeps it in memory)
        path = self._name(scope, key) + _ENTRY
        current = self._read(path)
        if current is not None:
            old = current
            if (old.issued_at is not None and token.issued_at is not None
                    and old.issued_at > token.issued_at and old.expires_at > time.time()):
                return  # a late writer never replaces a newer token
        document = {"v": _VERSION, "scope": scope, "key": list(key), "raw": token.raw,
                    "expires_at": token.expires_at, "issued_at": token.issued_at}
        self._write(path, json.dumps(document, separators=(",", ":")).encode("utf-8"))
        self._sweep_if_full()

    def _write(self, path: str, data: bytes) -> None:
        temp = f"{os.path.dirname(path)}/{_TEMP}{os.getpid()}-{threading.get_ident()}-" \
               f"{os.urandom(4).hex()}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except BaseException:
            # A full disk, a file-size limit, an I/O error: the old entry is left as it was.
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def delete(self, scope: str, key: TokenRequest, raw: str) -> None:
        """Remove the entry for ``key`` only if it still holds ``raw`` (compare-and-delete)."""
        self._remove_if(self._name(scope, key) + _ENTRY, raw)

    def _remove_if(self, path: str, raw: str) -> None:
        found = self._read(path)
        if found is None or found.raw != raw:
            return
        # Move the entry aside first, so a newer token written meanwhile is never the one
        # deleted: what was moved is checked again, and put back if it is not ``raw``.
        aside = f"{os.path.dirname(path)}/{_TEMP}{os.getpid()}-del-{os.urandom(4).hex()}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        try:
            moved = self._read(aside)
            if moved is not None and moved.raw != raw:
                try:
                    os.link(aside, path)
                except FileExistsError:
                    pass  # an even newer entry is there already: keep it
                except OSError:
                    os.replace(aside, path)  # no hard links here: put it back all the same
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(aside)

    # -- refresh locks --------------------------------------------------------------------

    def _open_lock(self, path: str) -> int:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)

    def try_lock(self, scope: str, key: TokenRequest) -> object | None:
        """Take this host's refresh lock for ``key``: a handle, or ``None`` if another
        process (or another thread here) holds it. Never blocks."""
        path = self._name(scope, key) + _LOCK
        for _ in range(3):  # the lock file may be swept between our open and our flock
            fd = self._open_lock(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                held = _Held(fd, path)
                with self._guard:
                    self._held[id(held)] = held
                return held
            os.close(fd)  # we locked a file that was swept: lock the one now at that path
        return None

    def unlock(self, scope: str, key: TokenRequest, handle: object) -> None:
        """Release a lock taken by :meth:`try_lock` in this process."""
        with self._guard:
            held = self._held.pop(id(handle), None)
        if held is None or held is not handle or held.pid != os.getpid():
            return
        try:
            fcntl.flock(held.fd, fcntl.LOCK_UN)
        finally:
            os.close(held.fd)

    def wait(self, scope: str, key: TokenRequest, timeout: float) -> StoredToken | None:
        """Wait up to ``timeout`` seconds for the lock holder's token, then read once.

        Polls the entry and the lock in short, growing sleeps (5 to 50 ms): it returns as
        soon as a new entry is there or the lock is free (its holder finished, failed or
        died; the kernel releases a dead process's flock).
        """
        base = self._name(scope, key)
        deadline = time.monotonic() + max(0.0, timeout)
        before = self._signature(base + _ENTRY)
        try:
            fd = self._open_lock(base + _LOCK)
        except OSError:
            fd = -1
        pause = 0.005
        try:
            while not self._closing.is_set():
                now_sig = self._signature(base + _ENTRY)
                if now_sig != before:
                    found = self.get(scope, key)
                    if found is not None:
                        return found
                    before = now_sig
                if fd >= 0 and self._is_free(fd):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._closing.wait(min(pause, left))
                pause = min(pause * 2, 0.05)
        finally:
            if fd >= 0:
                os.close(fd)
        return self.get(scope, key)

    @staticmethod
    def _is_free(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True

    @staticmethod
    def _signature(path: str) -> tuple[int, int, int] | None:
        try:
            info = os.stat(path)
        except OSError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def listen(self, callback: Callable[[str, TokenRequest, str], None]) -> None:
        """A no-op: files cannot announce. Other processes see a new or dropped token when
        they next read the store (on a miss, a critical read or a refresh)."""

    # -- housekeeping ---------------------------------------------------------------------

    def _scan(self) -> Iterator[os.DirEntry[str]]:
        with os.scandir(self._dir) as listing:
            yield from listing

    def entries(self) -> list[FileEntry]:
        """The sound, unexpired entries (for ``swr-token cache list``), soonest expiry
        first."""
        from ._store import StoredToken
        from ._token import fingerprint

        now = time.time()
        found = []
        for item in self._scan():
            if item.name.endswith(_ENTRY):
                read = self._read(item.path)
                if read is not None and read.expires_at > now:
                    token = StoredToken(read.raw, read.expires_at, read.issued_at)
                    found.append(FileEntry(read.scope, read.key, token, fingerprint(read.raw)))
        return sorted(found, key=lambda entry: entry.token.expires_at)

    def clear(self) -> int:
        """Remove every entry and every lock no process holds; returns the entries
        removed."""
        removed = 0
        for item in self._scan():
            if item.name.endswith(_ENTRY):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(item.path)
                    removed += 1
            elif item.name.endswith(_LOCK):
                self._remove_lock_if_unused(item.path)
            elif item.name.startswith(_TEMP):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(item.path)
        return removed

    def _remove_lock_if_unused(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return  # in use; try_lock re-checks the inode, so removing it under the lock
        try:          # is safe for a process that opened it just before
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        finally:
            os.close(fd)

    def _sweep_if_full(self) -> None:
        """Past the cap, remove expired and unreadable entries, then those expiring soonest,
        down to nine tenths of it; and orphaned locks and temporary files."""
        names = [item for item in self._scan()]
        entries = [item for item in names if item.name.endswith(_ENTRY)]
        if len(entries) <= self._max_entries and len(names) <= 2 * self._max_entries + 16:
            return
        now = time.time()
        ranked = self._rank_by_expiry(entries)
        self._remove_soonest(ranked, now)
        live = {os.path.basename(p)[: -len(_ENTRY)] for _, p in ranked
                if os.path.exists(p)}
        self._remove_orphans(names, live, now)

    def _rank_by_expiry(self, entries: list[os.DirEntry[str]]) -> list[tuple[float, str]]:
        """``(expiry, path)`` of each entry, soonest first; an unreadable one ranks -1."""
        ranked: list[tuple[float, str]] = []
        for item in entries:
            try:
                read = self._read(item.path)
            except OSError:
                read = None
            ranked.append((read.expires_at if read is not None else -1.0, item.path))
        ranked.sort()
        return ranked

    def _remove_soonest(self, ranked: list[tuple[float, str]], now: float) -> None:
        """Unlink the expired and unreadable entries, then those expiring soonest until nine
        tenths of the cap are left."""
        keep = self._max_entries * 9 // 10
        excess = len(ranked) - keep
        for expires_at, path in ranked:
            if excess <= 0 and expires_at > now:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            excess -= 1

    def _remove_orphans(self, names: list[os.DirEntry[str]], live: set[str],
                        now: float) -> None:
        """Remove the old locks of keys with no entry (unless held) and old temporary
        files."""
        for item in names:
            stem = item.name[: -len(_LOCK)]
            old = self._older_than(item, now - _ORPHAN_AGE)
            if item.name.endswith(_LOCK) and stem not in live and old:
                self._remove_lock_if_unused(item.path)
            elif item.name.startswith(_TEMP) and old:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(item.path)

    @staticmethod
    def _older_than(item: os.DirEntry[str], when: float) -> bool:
        try:
            return item.stat(follow_symlinks=False).st_mtime < when
        except OSError:
            return False

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Release waits in progress and every lock this process still holds."""
        self._closing.set()
        with self._guard:
            held, self._held = list(self._held.values()), {}
        for lock in held:
            if lock.pid == os.getpid():
                with contextlib.suppress(OSError):
                    fcntl.flock(lock.fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(lock.fd)

    def reset_after_fork(self) -> None:
        """In a forked child: close the parent's lock files without unlocking them (a flock
        belongs to the open file, which the parent still holds)."""
        for lock in self._held.values():
            with contextlib.suppress(OSError):
                os.close(lock.fd)
        self._init_process_state()
