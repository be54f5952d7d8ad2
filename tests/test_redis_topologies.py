"""RedisStore on the deployments fleets use: a Sentinel-managed master failing over mid-run,
and a 3-master Redis Cluster with keys on every master and a master killed mid-run.

Each "process" is a TokenClient with a RedisStore (and Redis client) of its own, reading
through threads; tokens live 6 s and are refreshed 3 s before expiry, the issuer answers in
100 ms. A failover may cost a short per-process degradation (each client fetching for
itself), never an error to a caller, an expired token or an issuer storm.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import redis as redis_lib

from swr_token import ClerkBackendSource, RedisStore, TokenClient, TokenError
from swr_token.testing import LocalIssuer

from .redis_topologies import ClusterSetup, SentinelSetup, wait_for

LIFETIME = 6.0


class Fleet:
    """Clients reading keys from threads; counts calls, errors and expired tokens served."""

    def __init__(self, issuer: LocalIssuer, stores: list[RedisStore], keys: list[str]) -> None:
        self.keys = keys
        self.clients = [
            TokenClient(ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url),
                        poll_interval=0.5, background_refresh_threshold=3.0, margin=1.0,
                        store=store)
            for store in stores]
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.calls = self.errors = self.expired = 0
        self.error_samples: list[str] = []
        self.threads = [threading.Thread(target=self._read, args=(client,), daemon=True)
                        for client in self.clients for _ in range(2)]

    def _read(self, client: TokenClient) -> None:
        calls = errors = expired = 0
        pause = threading.Event()
        while not self.stop.is_set():
            for key in self.keys:
                try:
                    raw = client.get_token(key, timeout=5)
                except TokenError as exc:
                    errors += 1
                    with self.lock:
                        self.error_samples.append(repr(exc)[:200])
                    continue
                exp = jwt.decode(raw, options={"verify_signature": False})["exp"]
                expired += exp <= time.time()
                calls += 1
            pause.wait(0.01)
        with self.lock:
            self.calls += calls
            self.errors += errors
            self.expired += expired

    def run(self, seconds: float, at: float, event: Callable[[], None]) -> None:
        for client in self.clients:  # warm: every client holds every key
            for key in self.keys:
                client.get_token(key, timeout=10)
        for thread in self.threads:
            thread.start()
        started = time.monotonic()
        self.stop.wait(at)
        event()
        self.stop.wait(max(0.0, seconds - (time.monotonic() - started)))
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        assert not any(t.is_alive() for t in self.threads)

    def close(self) -> None:
        self.stop.set()
        for client in self.clients:
            client.close()


def _check(fleet: Fleet, issuer: LocalIssuer, seconds: float, processes: int) -> int:
    requests = issuer.request_count("clerk")
    cycles = seconds / (LIFETIME - 3.0) + 1
    print(f"calls {fleet.calls}, errors {fleet.errors}, expired {fleet.expired}, "
          f"issuer requests {requests} for {len(fleet.keys)} keys in {seconds:g} s")
    assert fleet.errors == 0, fleet.error_samples[:3]
    assert fleet.expired == 0
    assert fleet.calls > 500
    # No storm: one request per key per cycle, plus at most two cycles of every process
    # fetching for itself while the store fails over.
    assert requests <= len(fleet.keys) * (cycles + 1 + 2 * processes), requests
    return requests


@pytest.fixture
def issuer() -> Any:
    with LocalIssuer(lifetime=LIFETIME) as iss:
        iss.delay(0.1)
        yield iss


def test_sentinel_failover_mid_run(issuer: LocalIssuer) -> None:
    setup = SentinelSetup().start()
    fleet = None
    try:
        stores = [RedisStore(client=setup.master(), prefix="sentinel:", lease=1.0, wait=1.0)
                  for _ in range(3)]
        fleet = Fleet(issuer, stores, ["sess_a", "sess_b"])
        old = setup.master_address()
        failed_over: list[float] = []

        def kill_master() -> None:
            killed = time.monotonic()
            setup.kill(setup.master_port)
            wait_for(lambda: setup.master_address() != old, "Sentinel promoting the replica")
            failed_over.append(time.monotonic() - killed)

        fleet.run(8.0, at=2.0, event=kill_master)
        _check(fleet, issuer, 8.0, processes=3)
        print(f"sentinel promoted the replica {failed_over[0]:.1f} s after the kill")
        # The fleet shares again through the new master: a new key costs one request.
        fleet.stop.wait(2.1)  # every client past the store's retry pause (2 s)
        before = issuer.request_count("clerk")
        token = fleet.clients[0].get_token("sess_last", timeout=5)
        assert all(c.get_token("sess_last", timeout=5) == token for c in fleet.clients[1:])
        assert issuer.request_count("clerk") == before + 1
        assert setup.master_address() == ("127.0.0.1", setup.replica_port)
    finally:
        if fleet is not None:
            fleet.close()
        setup.stop()


def test_cluster_keys_on_every_master_and_a_master_killed(issuer: LocalIssuer) -> None:
    setup = ClusterSetup().start()
    fleet = None
    try:
        one, two = (RedisStore(client=setup.client(), prefix="cluster:", lease=1.0, wait=1.0)
                    for _ in range(2))
        keys = [f"sess_{i}" for i in range(24)]
        with TokenClient(ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url),
                         store=one) as a, \
                TokenClient(ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url),
                            store=two) as b:
            tokens = [a.get_token(key, timeout=5) for key in keys]
            assert [b.get_token(key, timeout=5) for key in keys] == tokens
        assert issuer.request_count("clerk") == len(keys)  # b adopted every one
        masters = setup.masters()
        per_master = {port: redis_lib.Redis(port=port).keys("cluster:*:tok") for port in masters}
        assert len(masters) == 3 and all(per_master.values()), per_master  # keys everywhere
        for names in per_master.values():
            for name in names:  # the lock of a key lives in its token's slot
                text = name.decode()
                node = redis_lib.Redis(port=masters[0])
                assert node.cluster("keyslot", text) == node.cluster(
                    "keyslot", text[:-len(":tok")] + ":lock")

        victim = masters[1]
        stores = [RedisStore(client=setup.client(), prefix="cluster2:", lease=1.0, wait=1.0)
                  for _ in range(3)]
        fleet = Fleet(issuer, stores, keys[:6])
        start_requests = issuer.request_count("clerk")

        def kill_a_master() -> None:
            setup.kill(victim)
            wait_for(lambda: len(setup.masters()) == 3, "a replica promoted")

        fleet.run(8.0, at=2.0, event=kill_a_master)
        fleet_requests = issuer.request_count("clerk") - start_requests
        print(f"cluster: masters now {setup.masters()}, fleet requests {fleet_requests}")
        assert fleet.errors == 0, fleet.error_samples[:3]
        assert fleet.expired == 0 and fleet.calls > 500
        assert fleet_requests <= 6 * (8.0 / 3 + 2 + 2 * 3), fleet_requests
    finally:
        if fleet is not None:
            fleet.close()
        setup.stop()
