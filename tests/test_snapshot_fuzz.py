"""Hostile snapshot files: every defect is a SnapshotError and the running cache stays as it was.

Plain corruption (byte flips, truncation) is caught by the checksum; the crafted files below
carry a recomputed, valid checksum, so the decoder itself has to reject them.
"""

import math
import os
import struct
import tempfile

import pytest

msgpack = pytest.importorskip("msgpack")
pytest.importorskip("zstandard")

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import kvcache  # noqa: E402
from kvcache import serialize, snapshot  # noqa: E402
from kvcache.snapshot import SnapshotError  # noqa: E402


def clock():
    return 1000.0  # frozen: remaining times-to-live are exact


# Each class with the constructor arguments a snapshot does not hold.
CLASSES = {
    "LRUCache": (kvcache.LRUCache, {}),
    "LFUCache": (kvcache.LFUCache, {}),
    "TTLCache": (kvcache.TTLCache, {"timer": clock}),
    "TinyLFUCache": (kvcache.TinyLFUCache, {}),
}
FUZZ = settings(max_examples=120, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def new_cache(name, maxsize=40, **extra):
    cls, kw = CLASSES[name]
    if cls is kvcache.TTLCache:
        return cls(maxsize, ttl=60, **kw, **extra)
    return cls(maxsize=maxsize, **kw, **extra)


def filled(name):
    c = new_cache(name, seed=1)    # TinyLFU's state depends on the seed: every fill alike
    for i in range(30):
        c[i] = {"i": i, "t": (i, "x"), "l": [1.5, None, b"b"]}
        if i % 3 == 0:
            c.get(i // 2)
    c[("tuple", 1, frozenset({2}))] = np.arange(4)
    c["s"] = {1, 2}
    if name == "TTLCache":
        c.set("short", 1, ttl=5)
    return c


def fingerprint(c):
    """Everything a load could change: keys, values, policy state, times-to-live."""
    keys, values, aux, ttl = c._export_state(ttl=True) if hasattr(c, "ttl") else (*c._export_state(), None)
    return (repr(keys), repr(values), None if aux is None else aux.tolist(),
            None if ttl is None else ttl.tolist(), c.currsize)


@pytest.fixture(params=list(CLASSES), ids=list(CLASSES))
def case(request, tmp_path):
    """(class name, bytes of a good snapshot, a victim cache, the victim's fingerprint)."""
    name = request.param
    c = filled(name)
    path = tmp_path / "good.snap"
    snapshot.save(c, path, compress_over=None)
    victim = new_cache(name, maxsize=10)
    victim["keep"] = "me"
    victim.get("keep")
    PRISTINE[id(victim)] = victim._export_state()
    return name, path.read_bytes(), victim, fingerprint(victim)


PRISTINE = {}      # id(victim) -> its state as the fixture made it (see restore)


def expect_rejected(name, blob, victim, before, tmpdir):
    path = os.path.join(tmpdir, "bad.snap")
    with open(path, "wb") as f:
        f.write(blob)
    with pytest.raises(SnapshotError):
        victim.load(path)
    assert fingerprint(victim) == before
    cls, kw = CLASSES[name]
    with pytest.raises(SnapshotError):
        cls.load(path, **kw)


def split(data):
    """(flags, header bytes, payload bytes) of a snapshot."""
    _, _, flags, hlen = snapshot._HEAD.unpack_from(data)
    pos = snapshot._HEAD.size
    (plen,) = struct.unpack_from("<Q", data, pos + hlen)
    return flags, data[pos : pos + hlen], data[pos + hlen + 8 : pos + hlen + 8 + plen]


def assemble(header, payload, flags=0, key=None):
    """A snapshot of raw header and payload bytes with a valid checksum."""
    body = snapshot._HEAD.pack(snapshot.MAGIC, snapshot.VERSION, flags, len(header)) + header
    body += struct.pack("<Q", len(payload)) + payload
    return body + snapshot._digest(key, body)


def good_parts(data):
    _, head, payload = split(data)
    header = msgpack.unpackb(head, raw=False)
    state = serialize.Serializer(_frame=True).loads(payload)
    if len(state) == 3:
        state.append(None)
    return header, state


class Raw(bytes):
    """Bytes to splice into a payload as they are (already msgpack)."""


def pack_item(x):
    return bytes(x) if isinstance(x, Raw) else serialize._packb(x)


def craft(data, header=None, **items):
    """The good snapshot with header fields and state items replaced (checksum recomputed)."""
    h, state = good_parts(data)
    if header is not None:
        h = header(h) if callable(header) else header
    state = items.pop("state", state)
    names = ["keys", "values", "aux", "ttl"]
    for k, v in items.items():
        state[names.index(k)] = v
    payload = b"\x01\x00" + (bytes(state) if isinstance(state, Raw)
                             else bytes([0x90 + len(state)]) + b"".join(pack_item(x) for x in state))
    return assemble(msgpack.packb(h, use_bin_type=True), payload)


def ext_chain(depth, code=1):
    b = msgpack.packb([])
    for _ in range(depth):
        b = msgpack.packb([msgpack.ExtType(code, b)])
    return b


# --- corruption the checksum catches -----------------------------------------------------


def positions(data):
    """Every position of the preamble and header, then a dense sample (about 300 in all)."""
    _, head, _ = split(data)
    dense = snapshot._HEAD.size + len(head) + 8
    step = max(1, (len(data) - dense) // 200)
    return list(range(dense)) + list(range(dense, len(data), step)) + [len(data) - 1]


def test_byte_flips_are_rejected(case, tmp_path):
    name, data, victim, before = case
    for pos in positions(data):
        blob = bytearray(data)
        blob[pos] ^= 1 << (pos % 8)
        expect_rejected(name, bytes(blob), victim, before, tmp_path)


def test_truncation_is_rejected(case, tmp_path):
    name, data, victim, before = case
    for n in positions(data):
        expect_rejected(name, data[:n], victim, before, tmp_path)
    expect_rejected(name, data + b"\x00", victim, before, tmp_path)


# --- crafted files with a valid checksum -------------------------------------------------

HEADER_FIELDS = ["class", "module", "maxsize", "count", "created", "keys"]
BAD_FIELD_VALUES = {
    "class": [1, None, "", b"LRUCache", ["LRUCache"]],
    "module": [1, None, b"kvcache"],
    "maxsize": [-1, math.nan, "5", None, [5], {"a": 1}],
    "count": [-1, 1.0, "31", None, True, 10**9, 2**64 - 1, 0],
    "created": [math.nan, math.inf, -math.inf, "yesterday", None, b"1"],
    "keys": ["pickle", 1, None, "serializer"],   # serializer keys only in signed files
    "ttl": ["60", [60], b"60", {"t": 1}],
    "kvcache": [1, [0, 1]],
}


def header_cases():
    yield "list", lambda h: [h]
    yield "int", lambda h: 7
    yield "str", lambda h: "header"
    yield "none", lambda h: None
    for field in HEADER_FIELDS:
        yield f"no-{field}", lambda h, f=field: {k: v for k, v in h.items() if k != f}
    for field, values in BAD_FIELD_VALUES.items():
        for i, v in enumerate(values):
            yield f"{field}={v!r}", lambda h, f=field, v=v: {**h, f: v}


@pytest.mark.parametrize("label,change", list(header_cases()), ids=[c[0] for c in header_cases()])
def test_malformed_header_fields(case, tmp_path, label, change):
    name, data, victim, before = case
    expect_rejected(name, craft(data, header=change), victim, before, tmp_path)


def payload_cases():
    """(label, function of the entry count n giving the state items to replace)."""
    k = serialize.encode_key

    def array(n, items):
        return Raw(b"\xdc" + struct.pack(">H", n) + b"".join(items))

    def freqs(n, last):
        arr = np.ones(n, dtype=np.uint64 if last >= 2**63 else np.int64)
        arr[-1] = last
        return {"aux": arr}

    yield "state-dict", lambda n: {"state": Raw(msgpack.packb({"keys": []}))}
    yield "state-int", lambda n: {"state": Raw(msgpack.packb(5))}
    yield "state-2", lambda n: {"state": [[], []]}
    yield "state-5", lambda n: {"state": [[], [], None, None, None]}
    yield "keys-dict", lambda n: {"keys": {"a": 1}}
    yield "values-str", lambda n: {"values": "x" * n}
    yield "values-short", lambda n: {"values": [1] * (n - 1)}
    yield "values-long", lambda n: {"values": [1] * (n + 1)}
    yield "keys-short", lambda n: {"keys": [k(i) for i in range(n - 1)]}
    yield "keys-not-bytes", lambda n: {"keys": list(range(n))}
    yield "keys-undecodable", lambda n: {"keys": [b"\xc1"] * n}
    yield "keys-list", lambda n: {"keys": [msgpack.packb([i]) for i in range(n)]}
    yield "keys-unknown-ext", lambda n: {"keys": [msgpack.packb(msgpack.ExtType(4, b"")) for i in range(n)]}
    yield "keys-twice", lambda n: {"keys": [k(0)] * n}
    yield "keys-equal", lambda n: {"keys": [k(0), msgpack.packb(msgpack.ExtType(7, b"0"))] + [k(i) for i in range(2, n)]}
    yield "key-deep-200", lambda n: {"keys": array(n, [msgpack.packb(ext_chain(200))] * n)}
    yield "key-deep-frozenset", lambda n: {"keys": array(n, [msgpack.packb(ext_chain(3000, 3))] * n)}
    yield "value-deep-200", lambda n: {"values": array(n, [ext_chain(200)] * n)}
    yield "value-deep-set", lambda n: {"values": array(n, [ext_chain(3000, 2)] * n)}
    yield "value-lists-2000", lambda n: {"values": array(n, [b"\x91" * 2000 + b"\x00"] + [b"\x00"] * (n - 1))}
    yield "value-lists-65", lambda n: {"values": array(n, [b"\x91" * 65 + b"\x00"] + [b"\x00"] * (n - 1))}
    yield "freq-2**63-1", lambda n: freqs(n, 2**63 - 1)
    yield "freq-2**62", lambda n: freqs(n, 2**62)
    yield "freq-2**63", lambda n: freqs(n, 2**63)
    yield "freq-2**64-1", lambda n: freqs(n, 2**64 - 1)
    yield "freq-negative", lambda n: freqs(n, -5)
    yield "freq-zero", lambda n: freqs(n, 0)
    yield "freq-unsorted", lambda n: {"aux": np.arange(n, 0, -1, dtype=np.int64)}
    yield "freq-float", lambda n: {"aux": np.ones(n)}
    yield "freq-2d", lambda n: {"aux": np.ones((n, 1), dtype=np.int64)}
    yield "freq-list", lambda n: {"aux": [1] * n}
    yield "freq-long", lambda n: {"aux": np.ones(n + 1, dtype=np.int64)}
    yield "freq-short", lambda n: {"aux": np.ones(n - 1, dtype=np.int64)}
    yield "freq-fake-tinylfu", lambda n: {"aux": np.concatenate(
        [np.zeros(n, np.int64), np.array([1, 64, 0, 0, 0, 0, 10**6, 0, 0, 0], np.int64)])}
    yield "ttl-short", lambda n: {"ttl": [1.0] * (n - 1)}
    yield "ttl-long", lambda n: {"ttl": [1.0] * (n + 1)}
    yield "ttl-str", lambda n: {"ttl": ["1"] * n}
    yield "ttl-none-items", lambda n: {"ttl": [None] * n}
    yield "ttl-bool", lambda n: {"ttl": [True] * n}
    yield "ttl-nan", lambda n: {"ttl": [math.nan] * n}
    yield "ttl-minus-inf", lambda n: {"ttl": [-math.inf] * n}
    yield "ttl-array", lambda n: {"ttl": np.ones(n)}
    yield "ttl-dict", lambda n: {"ttl": {"a": 1.0}}


PAYLOAD_CASES = dict(payload_cases())


@pytest.mark.parametrize("label", list(PAYLOAD_CASES))
def test_malformed_payloads(case, tmp_path, label):
    name, data, victim, before = case
    n = good_parts(data)[0]["count"]
    expect_rejected(name, craft(data, **PAYLOAD_CASES[label](n)), victim, before, tmp_path)
def test_crafted_good_file_loads(case, tmp_path):
    # craft() itself produces loadable files: the rejections above are the decoder's doing
    name, data, victim, before = case
    path = tmp_path / "same.snap"
    path.write_bytes(craft(data))
    cls, kw = CLASSES[name]
    c = cls.load(path, **kw)
    c._check()
    assert fingerprint(c)[:3] == fingerprint(filled(name))[:3]


def test_huge_claimed_lengths(case, tmp_path):
    name, data, victim, before = case
    _, head, payload = split(data)
    # a payload length past the end of the file, and a header length past it
    blob = bytearray(data)
    struct.pack_into("<Q", blob, snapshot._HEAD.size + len(head), 2**63)
    expect_rejected(name, bytes(blob), victim, before, tmp_path)
    blob = bytearray(data)
    struct.pack_into("<I", blob, 12, 2**32 - 1)
    expect_rejected(name, bytes(blob), victim, before, tmp_path)
    # a 30-byte array header claiming 2**32 entries
    expect_rejected(name, craft(data, values=Raw(b"\xdd\xff\xff\xff\xff")), victim, before, tmp_path)


# --- random rewrites with a valid checksum: reject, or load a consistent cache -----------


def restore(victim, before):
    """Put the victim back as the fixture made it (a successful fuzzed load replaces it)."""
    if isinstance(victim, kvcache.TinyLFUCache):
        # clear keeps the sketch and every lookup ticks its sample clock: put the exact state back
        victim._import_state(*PRISTINE[id(victim)])
    else:
        victim.clear()
        victim["keep"] = "me"
        victim.get("keep")
    assert fingerprint(victim) == before


def load_or_reject(name, blob, victim, before, tmpdir):
    """Load `blob`; a rejection leaves `victim` untouched, a success gives a consistent cache."""
    path = os.path.join(tmpdir, "fuzz.snap")
    with open(path, "wb") as f:
        f.write(blob)
    cls, kw = CLASSES[name]
    try:
        c = cls.load(path, **kw)
    except SnapshotError:
        pass
    else:
        c._check()
        list(c.items())
    try:
        victim.load(path)
    except SnapshotError:
        assert fingerprint(victim) == before
    else:
        victim._check()


@FUZZ
@given(data=st.data())
def test_random_byte_rewrites_with_valid_checksum(case, data):
    name, good, victim, before = case
    _, head, payload = split(good)
    body = bytearray(head + payload)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(body) - 1))
        body[pos] = data.draw(st.integers(0, 255))
    blob = assemble(bytes(body[: len(head)]), bytes(body[len(head) :]))
    with tempfile.TemporaryDirectory() as tmpdir:
        load_or_reject(name, blob, victim, before, tmpdir)
    restore(victim, before)


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=5),
                    st.binary(max_size=5))
ANY = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(st.text(max_size=3), inner, max_size=3)),
                   max_leaves=10)


@FUZZ
@given(field=st.sampled_from(HEADER_FIELDS + ["ttl", "kvcache", "extra"]), value=ANY)
def test_random_header_values(case, field, value):
    name, good, victim, before = case
    blob = craft(good, header=lambda h: {**h, field: value})
    with tempfile.TemporaryDirectory() as tmpdir:
        load_or_reject(name, blob, victim, before, tmpdir)
    restore(victim, before)


@pytest.mark.parametrize("field, value", [("ttl", -1), ("ttl", float("nan")), ("ttl", "x"),
                                          ("maxsize", -5), ("maxsize", float("nan"))])
def test_header_the_constructor_rejects_is_a_snapshot_error(tmp_path, field, value):
    good = tmp_path / "good.snap"
    snapshot.save(filled("TTLCache"), good, compress_over=None)
    bad = tmp_path / "bad.snap"
    bad.write_bytes(craft(good.read_bytes(), header=lambda h: {**h, field: value}))
    with pytest.raises(SnapshotError):
        kvcache.TTLCache.load(bad)
    # The caller's own bad argument stays the caller's error, not the file's.
    with pytest.raises(ValueError) as info:
        kvcache.TTLCache.load(good, ttl=-1)
    assert not isinstance(info.value, SnapshotError)


@FUZZ
@given(item=st.sampled_from(["keys", "values", "aux", "ttl"]), value=ANY)
def test_random_state_items(case, item, value):
    name, good, victim, before = case
    blob = craft(good, **{item: value})
    with tempfile.TemporaryDirectory() as tmpdir:
        load_or_reject(name, blob, victim, before, tmpdir)
    restore(victim, before)


def compressed_snapshot():
    c = filled("LFUCache")
    with tempfile.TemporaryDirectory() as tmpdir:
        path = os.path.join(tmpdir, "z.snap")
        snapshot.save(c, path, compress_over=0)
        with open(path, "rb") as f:
            return f.read()


@FUZZ
@given(data=st.data())
def test_random_rewrites_of_a_compressed_payload(data):
    good = compressed_snapshot()
    _, head, payload = split(good)
    assert payload[1] == 1                       # zstd
    body = bytearray(payload)
    # past the frame head and zstd's frame header: its content size, rewritten, would only
    # ask for an allocation up to Serializer.max_size before failing
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(20, len(body) - 1))
        body[pos] = data.draw(st.integers(0, 255))
    victim = new_cache("LFUCache", maxsize=10)
    victim["keep"] = "me"
    victim.get("keep")
    with tempfile.TemporaryDirectory() as tmpdir:
        load_or_reject("LFUCache", assemble(head, bytes(body)), victim, fingerprint(victim), tmpdir)
