"""Processes: exit with a hung refresh, fork mid-fetch, close(), and no secret anywhere."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from swr_token import ClientClosedError, TokenClient, TokenFetchError, TokenRejectedError
from swr_token.testing import FakeClock, InlineExecutor

from .conftest import WAIT, FakeSource

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_script_exits_promptly_with_a_refresh_hung_in_flight() -> None:
    result = _run("""
        import threading, time, jwt, swr_token
        hang = threading.Event()
        calls = []
        def source(req):
            calls.append(1)
            if len(calls) > 1:
                hang.wait()          # the refresh never returns
            now = time.time()
            return jwt.encode({"iat": now - 35, "exp": now + 25}, "k" * 32, algorithm="HS256")
        client = swr_token.TokenClient(source)
        client.get_token("s")        # 25 s left: fresh on arrival (no "no progress" backoff)
        client.get_token("s", background_refresh_threshold=30)  # stale: starts a refresh...
        t0 = time.monotonic()
        # Stale on arrival, the key backs off ("no progress"); the refresh starts about 5 s
        # on (the poller, as the token nears its margin). A 5 s bound raced that; 10 s does not.
        while len(calls) < 2 and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        assert len(calls) == 2       # ...which is now hung on the network
        print("exiting")
    """)
    assert result.returncode == 0, result.stderr
    assert "exiting" in result.stdout


def test_script_exits_promptly_with_a_cold_fetch_hung_and_a_caller_timeout() -> None:
    result = _run("""
        import threading, swr_token
        client = swr_token.TokenClient(lambda req: threading.Event().wait() or "x")
        try:
            client.get_token("s", timeout=0.2)
        except swr_token.TokenFetchError as e:
            print("timed out:", "timed out" in str(e))
    """)
    assert result.returncode == 0, result.stderr
    assert "timed out: True" in result.stdout


# A libc fork() called through ctypes runs none of Python's at-fork hooks, as uWSGI's workers
# (forked from C) do not; PyDLL keeps the GIL across the call, as the forking C code has it.
FORKS = {
    "os.fork": "fork = os.fork",
    "libc-fork-no-hooks": "import ctypes; fork = ctypes.PyDLL(None).fork",
}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("fork", list(FORKS.values()), ids=list(FORKS))
def test_fork_with_a_fetch_in_flight_and_a_lock_held(fork: str) -> None:
    result = _run("""
        import os, threading, time, jwt, swr_token
        from swr_token.testing import holding_client_lock
        FORK
        parent = os.getpid()
        release = threading.Event()
        def source(req):
            if os.getpid() == parent and req.session_id == "inflight":
                release.wait(10)
            now = time.time()
            return jwt.encode({"iat": now, "exp": now + 60, "pid": os.getpid(),
                               "sid": req.session_id}, "k" * 32, algorithm="HS256")
        client = swr_token.TokenClient(source)
        cached = client.get_token("cached")
        for _ in range(10):
            client.get_token("cached")
        waiter = threading.Thread(target=client.get_token, args=("inflight",), daemon=True)
        waiter.start()
        t0 = time.monotonic()
        while client.stats()["in_flight"] == 0 and time.monotonic() - t0 < 5:
            time.sleep(0.005)
        holding, hold = threading.Event(), threading.Event()
        def hold_lock():
            with holding_client_lock(client):  # a parent thread holds the lock across the fork
                holding.set()
                hold.wait(10)
        threading.Thread(target=hold_lock, daemon=True).start()
        holding.wait(5)
        # Let the parent's threads settle into their blocking waits first: a thread still
        # waiting for the GIL when a hookless fork() copies the GIL's condition variable leaves
        # the child's GIL unusable, a CPython hazard no library can repair (see README, uWSGI).
        time.sleep(0.3)
        pid = fork()
        if pid == 0:
            counts = client.stats()                               # the child's own, from 0
            if any(counts[k] for k in ("hits", "waits", "fetches", "failures")):
                os._exit(4)
            ok = client.get_token("cached") == cached          # valid tokens kept
            started = time.monotonic()
            tok = client.get_token("inflight", timeout=5)      # parent's fetch dropped
            if time.monotonic() - started > 2.5:
                os._exit(5)                                     # not at once: waited it out
            claims = jwt.decode(tok, options={"verify_signature": False})
            ok = ok and claims["pid"] == os.getpid()
            tok2 = client.get_token("new", timeout=5)           # fresh workers and lock
            counts = client.stats()
            if (counts["hits"], counts["fetches"], counts["waits"]) != (1, 2, 2):
                os._exit(6)
            client.close()                                      # the parent's lock is not used
            os._exit(0 if ok and tok2 else 3)
        hold.set()
        release.set()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                print("child", os.waitstatus_to_exitcode(status))
                break
            time.sleep(0.01)
        else:
            os.kill(pid, 9)
            print("child deadlocked")
        print("parent", client.get_token("inflight", timeout=5) is not None)
        print("parent hits", client.stats()["hits"] >= 10)
    """.replace("FORK", fork), timeout=40)
    assert "child 0" in result.stdout, result.stdout + result.stderr
    assert "parent True" in result.stdout
    assert "parent hits True" in result.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_threads_racing_into_a_hookless_fork_reset_it_once() -> None:
    """Eight threads of a child forked without hooks call at once: one resets the client,
    the others wait for it, and they share one fresh fetch."""
    result = _run("""
        import ctypes, os, threading, time, swr_token
        parent = os.getpid()
        release = threading.Event()
        child_calls = []
        def source(req):
            if os.getpid() == parent:
                release.wait(10)
            else:
                child_calls.append(req.session_id)
                time.sleep(0.2)  # long enough for every thread to join this fetch
            return swr_token.Token(f"tok-{os.getpid()}", expires_in=300)
        client = swr_token.TokenClient(source)
        threading.Thread(target=client.get_token, args=("k",), daemon=True).start()
        t0 = time.monotonic()
        while client.stats()["in_flight"] == 0 and time.monotonic() - t0 < 5:
            time.sleep(0.005)
        pid = ctypes.PyDLL(None).fork()
        if pid == 0:
            barrier = threading.Barrier(8, timeout=5)
            got = []
            def call():
                barrier.wait()
                got.append(client.get_token("k", timeout=5))
            threads = [threading.Thread(target=call) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            ok = got == [f"tok-{os.getpid()}"] * 8 and child_calls == ["k"]
            os._exit(0 if ok else 3)
        release.set()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                print("child", os.waitstatus_to_exitcode(status))
                break
            time.sleep(0.01)
        else:
            os.kill(pid, 9)
            print("child deadlocked")
    """, timeout=40)
    assert "child 0" in result.stdout, result.stdout + result.stderr


def test_close_is_idempotent_and_fast_with_a_request_in_flight(clock: FakeClock) -> None:
    source = FakeSource(clock)
    source.gate = threading.Event()
    client = TokenClient(source, clock=clock)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            client.get_token("s")
        except ClientClosedError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    source.wait_for_calls(1)
    closer = threading.Thread(target=client.close)
    closer.start()
    closer.join(1.0)
    assert not closer.is_alive()
    caller.join(1.0)
    assert not caller.is_alive() and len(outcome) == 1
    source.gate.set()
    client.close()


def test_no_token_in_logs_reprs_or_errors(clock: FakeClock, caplog: pytest.LogCaptureFixture
                                         ) -> None:
    source = FakeSource(clock)
    with caplog.at_level(logging.DEBUG), TokenClient(
            source, clock=clock, executor=InlineExecutor(),
            on_token_update=lambda r, t: logging.getLogger("app").debug("new %r", t)) as client:
        tokens = [client.get_token("s")]
        texts = [repr(client), repr(client.get_token_info("s")), str(client.stats())]
        clock.advance(46)
        source.script.extend([TokenFetchError("503")] * 10)
        client.get_token("s")
        clock.advance(1)
        source.script.clear()
        source.script.append(lambda _r: tokens[0])  # no progress
        clock.advance(40)
        client.get_token("s")
        source.script.append(TokenRejectedError("rejected"))
        clock.advance(5)
        try:
            client.get_token("s", refresh_if_stale=True)
        except Exception as exc:
            texts.append(str(exc))
            texts.append(repr(exc))
        tokens += source.issued
    texts += [r.getMessage() for r in caplog.records]
    texts += [r.exc_text or "" for r in caplog.records]
    assert caplog.records  # something was logged
    for raw in tokens:
        for text in texts:
            assert raw not in text
            assert raw.split(".")[2] not in text  # not even the signature


def test_client_cannot_be_pickled(client: TokenClient) -> None:
    import pickle

    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(client)


def test_stats_count_what_happened(client: TokenClient, source: FakeSource,
                                   clock: FakeClock) -> None:
    client.get_token("s")
    for _ in range(5):
        client.get_token("s")
    clock.advance(46)
    client.get_token("s")
    stats = client.stats()
    assert stats["hits"] == 5
    assert stats["stale_serves"] == 1
    assert stats["waits"] == 1
    assert stats["fetches"] == 2
    assert stats["background_refreshes"] == 1
    assert stats["failures"] == 0
    assert stats["entries"] == 1
    assert WAIT


def test_a_client_dropped_without_close_is_collected_and_its_poller_stops() -> None:
    import gc
    import time
    import weakref

    import jwt

    def source(_req: object) -> str:
        now = time.time()
        return jwt.encode({"iat": now, "exp": now + 60}, "k" * 32, algorithm="HS256")

    before = set(threading.enumerate())
    client = TokenClient(source, poll_interval=0.05, fetch_timeout=0.2)
    client.get_token("s")  # starts the poller
    pollers = [thread for thread in threading.enumerate()
               if thread not in before and thread.name == "swr-token-poller"]
    assert len(pollers) == 1 and pollers[0].is_alive()
    poller = pollers[0]
    ref = weakref.ref(client)
    del client
    gc.collect()
    assert ref() is None
    from .conftest import wait_until

    wait_until(lambda: not poller.is_alive(), timeout=5)  # idle, then gone


def test_an_attempt_failing_after_close_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """close() releases the callers at once; the attempt still running fails later (the
    issuer went down with the app): that failure is news to no one and must not be logged."""
    entered, release = threading.Event(), threading.Event()

    def source(request: object) -> str:
        entered.set()
        release.wait(WAIT)
        raise TokenFetchError("the issuer went away")

    client = TokenClient(source)
    caller_error: list[BaseException] = []

    def caller() -> None:
        try:
            client.get_token("s")
        except BaseException as exc:  # recorded for the assertion
            caller_error.append(exc)

    waiting = threading.Thread(target=caller)
    waiting.start()
    assert entered.wait(WAIT)
    client.close()
    waiting.join(WAIT)
    assert isinstance(caller_error[0], ClientClosedError)
    fetchers = [t for t in threading.enumerate() if t.name.startswith("swr-token-fetch")]
    with caplog.at_level(logging.DEBUG, logger="swr_token"):
        release.set()
        for thread in fetchers:
            thread.join(WAIT)
            assert not thread.is_alive()
    assert fetchers
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
