"""Warm-start snapshots: cache.save(path), Class.load(path), cache.load(path)."""

import os
import pathlib
import struct

import pytest

pytest.importorskip("msgpack")
pytest.importorskip("zstandard")

import numpy as np  # noqa: E402

import kvcache  # noqa: E402
from kvcache import snapshot  # noqa: E402
from kvcache.snapshot import SnapshotError  # noqa: E402

CLASSES = [kvcache.Cache, kvcache.FIFOCache, kvcache.LRUCache, kvcache.LFUCache, kvcache.RRCache]
KEY = b"snapshot-hmac-key-0123456789"


def make(cls, n=40, maxsize=32):
    c = cls(maxsize=maxsize, seed=1)
    for i in range(n):
        c[i] = f"v{i}"
        if i % 3 == 0:
            c.get(i // 2)  # reorder LRU, raise LFU frequencies
        if i % 5 == 0:
            c.get(i)
            c.get(i)
    c[("t", 1)] = (1, 2)
    c["arr"] = np.arange(5)
    return c


def drain(c):
    out = []
    while True:
        try:
            out.append(c.popitem()[0])
        except KeyError:
            return out


def same_items(a, b):
    ia, ib = list(a.items()), list(b.items())
    assert [k for k, _ in ia] == [k for k, _ in ib]
    for (_, va), (_, vb) in zip(ia, ib):
        if isinstance(va, np.ndarray):
            np.testing.assert_array_equal(va, vb)
        else:
            assert va == vb


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_class_load_keeps_items_order_and_frequencies(cls, tmp_path):
    c = make(cls)
    path = tmp_path / "c.snap"
    c.save(path)
    d = cls.load(path)
    assert type(d) is cls and d.maxsize == c.maxsize and d.currsize == c.currsize
    same_items(c, d)
    if cls is kvcache.LFUCache:
        np.testing.assert_array_equal(c._export_state()[2], d._export_state()[2])
    if cls is not kvcache.RRCache:  # RR's victims are random by design
        # Same future: one more insertion evicts the same victim, then the same order.
        c["new"] = 1
        d["new"] = 1
        assert drain(c) == drain(d)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_instance_load_replaces_contents(cls, tmp_path):
    c = make(cls)
    c.save(str(tmp_path / "c.snap"))
    other = cls(maxsize=32)
    other["stale"] = 1
    assert other.load(tmp_path / "c.snap") is other
    assert "stale" not in other
    same_items(c, other)


def test_load_with_constructor_arguments(tmp_path):
    c = kvcache.LRUCache(maxsize=100, getsizeof=len)
    c["a"] = "xx"
    c["b"] = "yyy"
    c.save(tmp_path / "s")
    d = kvcache.LRUCache.load(tmp_path / "s", getsizeof=len)
    assert d.currsize == 5 and list(d.items()) == [("a", "xx"), ("b", "yyy")]
    small = kvcache.LRUCache.load(tmp_path / "s", maxsize=1)
    assert list(small.items()) == [("b", "yyy")]  # trimmed in eviction order
    with pytest.raises(TypeError):
        c.load(tmp_path / "s", maxsize=3)


def test_cachetools_style_keys_roundtrip(tmp_path):
    ck = pytest.importorskip("cachetools.keys")
    c = kvcache.LRUCache(maxsize=10)
    keys = [ck.hashkey(1, a=2), ck.typedkey(1, 2.5), (None, b"x", -3), "s", 2**70]
    for i, k in enumerate(keys):
        c[k] = i
    c.save(tmp_path / "s")
    d = kvcache.LRUCache.load(tmp_path / "s")
    assert [d[k] for k in keys] == list(range(len(keys)))


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "s"
    c = make(kvcache.LRUCache)
    c.save(path)
    before = path.read_bytes()
    c["bad"] = object()  # not serializable: fails before anything is written
    with pytest.raises(TypeError):
        c.save(path)
    del c["bad"]
    c["x"] = "changed"

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        c.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["s"]  # temporary files cleaned up
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


def test_save_overwrites(tmp_path):
    path = tmp_path / "s"
    kvcache.LRUCache(maxsize=3).save(path)
    c = kvcache.LRUCache(maxsize=3)
    c[1] = 1
    c.save(path)
    assert list(kvcache.LRUCache.load(path).items()) == [(1, 1)]


# --- bad files ---------------------------------------------------------------------------


@pytest.fixture
def good(tmp_path):
    c = make(kvcache.LFUCache, n=200, maxsize=150)
    path = tmp_path / "good.snap"
    c.save(path)
    return path


@pytest.fixture
def victim():
    c = kvcache.LFUCache(maxsize=10)
    c["keep"] = "me"
    c.get("keep")
    return c


def check_untouched(c):
    assert list(c.items()) == [("keep", "me")]
    assert c._export_state()[2].tolist() == [2]


def corrupt_variants(data):
    yield "empty", b""
    for cut in (3, 10, 20, len(data) // 2, len(data) - 33, len(data) - 1):
        yield f"truncated{cut}", data[:cut]
    for pos in (30, len(data) // 2, len(data) - 5):
        b = bytearray(data)
        b[pos] ^= 0x40
        yield f"flip{pos}", bytes(b)
    yield "trailing", data + b"x"
    yield "png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
    yield "text", b"hello world, not a snapshot at all\n" * 3
    yield "pickle", __import__("pickle").dumps({"a": 1})


def test_bad_files_raise_and_leave_cache_untouched(good, victim, tmp_path):
    data = good.read_bytes()
    for name, blob in corrupt_variants(data):
        bad = tmp_path / f"bad-{name}"
        bad.write_bytes(blob)
        with pytest.raises(SnapshotError):
            victim.load(bad)
        with pytest.raises(SnapshotError):
            kvcache.LFUCache.load(bad)
        check_untouched(victim)


def rewrite(data, *, version=None, header=None, payload=None, key=None):
    """Re-emit a snapshot with some part replaced and a valid checksum."""
    magic, ver, flags, hlen = snapshot._HEAD.unpack_from(data)
    pos = snapshot._HEAD.size
    head = data[pos : pos + hlen]
    (plen,) = struct.unpack_from("<Q", data, pos + hlen)
    pay = data[pos + hlen + 8 : pos + hlen + 8 + plen]
    head = header if header is not None else head
    pay = payload if payload is not None else pay
    body = snapshot._HEAD.pack(magic, version or ver, flags, len(head)) + head + struct.pack("<Q", len(pay)) + pay
    return body + snapshot._digest(key, body)


def test_other_version_and_inconsistent_content(good, victim, tmp_path):
    import msgpack

    from kvcache.serialize import Serializer

    data = good.read_bytes()
    cases = {
        "version": (rewrite(data, version=2), "version 2"),
        "header": (rewrite(data, header=msgpack.packb([1, 2])), "header"),
        "count": (rewrite(data, payload=Serializer().dumps([[], [], None])), "header says"),
        "payload": (rewrite(data, payload=b"\x01\x00\xc1"), "payload"),
        "dupkeys": (
            rewrite(data, header=msgpack.packb({"class": "LFUCache", "maxsize": 5, "count": 2, "keys": "canonical"}),
                    payload=Serializer().dumps([[b"\x01", b"\x01"], [1, 2], None])),
            "does not fit",
        ),
    }
    for name, (blob, msg) in cases.items():
        bad = tmp_path / name
        bad.write_bytes(blob)
        with pytest.raises(SnapshotError, match=msg):
            victim.load(bad)
        check_untouched(victim)


def test_missing_file(victim, tmp_path):
    with pytest.raises(FileNotFoundError):
        victim.load(tmp_path / "nope")
    check_untouched(victim)


# --- pickle opt-in -----------------------------------------------------------------------

RAN = []


def _mark(what):
    RAN.append(what)


class Payload:
    def __init__(self, x):
        self.x = x

    def __eq__(self, other):
        return isinstance(other, Payload) and other.x == self.x

    def __reduce__(self):
        return (_rebuild_payload, (self.x,))


def _rebuild_payload(x):
    RAN.append("rebuilt")
    return Payload(x)


def test_pickle_only_with_the_same_key(tmp_path, victim):
    c = kvcache.LRUCache(maxsize=5)
    c["obj"] = Payload(3)
    with pytest.raises(TypeError):
        c.save(tmp_path / "s")
    c.save(tmp_path / "s", pickle_key=KEY)
    RAN.clear()
    with pytest.raises(SnapshotError, match="signed"):
        victim.load(tmp_path / "s")
    with pytest.raises(SnapshotError, match="checksum"):
        victim.load(tmp_path / "s", pickle_key=b"another-key-0123456789")
    assert RAN == []  # nothing unpickled
    check_untouched(victim)
    d = kvcache.LRUCache.load(tmp_path / "s", pickle_key=KEY)
    assert d["obj"] == Payload(3) and RAN == ["rebuilt"]


def test_unsigned_file_with_pickled_payload_is_refused(tmp_path, victim):
    import pickle

    class Evil:
        def __reduce__(self):
            return (_mark, ("pwned",))

    # A well-formed, correctly checksummed (SHA-256, no key) file whose payload is a pickle frame.
    payload = bytes((0x02, 0)) + b"\x00" * 32 + pickle.dumps([[b"\x01"], [Evil()], None])
    import msgpack

    header = msgpack.packb({"class": "LRUCache", "maxsize": 5, "count": 1, "keys": "canonical"})
    body = snapshot._HEAD.pack(snapshot.MAGIC, 1, 0, len(header)) + header + struct.pack("<Q", len(payload)) + payload
    (tmp_path / "evil").write_bytes(body + snapshot._digest(None, body))
    RAN.clear()
    with pytest.raises(SnapshotError):
        victim.load(tmp_path / "evil")
    with pytest.raises(SnapshotError):
        victim.load(tmp_path / "evil", pickle_key=KEY)
    assert RAN == []
    check_untouched(victim)


def test_read_header(tmp_path):
    c = make(kvcache.FIFOCache)
    c.save(pathlib.Path(tmp_path, "h"))
    h = snapshot.read_header(tmp_path / "h")
    assert h["class"] == "FIFOCache" and h["count"] == len(c) and h["maxsize"] == 32


def test_large_snapshot_is_compressed(tmp_path):
    c = kvcache.LRUCache(maxsize=100)
    for i in range(50):
        c[i] = "x" * 10_000
    c.save(tmp_path / "big")
    assert (tmp_path / "big").stat().st_size < 50 * 10_000 // 20
    assert kvcache.LRUCache.load(tmp_path / "big") == c
    snapshot.save(c, tmp_path / "raw", compress_over=None)
    assert (tmp_path / "raw").stat().st_size > 50 * 10_000
    assert kvcache.LRUCache.load(tmp_path / "raw") == c


def test_snapshot_keeps_remaining_ttl(tmp_path):
    now = [100.0]
    c = kvcache.TTLCache(10, ttl=50, timer=lambda: now[0])
    c["a"] = 1
    now[0] = 120.0
    c.set("b", 2, ttl=5)
    path = tmp_path / "ttl.kvc"
    c.save(path)
    d = kvcache.TTLCache.load(path, timer=lambda: now[0])      # ttl comes from the file
    assert d.ttl == 50
    assert list(d.items()) == [("a", 1), ("b", 2)]
    assert 29 < d.ttl_of("a") <= 30 and 4 < d.ttl_of("b") <= 5
    now[0] = 126.0
    assert "b" not in d and "a" in d
    e = kvcache.LRUCache(10)
    e.load(path)                                              # TTLs reach a plain LRUCache too
    assert 0 < e.ttl_of("b") <= 5 and e.ttl_of("a") > 0
