"""Warm-start snapshots: cache.save(path), Class.load(path), cache.load(path)."""

import math
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


def header_fields(cls="LFUCache", count=0, **over):
    """A complete, valid header, with some fields replaced."""
    h = {"class": cls, "module": "kvcache._core", "maxsize": 5, "ttl": None, "count": count,
         "created": 1.7e9, "keys": "canonical", "kvcache": "0.1.0"}
    h.update(over)
    return h


def header_bytes(**over):
    import msgpack

    return msgpack.packb(header_fields(**over), use_bin_type=True)


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
            rewrite(data, header=header_bytes(count=2),
                    payload=Serializer().dumps([[b"\x01", b"\x01"], [1, 2], None])),
            "twice",
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

    header = header_bytes(cls="LRUCache", count=1)
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


# --- issue 14: nesting, hostile fields, other classes, authentication --------------------

from kvcache.serialize import MAX_DEPTH, SerializationError  # noqa: E402


def nested(depth, leaf=0):
    v = leaf
    for _ in range(depth):
        v = (v,)
    return v


def test_nesting_at_the_limit_roundtrips(tmp_path):
    c = kvcache.LRUCache(maxsize=5)
    c[nested(MAX_DEPTH, "k")] = nested(MAX_DEPTH, "v")
    c["list"] = [[[[1]]]]
    c.save(tmp_path / "s")
    d = kvcache.LRUCache.load(tmp_path / "s")
    assert d[nested(MAX_DEPTH, "k")] == nested(MAX_DEPTH, "v") and d["list"] == [[[[1]]]]


@pytest.mark.parametrize("where", ["value", "key"])
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 200])
def test_too_deep_is_refused_at_save_and_nothing_is_written(tmp_path, where, depth):
    # 200 levels saved fine and then crashed the process on load.
    path = tmp_path / "s"
    kvcache.LRUCache(maxsize=3).save(path)
    before = path.read_bytes()
    c = kvcache.LRUCache(maxsize=3)
    c["ok"] = 1
    if where == "value":
        c["deep"] = nested(depth)
    else:
        c[nested(depth)] = 1
    with pytest.raises(SerializationError, match="MAX_DEPTH"):
        c.save(path)
    with pytest.raises(SerializationError):
        c.save(path, pickle_key=KEY)          # pickle does not lift the limit
    with pytest.raises(SerializationError):
        c.save(tmp_path / "new")
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["s"]


def crafted(header, payload_items, key=None):
    """A snapshot with the given header (dict) and payload (msgpack bytes of each state item)."""
    import msgpack

    head = msgpack.packb(header, use_bin_type=True)
    payload = b"\x01\x00" + bytes([0x90 + len(payload_items)]) + b"".join(payload_items)
    flags = snapshot._FLAG_HMAC if key is not None else 0
    body = snapshot._HEAD.pack(snapshot.MAGIC, 1, flags, len(head)) + head + struct.pack("<Q", len(payload)) + payload
    return body + snapshot._digest(key, body)


def ext_chain(depth, code=1):
    import msgpack

    b = msgpack.packb([])
    for _ in range(depth):
        b = msgpack.packb([msgpack.ExtType(code, b)])
    return b


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 200, 3000])
def test_crafted_deep_snapshots_raise(tmp_path, victim, depth):
    import msgpack

    one = msgpack.packb([kvcache.serialize.encode_key("k")])
    files = {
        "value": crafted(header_fields(count=1), [one, b"\x91" + ext_chain(depth), b"\xc0"]),
        "key": crafted(header_fields(count=1), [msgpack.packb([ext_chain(depth)]), b"\x91\x01", b"\xc0"]),
        "lists": crafted(header_fields(count=1), [one, b"\x91" + b"\x91" * depth + b"\x01", b"\xc0"]),
    }
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(SnapshotError, match="nest"):
            victim.load(tmp_path / name)
        with pytest.raises(SnapshotError):
            kvcache.LRUCache.load(tmp_path / name)
        check_untouched(victim)


@pytest.mark.parametrize(
    "freqs",
    [[2**63 - 1], [2**62], [0], [-1], [2**64 - 1]],
    ids=["2**63-1", "2**62", "zero", "negative", "2**64-1"],
)
def test_out_of_range_frequencies_raise(tmp_path, victim, freqs):
    # near 2**63 used to load and then wrap negative; 2**64-1 escaped as OverflowError
    import msgpack

    from kvcache.serialize import Serializer

    dtype = np.uint64 if freqs[0] >= 2**63 else np.int64
    payload = Serializer().dumps([[kvcache.serialize.encode_key("k")], [1], np.array(freqs, dtype=dtype), None])
    head = msgpack.packb(header_fields(count=1))
    body = snapshot._HEAD.pack(snapshot.MAGIC, 1, 0, len(head)) + head + struct.pack("<Q", len(payload)) + payload
    (tmp_path / "f").write_bytes(body + snapshot._digest(None, body))
    with pytest.raises(SnapshotError, match="frequenc"):
        victim.load(tmp_path / "f")
    with pytest.raises(SnapshotError, match="frequenc"):
        kvcache.LFUCache.load(tmp_path / "f")
    check_untouched(victim)


def test_largest_frequency_loads_and_keeps_counting(tmp_path):
    c = kvcache.LFUCache(maxsize=3)
    c._import_state(["a", "b"], [1, 2], [5, snapshot.MAX_FREQUENCY - 1])
    c.save(tmp_path / "s")
    d = kvcache.LFUCache.load(tmp_path / "s")
    d.get("b")
    d._check()
    assert d._export_state()[2].tolist() == [5, snapshot.MAX_FREQUENCY]
    with pytest.raises(ValueError, match="2\\*\\*62"):
        d.save(tmp_path / "t")                 # load would refuse it: not written
    assert not (tmp_path / "t").exists()


def test_ttlcache_load_of_a_file_without_ttl(tmp_path):
    c = kvcache.LRUCache(maxsize=4)
    c["a"] = 1
    c.save(tmp_path / "lru")
    with pytest.raises(SnapshotError, match="ttl="):
        kvcache.TTLCache.load(tmp_path / "lru")
    d = kvcache.TTLCache.load(tmp_path / "lru", ttl=30)
    assert type(d) is kvcache.TTLCache and d.ttl == 30 and d.maxsize == 4 and dict(d) == {"a": 1}
    assert 29 < d.ttl_of("a") <= 30


def test_tlrucache_load_names_the_missing_argument(tmp_path):
    c = kvcache.LRUCache(maxsize=4)
    c["a"] = 1
    c.save(tmp_path / "lru")
    with pytest.raises(TypeError, match="TLRUCache.load"):
        kvcache.TLRUCache.load(tmp_path / "lru")
    d = kvcache.TLRUCache.load(tmp_path / "lru", ttu=lambda k, v, now: now + 10)
    assert dict(d) == {"a": 1}


def test_a_key_authenticates_the_file(tmp_path, victim):
    c = kvcache.LRUCache(maxsize=5)
    c["a"] = "genuine"
    c.save(tmp_path / "signed", pickle_key=KEY)
    assert kvcache.LRUCache.load(tmp_path / "signed", pickle_key=KEY)["a"] == "genuine"
    # An attacker without the key rewrites the file unsigned, with a valid plain SHA-256 trailer:
    forged = kvcache.LRUCache(maxsize=5)
    forged["a"] = "forged"
    forged.save(tmp_path / "forged")
    with pytest.raises(SnapshotError, match="not signed"):
        victim.load(tmp_path / "forged", pickle_key=KEY)
    # ... or keeps the signed flag and recomputes the trailer without the key:
    data = bytearray((tmp_path / "forged").read_bytes())
    struct.pack_into("<H", data, 10, snapshot._FLAG_HMAC)
    body = bytes(data[:-32])
    (tmp_path / "forged2").write_bytes(body + snapshot._digest(None, body))
    with pytest.raises(SnapshotError, match="checksum"):
        victim.load(tmp_path / "forged2", pickle_key=KEY)
    check_untouched(victim)


def test_read_header_checks_fields(tmp_path):
    (tmp_path / "h").write_bytes(crafted(header_fields(created="yesterday"), [b"\x90", b"\x90", b"\xc0"]))
    with pytest.raises(SnapshotError, match="created"):
        snapshot.read_header(tmp_path / "h")


def test_ttlcache_keeps_a_ttlcache_files_times(tmp_path):
    now = [0.0]
    c = kvcache.TTLCache(4, ttl=10, timer=lambda: now[0])
    c["a"] = 1
    c.set("never", 2, ttl=math.inf)
    c.save(tmp_path / "ttl")
    d = kvcache.TTLCache(4, ttl=99, timer=lambda: now[0])
    d.load(tmp_path / "ttl")
    assert 9 < d.ttl_of("a") <= 10 and d.ttl_of("never") is None
    e = kvcache.LRUCache(4)
    e["x"] = 1
    e.set("y", 2, ttl=5)
    e.save(tmp_path / "lru")
    d.load(tmp_path / "lru")                   # from a cache without a default: d's default
    assert 98 < d.ttl_of("x") <= 99 and 4 < d.ttl_of("y") <= 5
