"""The Redis tiers over TLS and mutual TLS, against a real TLS-only redis-server.

The certificates (a CA, the server's and a client's) are made by tests/certs.py.
"""
import asyncio
import os
import socket
import ssl
import tempfile
import time

import pytest

redis = pytest.importorskip("redis")

import kvcache  # noqa: E402
from kvcache.redis import AsyncTieredCache, CircuitOpenError, TieredCache  # noqa: E402
from tests.certs import ca_signed  # noqa: E402  (cryptography: in the test extra)
from tests.redis_fixtures import RedisServer, free_port, require_redis_binaries  # noqa: E402


class TLSRedis(RedisServer):
    """A redis-server that only speaks TLS (plain port 0)."""

    def __init__(self, directory, certs, mutual):
        self.certs = certs
        tls_port = free_port()
        super().__init__(directory, port=tls_port, extra=[
            "--tls-port", str(tls_port), "--tls-cert-file", certs["server"][0],
            "--tls-key-file", certs["server"][1], "--tls-ca-cert-file", certs["ca"],
            "--tls-auth-clients", "yes" if mutual else "no",
        ])

    def _listen_args(self):
        return ["--port", "0"]

    def _connect(self):
        ctx = ssl.create_default_context(cafile=self.certs["ca"])
        ctx.load_cert_chain(*self.certs["client"])
        return ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
                               server_hostname="127.0.0.1")

    def kwargs(self, client_cert=True):
        kw = dict(host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=self.certs["ca"],
                  socket_timeout=1.0, socket_connect_timeout=1.0,
                  retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
        if client_cert:
            kw.update(ssl_certfile=self.certs["client"][0], ssl_keyfile=self.certs["client"][1])
        return kw


@pytest.fixture(scope="module")
def certs():
    with tempfile.TemporaryDirectory(prefix="kvcache-tls-") as d:
        yield {**ca_signed(d), "dir": d}


@pytest.fixture(scope="module", params=[False, True], ids=["tls", "mutual-tls"])
def tls_server(request, certs):
    require_redis_binaries()
    server = TLSRedis(os.path.join(certs["dir"], "mtls" if request.param else "tls"), certs,
                      mutual=request.param).start()
    try:
        yield server
    finally:
        server.stop()


def _wait(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


def test_tiers_share_values_and_invalidation_over_tls(tls_server):
    a = TieredCache(kvcache.LRUCache(100), redis.Redis(**tls_server.kwargs()), "tls-inv")
    b = TieredCache(kvcache.LRUCache(100), redis.Redis(**tls_server.kwargs()), "tls-inv")
    with a, b:
        assert a.wait_live() and b.wait_live()       # the invalidation stream runs over TLS too
        a["k"] = {"v": 1}
        assert b["k"] == {"v": 1}                   # a remote hit, now cached in b
        # a's write notice may still drop b's first copy; the refill is then served locally
        assert _wait(lambda: b["k"] == {"v": 1} and b.stats().local_hits >= 1)
        before = b.stats().invalidations
        a["k"] = {"v": 2}
        # b's copy is served locally until the server's notice drops it
        assert _wait(lambda: b["k"] == {"v": 2})
        assert b.stats().invalidations > before
        assert b.stats().errors == 0 and a.stats().errors == 0


def test_a_plaintext_client_never_reaches_a_tls_server(tls_server):
    plain = redis.Redis(host="127.0.0.1", port=tls_server.port, socket_timeout=0.5,
                        socket_connect_timeout=0.5, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
    with pytest.raises(redis.exceptions.ConnectionError):
        plain.ping()
    # The tier fails open: no exception, the failures counted, and no copy of a write that
    # did not reach Redis is kept (another process could not see it).
    t = TieredCache(kvcache.LRUCache(10), plain, "tls-plain")
    with t:
        t["k"] = 1
        assert t.get("k", "absent") == "absent"
        assert t.stats().errors >= 1 and not t.live


@pytest.fixture(scope="module")
def mtls_server(certs):
    require_redis_binaries()
    server = TLSRedis(os.path.join(certs["dir"], "mtls-only"), certs, mutual=True).start()
    try:
        yield server
    finally:
        server.stop()


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls_server):
    tls_server = mtls_server
    anon = redis.Redis(**tls_server.kwargs(client_cert=False))
    with pytest.raises(redis.exceptions.ConnectionError):
        anon.ping()
    strict = TieredCache(kvcache.LRUCache(10), anon, "mtls-anon", strict=True)
    with strict:
        with pytest.raises((redis.exceptions.ConnectionError, CircuitOpenError)):
            strict["k"] = 1
    assert redis.Redis(**tls_server.kwargs()).ping()


def test_asyncio_tier_over_tls(tls_server):
    import redis.asyncio as aredis

    async def main():
        async with AsyncTieredCache(kvcache.LRUCache(100), aredis.Redis(**tls_server.kwargs()),
                                    "tls-async") as t:
            await t.set("k", [1, 2])
            assert await t.get("k") == [1, 2]
            assert await t.get_or_set("x", lambda: "computed") == "computed"
            assert t.stats().errors == 0
        return redis.Redis(**tls_server.kwargs()).exists(b"tls-async:v:" + kvcache.serialize.encode_key("k"))

    assert asyncio.run(main()) == 1


def test_from_url_with_rediss(mtls_server):
    certs = mtls_server.certs
    t = TieredCache.from_url(f"rediss://127.0.0.1:{mtls_server.port}/0", kvcache.LRUCache(10), "tls-url",
                             timeout=1.0, client_kwargs=dict(ssl_ca_certs=certs["ca"],
                                                             ssl_certfile=certs["client"][0],
                                                             ssl_keyfile=certs["client"][1]))
    with t:
        assert t.wait_live()
        t["k"] = "v"
        assert t.client.get(b"tls-url:v:" + kvcache.serialize.encode_key("k")) is not None
        assert t.stats().errors == 0
