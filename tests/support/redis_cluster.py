"""A real three-master Redis Cluster for the tests, on free loopback ports, without persistence.

Started once per test session (it takes about a second); tests share it and `flush()` it in
between. Every node runs in its own temporary directory. A node counts as started only when the
Redis answering on its port is the process we started (`INFO server` process_id): another run's
Redis that took the free port first makes us try another port.

Fault tests start a cluster of their own: with replicas (`replicas=1`: one per master, for
failover) or an append-only file fsynced on every write (`appendonly=True`: a master killed and
started again keeps what it acknowledged), kill one node and start it again on the same port
with the same directory (its nodes.conf and append-only file).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from redis.asyncio.cluster import RedisCluster as RedisClusterClient

from services.common import redisconn
from tests.support.ports import free_port
from tests.support.redis_server import RedisNotAvailable

MASTERS = 3
_START_ATTEMPTS = 5
_READY_SECONDS = 20.0


def _command(port: int, *words: str, timeout: float = 1.0) -> bytes:
    """One command over a raw socket (RESP): the reply's bytes, or b"" when nothing answers."""
    request = f"*{len(words)}\r\n".encode() + b"".join(
        f"${len(word.encode())}\r\n{word}\r\n".encode() for word in words
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.sendall(request)
            reply = conn.recv(65536)
            if reply.startswith(b"$"):
                size = int(reply[1 : reply.index(b"\r\n")])
                header = len(reply[: reply.index(b"\r\n")]) + 2
                while len(reply) < header + size + 2:
                    piece = conn.recv(65536)
                    if not piece:
                        break
                    reply += piece
            return reply
    except (OSError, ValueError):
        return b""


@dataclass
class _Node:
    port: int
    bus_port: int
    workdir: tempfile.TemporaryDirectory[str]
    process: subprocess.Popen[bytes]
    # The command line it was started with: `restart` runs it again (same port, same directory).
    argv: list[str] = field(default_factory=list)

    def ours(self) -> bool:
        reply = _command(self.port, "INFO", "server", timeout=0.2)
        return f"process_id:{self.process.pid}\r\n".encode() in reply

    def info(self, section: str) -> str:
        return _command(self.port, "INFO", section).decode(errors="replace")

    def cluster_info(self) -> str:
        return _command(self.port, "CLUSTER", "INFO").decode(errors="replace")

    def cluster_nodes(self) -> str:
        """CLUSTER NODES as this node sees the cluster ("" when it does not answer)."""
        reply = _command(self.port, "CLUSTER", "NODES")
        if not reply.startswith(b"$"):
            return ""
        return reply.partition(b"\r\n")[2].decode(errors="replace").strip()

    def is_master(self) -> bool:
        return "role:master" in self.info("replication")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: gone at once, its directory (nodes.conf, append-only file) kept."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        """Start it again after `kill`: the same port, directory and node id."""
        assert self.process.poll() is not None, "restart a node that was killed"
        self.process = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while not self.ours():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RedisNotAvailable(f"the cluster node on port {self.port} did not restart")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.workdir.cleanup()


@dataclass
class RedisCluster:
    """Three masters, no replicas: every slot is served, each by one process. `replicas` per
    master for failover; `appendonly` to keep what a killed node acknowledged."""

    nodes: list[_Node] = field(default_factory=list)
    masters: int = MASTERS
    replicas: int = 0
    appendonly: bool = False

    @property
    def url(self) -> str:
        """Any one node's address: the client discovers the rest."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def start(self) -> RedisCluster:
        program = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if program is None or cli is None:
            raise RedisNotAvailable(
                "the cluster tests need `redis-server` and `redis-cli` on PATH "
                "(Debian/Ubuntu: apt-get install redis-server)"
            )
        try:
            for _ in range(self.masters * (1 + self.replicas)):
                self.nodes.append(self._start_node(program))
            created = subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                timeout=30,
                check=False,
            )
            if created.returncode != 0:
                raise RedisNotAvailable(
                    "redis-cli --cluster create failed: "
                    + created.stdout.decode(errors="replace")[-500:]
                    + created.stderr.decode(errors="replace")[-500:]
                )
            self._wait_until_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, program: str) -> _Node:
        for _ in range(_START_ATTEMPTS):
            port, bus_port = free_port(), free_port()
            if port == bus_port:
                continue
            workdir = tempfile.TemporaryDirectory(prefix="chatagent-redis-cluster-")
            persistence = (
                ["--appendonly", "yes", "--appendfsync", "always"]
                if self.appendonly
                else ["--appendonly", "no"]
            )
            argv = [
                program,
                "--port",
                str(port),
                "--cluster-port",
                str(bus_port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                "--save",
                "",
                *persistence,
                "--dir",
                workdir.name,
            ]
            process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            node = _Node(port, bus_port, workdir, process, argv)
            deadline = time.monotonic() + 10
            while process.poll() is None and time.monotonic() < deadline:
                if node.ours():
                    return node
                time.sleep(0.05)
            # It could not bind (another process took a port first) or did not come up.
            node.stop()
        raise RedisNotAvailable(f"no cluster node started in {_START_ATTEMPTS} attempts")

    def _wait_until_ok(self) -> None:
        deadline = time.monotonic() + _READY_SECONDS
        while not all("cluster_state:ok" in node.cluster_info() for node in self.nodes):
            if time.monotonic() > deadline:
                raise RedisNotAvailable("the test Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        if not self.replicas:
            return
        # A replica can take over only once it has its master's data and every node knows
        # every other (the masters vote on its promotion).
        while not all(self._ready_for_failover(node) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RedisNotAvailable("the test Redis Cluster's replicas did not sync")
            time.sleep(0.05)

    def _ready_for_failover(self, node: _Node) -> bool:
        known = [line for line in node.cluster_nodes().splitlines() if line.strip()]
        if len(known) != len(self.nodes) or any("handshake" in line for line in known):
            return False
        replication = node.info("replication")
        return "role:master" in replication or "master_link_status:up" in replication

    # -- one node taken away and brought back (fault tests) -------------------------------------

    def node_at(self, port: int) -> _Node:
        [node] = [node for node in self.nodes if node.port == port]
        return node

    def live_url(self) -> str:
        """A node that is up and answering: for a client made while another node is away."""
        for node in self.nodes:
            if node.alive():
                return f"redis://127.0.0.1:{node.port}/0"
        raise RuntimeError("no cluster node is up")

    def slot_owner(self, slot: int) -> _Node:
        """The master serving `slot` now, as a node that is up sees it (a master that failed
        and was replaced no longer does)."""
        for node in self.nodes:
            if not node.alive():
                continue
            for line in node.cluster_nodes().splitlines():
                fields = line.split()
                if len(fields) < 8 or "master" not in fields[2] or "fail" in fields[2]:
                    continue
                for span in fields[8:]:
                    if span.startswith("["):
                        continue  # a slot being migrated
                    first, _, last = span.partition("-")
                    if int(first) <= slot <= int(last or first):
                        return self.node_at(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        raise RuntimeError(f"no master serves slot {slot}")

    def states(self) -> dict[int, str]:
        """Each answering node's cluster_state ("ok" or "fail"), by port."""
        states = {}
        for node in self.nodes:
            if node.alive():
                for line in node.cluster_info().splitlines():
                    if line.startswith("cluster_state:"):
                        states[node.port] = line.partition(":")[2].strip()
        return states

    def flush(self) -> None:
        """Empty every master and reset its statistics (error counts included). Loaded scripts
        stay: they are no data, and tests about lost scripts flush them themselves."""
        for node in self.nodes:
            if self.replicas and not node.is_master():
                continue  # a replica refuses FLUSHALL; it follows its master
            for words in (("FLUSHALL",), ("CONFIG", "RESETSTAT")):
                reply = _command(node.port, *words, timeout=5.0)
                if not reply.startswith(b"+OK"):
                    raise RuntimeError(f"{' '.join(words)} on port {node.port}: {reply[:200]!r}")

    def error_counts(self) -> dict[str, int]:
        """Errors the masters answered since the last flush, by error code, summed."""
        counts: dict[str, int] = {}
        for node in self.nodes:
            for line in node.info("errorstats").splitlines():
                if line.startswith("errorstat_"):
                    name, _, value = line.removeprefix("errorstat_").partition(":")
                    counts[name] = counts.get(name, 0) + int(value.split("=", 1)[1].split(",")[0])
        return counts

    def stop(self) -> None:
        nodes, self.nodes = self.nodes, []
        for node in nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class RedisTarget:
    """A Redis a test runs against: one server, or a cluster reached through one node."""

    url: str
    cluster: bool = False

    @property
    def kind(self) -> str:
        return "cluster" if self.cluster else "redis"

    def connect(self, timeout_seconds: float = 2.0) -> redisconn.Client:
        return redisconn.connect(self.url, timeout_seconds, cluster=self.cluster)

    def env(self) -> dict[str, str]:
        """The settings a service process needs to use it."""
        return {"REDIS_URL": self.url, "REDIS_CLUSTER": "true" if self.cluster else "false"}


# Inspection across every master: without target nodes, redis-py's cluster client sends KEYS,
# DBSIZE and SCRIPT FLUSH to a single node.
def _everywhere(client: redisconn.Client) -> dict[str, Any]:
    return {"target_nodes": RedisClusterClient.PRIMARIES} if redisconn.is_cluster(client) else {}


async def every_key(client: redisconn.Client, pattern: str = "*") -> list[bytes]:
    found: list[bytes] = await client.keys(pattern, **_everywhere(client))
    return found


async def key_count(client: redisconn.Client) -> int:
    return int(await client.dbsize(**_everywhere(client)))


async def flush_scripts(client: redisconn.Client) -> None:
    """Forget every script, as a server does when it restarts or fails over."""
    await client.execute_command("SCRIPT FLUSH", **_everywhere(client))
