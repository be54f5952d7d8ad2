"""Real Redis deployments for tests, all on 127.0.0.1 free ports: a Sentinel-managed master
with one replica, and a 3-master cluster (one replica each) made by ``redis-cli --cluster``.

Each server runs from Debian's binaries with persistence off in a temporary directory and is
killed when the fixture ends; waits for them to come up are bounded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable

import pytest

from .redis_server import _free_port

BOUND = 20.0  # seconds any topology may take to come up or to fail over


def _binary(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run installs it")
        pytest.skip(f"{name} not installed (apt-get install redis-server redis-sentinel)")
    return binary


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = BOUND) -> None:
    """Poll an external process's state (no event to wait on), bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout:g} s")


class _Servers:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="swr-redis-")
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def server(self, port: int, *extra: str) -> None:
        self.processes[port] = subprocess.Popen(
            [_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "",
             "--dir", self.dir, "--protected-mode", "no", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir)

    def kill(self, port: int) -> None:
        process = self.processes.pop(port, None)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill(port)
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelSetup(_Servers):
    """A master, its replica and one Sentinel (quorum 1) that fails over after 500 ms."""

    name = "swrmaster"

    def __init__(self) -> None:
        super().__init__()
        self.master_port, self.replica_port, self.sentinel_port = (
            _free_port(), _free_port(), _free_port())

    def start(self) -> SentinelSetup:
        import redis

        self.server(self.master_port)
        self.server(self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
        conf = os.path.join(self.dir, "sentinel.conf")
        with open(conf, "w") as f:
            f.write(f"port {self.sentinel_port}\nbind 127.0.0.1\nprotected-mode no\n"
                    f"dir {self.dir}\n"
                    f"sentinel monitor {self.name} 127.0.0.1 {self.master_port} 1\n"
                    f"sentinel down-after-milliseconds {self.name} 500\n"
                    f"sentinel failover-timeout {self.name} 3000\n"
                    f"sentinel parallel-syncs {self.name} 1\n")
        self.processes[self.sentinel_port] = subprocess.Popen(
            [_binary("redis-sentinel"), conf], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, cwd=self.dir)
        replica = redis.Redis(port=self.replica_port, socket_timeout=1)
        wait_for(lambda: replica.info("replication").get("master_link_status") == "up",
                 "the replica in sync")
        sentinel = redis.Redis(port=self.sentinel_port, socket_timeout=1)
        wait_for(lambda: int(sentinel.sentinel_master(self.name)["num-slaves"]) >= 1,
                 "the sentinel to see the replica")
        return self

    def sentinel(self) -> object:
        from redis.sentinel import Sentinel

        return Sentinel([("127.0.0.1", self.sentinel_port)], socket_timeout=0.5,
                        socket_connect_timeout=0.5)

    def master(self) -> object:
        """A Sentinel-managed master client, as an application would make it."""
        return self.sentinel().master_for(  # type: ignore[attr-defined]
            self.name, socket_timeout=0.5, socket_connect_timeout=0.5)

    def master_address(self) -> tuple[str, int]:
        host, port = self.sentinel().discover_master(self.name)  # type: ignore[attr-defined]
        return str(host), int(port)


class ClusterSetup(_Servers):
    """Three masters with one replica each; a node is failed after 1 s unreachable."""

    def __init__(self) -> None:
        super().__init__()
        self.ports = _cluster_ports(6)

    def start(self) -> ClusterSetup:
        import redis

        for port in self.ports:
            self.server(port, "--cluster-enabled", "yes", "--cluster-node-timeout", "1000",
                        "--cluster-config-file", f"nodes-{port}.conf")
        for port in self.ports:
            node = redis.Redis(port=port, socket_timeout=1)
            wait_for(lambda n=node: bool(n.ping()), f"redis-server on {port}")  # type: ignore[misc]
        subprocess.run(
            [_binary("redis-cli"), "--cluster", "create",
             *[f"127.0.0.1:{port}" for port in self.ports],
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=BOUND)
        for port in self.ports:
            node = redis.Redis(port=port, socket_timeout=1)
            wait_for(lambda n=node: b"cluster_state:ok" in n.execute_command(  # type: ignore[misc]
                "CLUSTER", "INFO"), "the cluster state ok on every node")
        return self

    def client(self) -> object:
        from redis.cluster import RedisCluster

        return RedisCluster(host="127.0.0.1", port=self.ports[0], socket_timeout=0.5,
                            socket_connect_timeout=0.5)

    def masters(self) -> list[int]:
        import redis

        alive = [p for p in self.ports if p in self.processes]
        return [p for p in alive
                if redis.Redis(port=p, socket_timeout=1).info("replication")["role"] == "master"]


def _cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is free and valid too."""
    import random
    import socket

    ports: list[int] = []
    for _ in range(1000):
        port = random.randint(20000, 40000)
        if port in ports:
            continue
        try:
            with socket.socket() as one, socket.socket() as bus:
                one.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise AssertionError("no free port pairs for a cluster")
