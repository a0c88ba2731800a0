"""The Redis tier over TLS: a TLS-configured redis-py client works, invalidation stream included."""

import os
import tempfile
import time

import pytest

pytest.importorskip("redis")
pytest.importorskip("cryptography")

import kvcache  # noqa: E402
from kvcache.redis import TieredCache  # noqa: E402
from tests.certs import self_signed  # noqa: E402
from tests.redis_fixtures import RedisServer, free_port, require_redis_binaries  # noqa: E402


@pytest.fixture
def tls_redis():
    require_redis_binaries()
    with tempfile.TemporaryDirectory(prefix="kvcache-tls-") as d:
        cert, key = self_signed(d)
        tls_port = free_port()
        server = RedisServer(d, extra=[
            "--tls-port", str(tls_port), "--tls-cert-file", cert, "--tls-key-file", key,
            "--tls-ca-cert-file", cert, "--tls-auth-clients", "no",
        ])
        try:
            server.start()
        except RuntimeError as exc:  # a redis-server built without TLS
            if "tls" in str(exc).lower() and not os.environ.get("KVCACHE_REQUIRE_SERVICES"):
                pytest.skip(f"redis-server has no TLS support: {exc}")
            raise
        try:
            yield tls_port, cert
        finally:
            server.stop()


def test_tier_over_tls(tls_redis):
    import redis

    port, cert = tls_redis
    url = f"rediss://127.0.0.1:{port}/0"
    tiers = [
        TieredCache.from_url(url, kvcache.LRUCache(maxsize=100), "tls", client_kwargs={"ssl_ca_certs": cert})
        for _ in range(2)
    ]
    a, b = tiers
    try:
        assert a.wait_live(5) and b.wait_live(5)  # the invalidation streams run over TLS too
        a["k"] = "v1"
        assert b["k"] == "v1"
        time.sleep(0.1)  # b's own fill notice goes by
        before = b.stats().invalidations
        a["k"] = "v2"
        deadline = time.monotonic() + 5
        while b.stats().invalidations == before and time.monotonic() < deadline:
            time.sleep(0.005)
        assert b.stats().invalidations > before and b["k"] == "v2"
        assert b.stats().errors == 0
        # The certificate is checked: a client that does not trust it gets nowhere.
        with pytest.raises(redis.exceptions.ConnectionError):
            redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping()
    finally:
        for t in tiers:
            t.close()
