"""Real redis-server processes for tests: a single server and a 3-master cluster.

Import the fixtures into a test module with ``from tests.redis_fixtures import ...``
(pytest then registers them there).  A missing binary skips, unless
``KVCACHE_REQUIRE_SERVICES`` is set: then it fails.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def require_redis_binaries(cluster=False):
    missing = [n for n, p in (("redis-server", REDIS_SERVER), ("redis-cli", REDIS_CLI)) if p is None]
    if not cluster and REDIS_SERVER is not None:
        missing = []
    if missing:
        msg = (
            f"{', '.join(missing)} not found; install Redis (apt-get install redis-server, "
            "brew install redis) to run these tests"
        )
        if os.environ.get("KVCACHE_REQUIRE_SERVICES"):
            pytest.fail(msg + " (KVCACHE_REQUIRE_SERVICES is set)")
        pytest.skip(msg)


def free_port(bus=False):
    """Return a free loopback port (and, for cluster nodes, port + 10000 free too)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not bus:
            return port
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


class RedisServer:
    """One redis-server subprocess on loopback with its own directory."""

    def __init__(self, directory, port=None, extra=()):
        self.directory = directory
        self.port = port or free_port(bus=bool(extra))
        self.extra = list(extra)
        self.proc = None

    def _listen_args(self):
        return ["--port", str(self.port)]

    def _connect(self):
        """Return a socket to the server (a subclass may wrap it, e.g. in TLS)."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=0.2)

    def start(self):
        os.makedirs(self.directory, exist_ok=True)
        args = [
            REDIS_SERVER,
            *self._listen_args(),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.directory,
            "--logfile", os.path.join(self.directory, "redis.log"),
            *self.extra,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                with open(os.path.join(self.directory, "redis.log")) as f:
                    raise RuntimeError(f"redis-server exited: {f.read()[-2000:]}")
            try:
                with self._connect() as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self):
        """SIGKILL the server (a crash, not a shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self):
        self.kill()
        return self.start()

    def client(self, **kwargs):
        import redis

        kwargs.setdefault("socket_timeout", 1.0)
        kwargs.setdefault("socket_connect_timeout", 0.5)
        # No hidden retries: the tier under test does its own backoff.
        kwargs.setdefault("retry", redis.retry.Retry(redis.backoff.NoBackoff(), 0))
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


class RedisClusterProcs:
    """Cluster-enabled nodes on loopback, slots assigned: `n` masters (3), no replicas by default.

    ``replicas=1`` adds one replica per master (2n processes), synced before start() returns.
    """

    def __init__(self, directory, n=3, extra=(), replicas=0):
        self.replicas = replicas
        n *= 1 + replicas
        self.nodes = [
            RedisServer(
                os.path.join(directory, f"node{i}"),
                extra=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "2000",
                    *extra,
                ],
            )
            for i in range(n)
        ]

    def start(self):
        for node in self.nodes:
            node.start()
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *addrs, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=30,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ok = 0
            for n in self.nodes:
                out = subprocess.run(
                    [REDIS_CLI, "-p", str(n.port), "cluster", "info"], capture_output=True, text=True
                ).stdout
                ok += "cluster_state:ok" in out
            if ok == len(self.nodes) and self._replicas_synced():
                return self
            time.sleep(0.1)
        raise RuntimeError("cluster did not reach cluster_state:ok")

    def _replicas_synced(self):
        """Whether every node lists a replica for every slot range (clients learn replicas there)."""
        if not self.replicas:
            return True
        import redis

        for n in self.nodes:
            with redis.Redis(port=n.port) as r:
                # Redis hides a replica whose offset is still 0: a write on each master moves it.
                if r.info("replication")["role"] == "master":
                    r.flushall()
                ranges = r.execute_command("CLUSTER SLOTS")
            if not ranges or any(len(rng) < 3 + self.replicas for rng in ranges):
                return False
        return True

    def add_primary(self, directory, slots):
        """Start one more master, join it, move `slots` slots (and their keys) from the first
        master to it; return its RedisServer (stopped by stop())."""
        new = RedisServer(directory, extra=self.nodes[0].extra).start()
        self.nodes.append(new)
        src = f"127.0.0.1:{self.nodes[0].port}"

        def cli(*args):
            return subprocess.run([REDIS_CLI, *args], check=True, capture_output=True, text=True, timeout=60).stdout

        cli("--cluster", "add-node", f"127.0.0.1:{new.port}", src)
        deadline = time.monotonic() + 20
        while "cluster_state:ok" not in cli("-p", str(new.port), "cluster", "info"):
            if time.monotonic() > deadline:
                raise RuntimeError("the new node did not join the cluster")
            time.sleep(0.1)
        ids = [cli("-p", str(n.port), "cluster", "myid").strip() for n in (self.nodes[0], new)]
        cli("--cluster", "reshard", src, "--cluster-from", ids[0], "--cluster-to", ids[1],
            "--cluster-slots", str(slots), "--cluster-yes")
        return new

    def client(self, **kwargs):
        import redis
        from redis.cluster import RedisCluster

        kwargs.setdefault("socket_timeout", 1.0)
        kwargs.setdefault("socket_connect_timeout", 0.5)
        kwargs.setdefault("retry", redis.retry.Retry(redis.backoff.NoBackoff(), 0))
        return RedisCluster(host="127.0.0.1", port=self.nodes[0].port, **kwargs)

    def stop(self):
        for n in self.nodes:
            n.stop()


@pytest.fixture(scope="module")
def redis_server():
    """A redis-server shared by a test module (tests use distinct namespaces)."""
    require_redis_binaries()
    with tempfile.TemporaryDirectory(prefix="kvcache-redis-") as d:
        server = RedisServer(d).start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def own_redis_server():
    """A redis-server of its own, for tests that kill or restart it."""
    require_redis_binaries()
    with tempfile.TemporaryDirectory(prefix="kvcache-redis-") as d:
        server = RedisServer(d).start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def redis_cluster_with_replicas():
    """A Redis Cluster of 3 masters with one replica each, on loopback."""
    require_redis_binaries(cluster=True)
    with tempfile.TemporaryDirectory(prefix="kvcache-cluster-") as d:
        cluster = RedisClusterProcs(d, replicas=1)
        try:
            yield cluster.start()
        finally:
            cluster.stop()


@pytest.fixture
def own_cluster_with_replicas(tmp_path):
    """A Redis Cluster of 3 masters with one replica each, for one test (which may kill nodes)."""
    require_redis_binaries(cluster=True)
    cluster = RedisClusterProcs(str(tmp_path), replicas=1).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def redis_cluster():
    """A 3-master Redis Cluster on loopback."""
    require_redis_binaries(cluster=True)
    with tempfile.TemporaryDirectory(prefix="kvcache-cluster-") as d:
        cluster = RedisClusterProcs(d)
        try:
            yield cluster.start()
        finally:
            cluster.stop()


def child_env():
    """Environment for a child Python that imports the same kvcache as the tests.

    The folder holding the imported kvcache goes first on PYTHONPATH: the source tree when
    the tests run against an in-place build, site-packages when against an installed one.
    """
    import kvcache

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(kvcache.__file__)))
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join([root, *rest])
    return env
