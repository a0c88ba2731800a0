"""Real memcached processes for tests, on free loopback ports.

Import the fixtures into a test module with ``from tests.memcached_fixtures import ...``.  A
missing binary skips, unless ``KVCACHE_REQUIRE_SERVICES`` is set: then it fails.
"""

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from tests.redis_fixtures import free_port

MEMCACHED = shutil.which("memcached")


def require_memcached():
    if MEMCACHED is None:
        msg = "memcached not found; install it (apt-get install memcached, brew install memcached) to run these tests"
        if os.environ.get("KVCACHE_REQUIRE_SERVICES"):
            pytest.fail(msg + " (KVCACHE_REQUIRE_SERVICES is set)")
        pytest.skip(msg)


class MemcachedServer:
    """One memcached subprocess on loopback (64 MB, no UDP)."""

    def __init__(self, port=None, extra=(), ssl_context=None):
        self.port = port or free_port()
        self.extra = list(extra)
        self.ssl_context = ssl_context  # a TLS server: the readiness check speaks TLS too
        self.proc = None

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        args = [MEMCACHED, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-m", "64", "-t", "2"]
        if os.geteuid() == 0:
            args += ["-u", "root"]  # memcached refuses to run as root without naming a user
        args += self.extra
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"memcached exited: {self.proc.stderr.read().decode(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as raw:
                    s = raw if self.ssl_context is None else self.ssl_context.wrap_socket(raw, server_hostname="127.0.0.1")
                    s.sendall(b"version\r\n")
                    if s.recv(64).startswith(b"VERSION"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("memcached did not start")

    def kill(self):
        """SIGKILL the server (a crash: it comes back empty)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self):
        self.kill()
        return self.start()

    def client(self, **kwargs):
        from pymemcache.client.base import Client

        kwargs.setdefault("connect_timeout", 0.5)
        kwargs.setdefault("timeout", 1.0)
        return Client(("127.0.0.1", self.port), **kwargs)

    def command(self, line, end=b"END\r\n"):
        """Send one raw text-protocol command; return the reply up to `end`."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(line + b"\r\n")
            buf = b""
            while not buf.endswith(end):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            return buf

    def stop(self):
        self.kill()  # nothing to save, and SIGTERM makes memcached wait about a second
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture(scope="module")
def memcached_server():
    """A memcached shared by a test module (tests use distinct namespaces)."""
    require_memcached()
    server = MemcachedServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def memcached_nodes():
    """Make memcached servers of a test's own (for tests that add, kill or restart nodes)."""
    require_memcached()
    servers = []

    def make(n):
        new = [MemcachedServer().start() for _ in range(n)]
        servers.extend(new)
        return new

    try:
        yield make
    finally:
        for s in servers:
            s.stop()
