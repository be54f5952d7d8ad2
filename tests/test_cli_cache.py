"""``swr-token get`` reuses tokens between runs through the FileStore; ``swr-token cache``.

Run as users run it: subprocesses (``sys.executable -m swr_token``) against a LocalIssuer,
each test with its own cache directory (conftest sets ``XDG_CACHE_HOME``).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from swr_token.testing import LocalIssuer

from .test_cli import JWT, clean_env, cli


def _clerk(issuer: LocalIssuer, **extra: str) -> dict[str, str]:
    return clean_env(CLERK_SECRET_KEY=issuer.secret_key, CLERK_API_URL=issuer.clerk_api_url,
                     **extra)


def _cache_dir() -> Path:
    return Path(os.environ["XDG_CACHE_HOME"]) / "swr_token"


def test_twenty_runs_make_one_issuer_request(issuer: LocalIssuer) -> None:
    issuer.reset_counts()
    env = _clerk(issuer)
    tokens = set()
    for _ in range(20):
        proc = cli("get", "--session", "sess_loop", env=env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
        tokens.add(proc.stdout.strip())
    assert issuer.request_count("clerk") == 1
    assert len(tokens) == 1
    mode = stat.S_IMODE(_cache_dir().stat().st_mode)
    assert mode == 0o700
    for path in _cache_dir().iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert issuer.secret_key not in path.read_text()  # tokens only, never the secret


def test_no_cache_asks_every_time_and_keys_and_sources_stay_apart(issuer: LocalIssuer) -> None:
    issuer.reset_counts()
    env = _clerk(issuer)
    for _ in range(2):
        assert cli("get", "--session", "sess_nc", "--no-cache", env=env).returncode == 0
    assert issuer.request_count("clerk") == 2
    assert not _cache_dir().exists() or list(_cache_dir().glob("*.tok")) == []
    # SWR_TOKEN_NO_CACHE=1 opts out; 0 and false do not (the second run of "0" and both of
    # "false" are answered from the token "0" cached).
    for value, requests in (("1", 2), ("0", 1), ("false", 0)):
        before = issuer.request_count("clerk")
        for _ in range(2):
            assert cli("get", "--session", "sess_env", env={
                **env, "SWR_TOKEN_NO_CACHE": value}).returncode == 0
        assert issuer.request_count("clerk") - before == requests, value
    issuer.reset_counts()
    for session in ("sess_a", "sess_b", "sess_a"):
        assert cli("get", "--session", session, env=env).returncode == 0
    assert issuer.request_count("clerk") == 2  # sess_a once, sess_b once
    # Another secret is another source (another Clerk instance): never its cached token.
    other = {**env, "CLERK_SECRET_KEY": "sk_test_someone_else"}
    assert cli("get", "--session", "sess_a", env=other).returncode == 3
    assert issuer.request_count("clerk") == 3


def test_opaque_oauth2_tokens_are_reused_with_their_expiry(issuer: LocalIssuer) -> None:
    issuer.opaque = True
    try:
        issuer.reset_counts()
        env = clean_env(SWR_TOKEN_CLIENT_SECRET=issuer.client_secret)
        args = ("get", "--token-url", issuer.token_url, "--client-id", issuer.client_id,
                "--json")
        first = json.loads(cli(*args, env=env).stdout)
        second = json.loads(cli(*args, env=env).stdout)
    finally:
        issuer.opaque = False
    assert issuer.request_count("oauth") == 1
    assert first["token"] == second["token"] and not JWT.search(first["token"])
    assert abs(first["expires_at"] - second["expires_at"]) < 1.0
    assert 0 < second["remaining"] <= first["remaining"]


def test_cache_list_shows_fingerprints_never_tokens_and_clear_empties(
        issuer: LocalIssuer) -> None:
    env = _clerk(issuer)
    token = cli("get", "--session", "sess_list", "--template", "tpl", env=env).stdout.strip()
    listed = cli("cache", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "session_id=sess_list template=tpl" in listed.stdout
    assert token not in listed.stdout and not JWT.search(listed.stdout)
    assert issuer.secret_key not in listed.stdout
    document = json.loads(cli("cache", "list", "--json", env=env).stdout)
    [entry] = document["entries"]
    assert entry["key"]["session_id"] == "sess_list" and 50 < entry["remaining"] <= 60
    assert len(entry["fingerprint"]) == 10
    cleared = cli("cache", "clear", env=env)
    assert cleared.returncode == 0 and "removed 1 cached token" in cleared.stdout
    assert "no cached tokens" in cli("cache", "list", env=env).stdout
    issuer.reset_counts()
    assert cli("get", "--session", "sess_list", "--template", "tpl", env=env).returncode == 0
    assert issuer.request_count("clerk") == 1


def test_cache_dir_flag_and_a_directory_others_can_write(issuer: LocalIssuer,
                                                         tmp_path: Path) -> None:
    env = _clerk(issuer)
    mine = tmp_path / "mine"
    assert cli("get", "--session", "sess_dir", "--cache-dir", str(mine), env=env).returncode == 0
    assert list(mine.glob("*.tok"))
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    proc = cli("get", "--session", "sess_dir", "--cache-dir", str(open_dir), env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"chmod 700 {open_dir}" in proc.stderr and "--no-cache" in proc.stderr
    assert cli("get", "--session", "sess_dir", "--cache-dir", str(open_dir), "--no-cache",
               env=env).returncode == 0


def test_hostile_cache_files_are_replaced_not_raised(issuer: LocalIssuer) -> None:
    env = _clerk(issuer)
    assert cli("get", "--session", "sess_bad", env=env).returncode == 0
    [entry] = _cache_dir().glob("*.tok")
    issuer.reset_counts()
    for content in (b"", b"{not json", b"\xff" * 10, b"[]" * 40_000):
        entry.write_bytes(content)
        proc = cli("get", "--session", "sess_bad", env=env)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert JWT.search(proc.stdout)
    assert issuer.request_count("clerk") == 4  # each unusable file: asked again, rewritten
    assert cli("get", "--session", "sess_bad", env=env).returncode == 0
    assert issuer.request_count("clerk") == 4


@contextlib.contextmanager
def _read_only_dir(where: Path) -> Iterator[Callable[[], None]]:
    """A directory that refuses writes; yields ``seal()``, which makes it read-only (files
    written before stay readable). Root writes through mode bits, so as root it is a small
    tmpfs remounted read-only; otherwise mode 0500."""
    where.mkdir(mode=0o700)
    if os.geteuid() != 0:
        yield lambda: where.chmod(0o500)
        where.chmod(0o700)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs",
                              str(where)], capture_output=True, timeout=10)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here to make a directory read-only for root")
    try:
        yield lambda: subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True,
                                     capture_output=True, timeout=10)
    finally:
        subprocess.run(["umount", str(where)], capture_output=True, timeout=10)


def test_a_read_only_cache_serves_what_it_holds_and_says_why_it_cannot_keep_more(
        issuer: LocalIssuer, tmp_path: Path) -> None:
    env = _clerk(issuer)
    where = tmp_path / "ro"
    with _read_only_dir(where) as seal:
        kept = cli("get", "--session", "sess_kept", "--cache-dir", str(where), env=env)
        assert kept.returncode == 0
        seal()
        issuer.reset_counts()
        again = cli("get", "--session", "sess_kept", "--cache-dir", str(where), env=env)
        assert again.returncode == 0 and again.stdout == kept.stdout and again.stderr == ""
        assert issuer.request_count("clerk") == 0
        proc = cli("get", "--session", "sess_new", "--cache-dir", str(where), env=env)
        assert proc.returncode == 0, proc.stderr
        assert JWT.search(proc.stdout)
        assert "warning: the token could not be cached" in proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_a_full_disk_keeps_the_good_cached_token(issuer: LocalIssuer, tmp_path: Path) -> None:
    """A file-size limit makes every write fail (EFBIG) as on a full disk."""
    env = _clerk(issuer)
    good = cli("get", "--session", "sess_full", "--json", env=env)
    first = json.loads(good.stdout)
    script = textwrap.dedent("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        from swr_token.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    outcomes = []
    for args in (("get", "--session", "sess_full", "--json"),  # served from the cache
                 ("get", "--session", "sess_other")):  # fetched; the write fails
        proc = subprocess.run([sys.executable, "-c", script, *args], env=env,
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        outcomes.append(proc)
    cached, fetched = outcomes
    assert json.loads(cached.stdout)["token"] == first["token"]
    assert cached.stderr == ""
    assert "could not be cached" in fetched.stderr and fetched.stderr.count("\n") == 1
    issuer.reset_counts()
    again = json.loads(cli("get", "--session", "sess_full", "--json", env=env).stdout)
    assert again["token"] == first["token"]  # the good entry survived the failed writes
    assert issuer.request_count("clerk") == 0


def test_a_cached_get_loads_neither_the_http_stack_nor_the_jwt_parser(
        issuer: LocalIssuer) -> None:
    env = _clerk(issuer)
    assert cli("get", "--session", "sess_fast", env=env).returncode == 0
    probe = textwrap.dedent("""
        import sys
        started = set(sys.modules)  # what the interpreter's start-up (site hooks) loaded
        from swr_token.cli import main
        code = main(["get", "--session", "sess_fast"])
        # The HTTP stack, the JWT parser, the engine (its logging and futures) and argparse
        # (the flags are read by a small parser of their own): each costs a cached call
        # more than the rest of it (benchmarks/cached_get.py).
        heavy = [m for m in ("requests", "urllib3", "jwt", "cryptography", "logging",
                             "dataclasses", "concurrent.futures", "swr_token._client",
                             "argparse", "gettext", "typing")
                 if m in sys.modules and m not in started]
        print("loaded:", *heavy, file=sys.stderr)
        sys.exit(code)
    """)
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "loaded:"
    assert JWT.search(proc.stdout)


@pytest.mark.parametrize("args", [("cache",), ("cache", "list", "--bogus")])
def test_cache_usage_errors_are_one_line(args: tuple[str, ...]) -> None:
    proc = cli(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
