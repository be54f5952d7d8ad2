"""Under real uWSGI: the client made and warmed in the master, workers forked from C.

uWSGI's default mode loads the app in the master and forks the workers without running
Python's at-fork hooks, so a client used in the master reaches every worker with the master's
locks and its fetch still attached. Each worker must notice and fetch for itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

UWSGI = Path(sys.executable).parent / "uwsgi"
pytestmark = pytest.mark.skipif(not UWSGI.exists() or not hasattr(os, "fork"),
                                reason="needs uWSGI (pip install pyuwsgi, in the test extra)")

BOUND = 20.0  # seconds: upper bound for start-up and for the whole run of requests

APP = '''
import json, logging, os, sys, threading, time
import swr_token

logging.basicConfig(stream=sys.stderr, level=logging.INFO)
MASTER = os.getpid()
never = threading.Event()

def source(request):
    if os.getpid() == MASTER and request.session_id == "inflight":
        never.wait(120)  # the master's fetch never ends: no worker may wait on it
    return swr_token.Token(f"tok-{os.getpid()}-{request.session_id}", expires_in=300)

client = swr_token.TokenClient(source)
client.get_token("warm")  # warmed in the master
threading.Thread(target=client.get_token, args=("inflight",), daemon=True).start()
started = time.monotonic()
while client.stats()["in_flight"] == 0 and time.monotonic() - started < 5:
    time.sleep(0.005)
assert client.stats()["in_flight"] == 1, "the master's fetch did not start"
# Let the master's new threads reach their waits before uWSGI forks: with --enable-threads a
# thread that holds the GIL at the fork leaves every worker without one (uWSGI's matter; see
# the README on uWSGI).
time.sleep(0.3)

def application(environ, start_response):
    before = client.stats()
    begun = time.monotonic()
    warm = client.get_token("warm")
    token = client.get_token("inflight", timeout=5)
    seconds = time.monotonic() - begun
    time.sleep(0.3)  # hold this worker, so concurrent requests spread over all of them
    body = json.dumps({"pid": os.getpid(), "master": MASTER, "warm": warm, "token": token,
                       "seconds": seconds, "before": before}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> dict[str, Any]:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text[:500]
    answer: dict[str, Any] = json.loads(response.text)
    return answer


@pytest.mark.parametrize("threads", [False, True], ids=["default", "enable-threads"])
def test_a_client_warmed_in_the_uwsgi_master_works_in_every_worker(tmp_path: Path,
                                                                   threads: bool) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [str(UWSGI), "--master", "--processes", "4", "--http-socket",
               f"127.0.0.1:{port}", "--wsgi-file", str(tmp_path / "app.py"), "--need-app",
               "--die-on-term", "--disable-logging", "--chdir", str(tmp_path)]
    if threads:
        command.append("--enable-threads")
    log = open(tmp_path / "uwsgi.log", "w+")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + BOUND
        while True:
            assert proc.poll() is None, "uWSGI exited:\n" + (tmp_path / "uwsgi.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "uWSGI did not start listening"
                time.sleep(0.05)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(_get, [url] * 16, timeout=BOUND))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
    output = (tmp_path / "uwsgi.log").read_text()
    workers = {a["pid"] for a in answers}
    master = answers[0]["master"]
    assert master not in workers and len(workers) >= 2, (workers, output[-2000:])
    assert "ran no at-fork hook" in output  # the workers really were forked without hooks
    for answer in answers:
        assert answer["warm"] == f"tok-{master}-warm"  # the master's valid token is kept
        assert answer["token"] == f"tok-{answer['pid']}-inflight"  # fetched by the worker
        assert answer["seconds"] < 2.5  # at once, not after waiting on the master's fetch
    # Answers come back in the order the requests were sent, not the order a worker took
    # them, so a worker's first request is the answer with the fewest hits before it.
    firsts: dict[int, dict[str, int]] = {}
    for answer in answers:
        seen = firsts.get(answer["pid"])
        if seen is None or answer["before"]["hits"] < seen["hits"]:
            firsts[answer["pid"]] = answer["before"]
    for before in firsts.values():  # a worker's counters start at zero, not at the master's
        assert before["fetches"] == before["waits"] == 0, before
