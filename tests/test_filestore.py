"""FileStore on its own: entries, hostile files, compare-and-delete, flock single-flight,
housekeeping and the directory's permissions. Engine-level behaviour is in
tests/test_filestore_client.py."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from swr_token import ConfigurationError
from swr_token._filestore import FileStore, default_cache_dir
from swr_token._store import StoredToken

KEY = ("sess_1", None, None, None)
SCOPE = "clerk http://127.0.0.1/v1 #0123456789abcdef"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _token(raw: str = "opaque-token-1", life: float = 60.0,
           issued_at: float | None = None) -> StoredToken:
    return StoredToken(raw=raw, expires_at=time.time() + life, issued_at=issued_at)


def _entry_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.tok"))


# -- entries --------------------------------------------------------------------------------


def test_round_trip_keeps_an_opaque_token_with_its_absolute_expiry(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "c")
    token = _token(issued_at=time.time() - 1)
    store.put(SCOPE, KEY, token)
    assert store.get(SCOPE, KEY) == token
    assert FileStore(tmp_path / "c").get(SCOPE, KEY) == token  # another process's view
    assert stat.S_IMODE(os.stat(tmp_path / "c").st_mode) == 0o700
    [entry] = _entry_files(tmp_path / "c")
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600


def test_scope_and_key_parts_keep_entries_apart(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put(SCOPE, KEY, _token("a-token"))
    assert store.get("clerk https://other.example/v1 #fedcba9876543210", KEY) is None
    assert store.get(SCOPE, ("sess_1", "tmpl", None, None)) is None
    assert store.get(SCOPE, ("sess_2", None, None, None)) is None


def test_an_expired_entry_reads_as_nothing_and_is_removed(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put(SCOPE, KEY, StoredToken(raw="old", expires_at=time.time() - 1, issued_at=None))
    assert _entry_files(tmp_path)
    assert store.get(SCOPE, KEY) is None
    assert _entry_files(tmp_path) == []


def test_a_late_writer_never_replaces_a_newer_token(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    now = time.time()
    newer = _token("newer", issued_at=now)
    store.put(SCOPE, KEY, newer)
    store.put(SCOPE, KEY, _token("older", issued_at=now - 5))
    assert store.get(SCOPE, KEY) == newer


def _plant(tmp_path: Path, store: FileStore, content: bytes | None) -> Path:
    """Write ``content`` where KEY's entry lives (found by storing a token first)."""
    store.put(SCOPE, KEY, _token("to-be-replaced"))
    [path] = _entry_files(tmp_path)
    if content is not None:
        path.write_bytes(content)
    return path


def _document(**changes: object) -> bytes:
    document: dict[str, object] = {"v": 1, "scope": SCOPE, "key": list(KEY), "raw": "tok",
                                   "expires_at": time.time() + 60, "issued_at": None}
    document.update(changes)
    return json.dumps(document).encode()


@pytest.mark.parametrize("content", [
    b"",
    b"\x00\xff garbage",
    _document()[:30],  # truncated
    b"[1, 2, 3]",
    b"[" * 100_000,  # deep nesting
    _document(v=2),
    _document(scope="clerk https://evil.example #0"),  # another source's entry copied here
    _document(key=["sess_other", None, None, None]),
    _document(key="sess_1"),
    _document(raw=""),
    _document(raw=7),
    _document(expires_at="soon"),
    _document(expires_at=float("inf")),
    _document(expires_at=1e300),
    _document(expires_at=True),
    _document(issued_at="yesterday"),
    _document(raw="x" * 20_000),  # oversized token
    b" " * 100_000 + _document(),  # oversized file
], ids=lambda content: repr(content[:20]))
def test_hostile_entries_read_as_nothing_and_the_next_write_replaces_them(
        tmp_path: Path, content: bytes) -> None:
    store = FileStore(tmp_path)
    _plant(tmp_path, store, content)
    assert store.get(SCOPE, KEY) is None
    good = _token("good")
    store.put(SCOPE, KEY, good)
    assert store.get(SCOPE, KEY) == good


def test_a_symlink_fifo_or_directory_in_place_of_an_entry_is_ignored(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    path = _plant(tmp_path, store, None)
    secret = tmp_path / "elsewhere"
    secret.write_bytes(_document())
    for make in (lambda: os.symlink(secret, path), lambda: os.mkfifo(path)):
        path.unlink()
        make()
        assert store.get(SCOPE, KEY) is None  # a FIFO must not hang the open either
        good = _token("good")
        store.put(SCOPE, KEY, good)  # os.replace swaps the odd file for a real entry
        assert store.get(SCOPE, KEY) == good
    path.unlink()
    path.mkdir()
    assert store.get(SCOPE, KEY) is None


def test_an_entry_owned_by_another_user_is_ignored(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    store = FileStore(tmp_path)
    path = _plant(tmp_path, store, _document())
    os.chown(path, 65534, 65534)
    assert store.get(SCOPE, KEY) is None


# -- compare-and-delete ---------------------------------------------------------------------


def test_delete_removes_only_the_token_it_names(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    newer = _token("newer")
    store.put(SCOPE, KEY, newer)
    store.delete(SCOPE, KEY, "older")  # a 401 on an old token must not drop a newer one
    assert store.get(SCOPE, KEY) == newer
    store.delete(SCOPE, KEY, "newer")
    assert store.get(SCOPE, KEY) is None
    store.delete(SCOPE, KEY, "newer")  # nothing there: fine
    assert list(tmp_path.iterdir()) == []


# -- refresh locks --------------------------------------------------------------------------

_HOLDER = textwrap.dedent("""
    import sys, time
    from swr_token._filestore import FileStore
    store = FileStore(sys.argv[1])
    handle = store.try_lock(sys.argv[2], ("sess_1", None, None, None))
    print("locked" if handle is not None else "busy", flush=True)
    time.sleep(60)
""")


def _holder(path: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), SCOPE], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "locked"
    return process


def test_the_lock_is_exclusive_across_threads_and_released_by_unlock(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    handle = store.try_lock(SCOPE, KEY)
    assert handle is not None
    assert store.try_lock(SCOPE, KEY) is None
    assert FileStore(tmp_path).try_lock(SCOPE, KEY) is None
    assert store.try_lock(SCOPE, ("sess_2", None, None, None)) is not None  # per key
    store.unlock(SCOPE, KEY, handle)
    again = store.try_lock(SCOPE, KEY)
    assert again is not None
    store.unlock(SCOPE, KEY, again)


def test_a_killed_holder_releases_the_lock_and_a_waiter_returns_at_once(
        tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    holder = _holder(tmp_path)
    try:
        assert store.try_lock(SCOPE, KEY) is None
        started = time.monotonic()
        threading.Timer(0.3, holder.send_signal, (signal.SIGKILL,)).start()
        assert store.wait(SCOPE, KEY, timeout=10.0) is None  # died without a token
        assert time.monotonic() - started < 3.0  # noticed the release, not the timeout
        handle = store.try_lock(SCOPE, KEY)
        assert handle is not None
        store.unlock(SCOPE, KEY, handle)
    finally:
        holder.kill()
        holder.wait()


def test_wait_returns_the_holders_token_as_soon_as_it_is_stored(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    handle = store.try_lock(SCOPE, KEY)
    token = _token("from-the-holder")
    other = FileStore(tmp_path)

    def finish() -> None:
        other.put(SCOPE, KEY, token)
        store.unlock(SCOPE, KEY, handle)

    threading.Timer(0.2, finish).start()
    started = time.monotonic()
    assert other.wait(SCOPE, KEY, timeout=10.0) == token
    assert time.monotonic() - started < 3.0


def test_wait_is_bounded_while_the_holder_never_finishes(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    holder = _holder(tmp_path)
    try:
        started = time.monotonic()
        assert store.wait(SCOPE, KEY, timeout=0.3) is None
        assert 0.3 <= time.monotonic() - started < 2.0
    finally:
        holder.kill()
        holder.wait()


def test_close_releases_a_waiter_and_the_locks_held(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    other = FileStore(tmp_path)
    assert other.try_lock(SCOPE, KEY) is not None
    threading.Timer(0.2, store.close).start()
    started = time.monotonic()
    store.wait(SCOPE, KEY, timeout=10.0)
    assert time.monotonic() - started < 3.0
    other.close()
    handle = FileStore(tmp_path).try_lock(SCOPE, KEY)
    assert handle is not None


# -- housekeeping ---------------------------------------------------------------------------


def test_the_number_of_entries_is_capped_expired_first_then_soonest_expiry(
        tmp_path: Path) -> None:
    store = FileStore(tmp_path, max_entries=10)
    now = time.time()
    for i in range(3):
        store.put(SCOPE, (f"dead{i}", None, None, None),
                  StoredToken(raw=f"dead{i}", expires_at=now - 10 + i, issued_at=None))
    for i in range(8):
        store.put(SCOPE, (f"live{i}", None, None, None),
                  StoredToken(raw=f"live{i}", expires_at=now + 100 + i, issued_at=None))
    files = _entry_files(tmp_path)
    assert len(files) <= 10
    kept = {entry.token.raw for entry in store.entries()}
    assert not any(raw.startswith("dead") for raw in kept)
    assert "live7" in kept  # the newest write survives
    for i in range(8, 30):
        store.put(SCOPE, (f"live{i}", None, None, None),
                  StoredToken(raw=f"live{i}", expires_at=now + 100 + i, issued_at=None))
    kept = {entry.token.raw for entry in store.entries()}
    assert len(_entry_files(tmp_path)) <= 10
    assert "live29" in kept and "live0" not in kept  # the soonest-expiring went first


def test_clear_removes_entries_and_unused_locks(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put(SCOPE, KEY, _token())
    handle = store.try_lock(SCOPE, KEY)
    store.unlock(SCOPE, KEY, handle)
    assert store.clear() == 1
    assert list(tmp_path.iterdir()) == []


def test_entries_lists_fingerprints_not_only_tokens(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put(SCOPE, KEY, _token("listed-token"))
    [entry] = store.entries()
    assert (entry.scope, entry.key) == (SCOPE, KEY)
    assert len(entry.fingerprint) == 10 and "listed-token" not in entry.fingerprint


# -- the directory --------------------------------------------------------------------------


def test_default_directory_follows_xdg_cache_home(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "swr_token")
    assert FileStore().path == str(tmp_path / "xdg" / "swr_token")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, per the XDG spec
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "swr_token")


@pytest.mark.parametrize("mode, said", [(0o777, "writable by others"),
                                        (0o770, "writable by its group")])
def test_a_directory_others_can_write_is_refused(tmp_path: Path, mode: int, said: str) -> None:
    where = tmp_path / "shared"
    where.mkdir()
    where.chmod(mode)
    with pytest.raises(ConfigurationError, match=said) as caught:
        FileStore(where)
    assert f"chmod 700 {where}" in str(caught.value)


def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    where = tmp_path / "theirs"
    where.mkdir(mode=0o700)
    os.chown(where, 65534, 65534)
    with pytest.raises(ConfigurationError, match="owned by uid 65534"):
        FileStore(where)


def test_a_readable_directory_of_ours_is_tightened_and_a_file_path_refused(
        tmp_path: Path) -> None:
    where = tmp_path / "mine"
    where.mkdir()
    where.chmod(0o755)
    FileStore(where)
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigurationError, match="not a directory"):
        FileStore(tmp_path / "file")


def test_a_failed_write_leaves_the_old_entry_and_no_temporary_file(tmp_path: Path) -> None:
    """A full disk, as a file-size limit in a subprocess: the write fails with EFBIG."""
    store = FileStore(tmp_path)
    good = _token("good-token")
    store.put(SCOPE, KEY, good)
    script = textwrap.dedent("""
        import resource, sys, time
        from swr_token._filestore import FileStore
        from swr_token._store import StoredToken
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
        store = FileStore(sys.argv[1])
        try:
            store.put(sys.argv[2], ("sess_1", None, None, None),
                      StoredToken(raw="x" * 500, expires_at=time.time() + 60, issued_at=None))
        except OSError as exc:
            print("failed", exc.errno)
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path), SCOPE], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.stdout.startswith("failed"), done.stderr
    assert store.get(SCOPE, KEY) == good
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []
