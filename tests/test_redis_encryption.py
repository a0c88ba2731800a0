"""encryption_key= on the Redis tiers: no plaintext value in Redis, tampered or foreign values are misses."""

import asyncio

import pytest

pytest.importorskip("redis")
pytest.importorskip("cryptography")

import kvcache  # noqa: E402
from kvcache.redis import AsyncTieredCache, TieredCache  # noqa: E402
from kvcache.serialize import SignatureError  # noqa: E402
from tests.redis_fixtures import redis_server  # noqa: E402,F401

KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "plaintext-marker-8d1e"


def tier(server, ns, **kwargs):
    t = TieredCache(kvcache.LRUCache(maxsize=100), server.client(), ns, **kwargs)
    assert t.wait_live(5)
    return t


def raw_values(server, ns):
    raw = server.client()
    return [raw.get(name) for name in raw.scan_iter(match=ns.encode() + b":*")]


def test_values_hold_no_plaintext_and_decrypt_elsewhere(redis_server):
    a, b = tier(redis_server, "enc1", encryption_key=KEY), tier(redis_server, "enc1", encryption_key=[b"n" * 16, KEY])
    try:
        a["one"] = {"v": SECRET}
        a.set_many([f"k{i}" for i in range(50)], [f"{SECRET}-{i}" for i in range(50)])
        values = raw_values(redis_server, "enc1")
        assert len(values) == 51 and not any(SECRET.encode() in v for v in values)
        assert b["one"] == {"v": SECRET}  # the old key still opens it after rotation
        assert b.get_many([f"k{i}" for i in range(50)]) == [f"{SECRET}-{i}" for i in range(50)]
        plain = tier(redis_server, "enc1p")
        plain["x"] = SECRET
        assert any(SECRET.encode() in v for v in raw_values(redis_server, "enc1p"))  # the scan would see it
        plain.close()
    finally:
        a.close()
        b.close()


def test_tampered_copied_or_foreign_values_are_misses(redis_server):
    a = tier(redis_server, "enc2", encryption_key=KEY)
    reader = tier(redis_server, "enc2", encryption_key=KEY)
    strict = tier(redis_server, "enc2", encryption_key=KEY, strict=True)
    foreign = tier(redis_server, "enc2", encryption_key=b"x" * 16)
    try:
        a["a"] = "A"
        a["b"] = "B"
        raw = redis_server.client()
        name_a, name_b = b"enc2:v:" + kvcache.serialize.encode_key("a"), b"enc2:v:" + kvcache.serialize.encode_key("b")
        raw.set(name_b, raw.get(name_a))  # a's value under b's name: bound to a, refused
        assert reader.get("b") is None
        assert reader.get_many(["a", "b"]) == ["A", None]
        blob = bytearray(raw.get(name_a))
        blob[-1] ^= 1
        raw.set(name_a, bytes(blob))
        reader.local.clear()
        assert reader.get("a") is None
        assert reader.stats().errors >= 2
        with pytest.raises(SignatureError):
            strict.get("a")
        a["c"] = "C"
        assert foreign.get("c") is None
    finally:
        for t in (a, reader, strict, foreign):
            t.close()


def test_async_tier_encrypts_too(redis_server):
    async def main():
        url = f"redis://127.0.0.1:{redis_server.port}/0"
        t = AsyncTieredCache.from_url(url, kvcache.LRUCache(maxsize=10), "enc3", encryption_key=KEY)
        async with t:
            await t.set("k", SECRET)
            await t.set_many(["m1", "m2"], [SECRET, SECRET])
            t.local.clear()
            assert await t.get("k") == SECRET
            assert await t.get_many(["m1", "m2"]) == [SECRET, SECRET]

    asyncio.run(main())
    values = raw_values(redis_server, "enc3")
    assert len(values) == 3 and not any(SECRET.encode() in v for v in values)
