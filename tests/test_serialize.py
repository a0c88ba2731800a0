"""The safe serializer shared by the Redis tier and snapshots."""

import collections
import datetime
import decimal
import os
import pickle
import random

import pytest

msgpack = pytest.importorskip("msgpack")
pytest.importorskip("zstandard")

import numpy as np  # noqa: E402

from kvcache.serialize import (  # noqa: E402
    SerializationError,
    Serializer,
    SignatureError,
    decode_key,
    encode_key,
)

KEY = b"0123456789abcdef-secret"

VALUES = [
    None, True, False, 0, -1, 2**63, -(2**63), 2**64 - 1, 2**64, -(2**200), 1.5, float("inf"),
    "", "héllo", b"", b"\x00\xff", [], [1, [2, [3]]], (), (1, (2, "x")),
    {"a": 1, (1, 2): [3], 3: None}, {1, 2}, frozenset({"a"}), set(), 1 + 2j,
    datetime.datetime(2024, 1, 2, 3, 4, 5, 6), datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc),
    datetime.date(2024, 1, 2), datetime.time(1, 2, 3), datetime.timedelta(days=-1, seconds=5),
    decimal.Decimal("1.10"),
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
@pytest.mark.parametrize("compress_over", [None, 0])
def test_roundtrip_keeps_value_and_type(value, compress_over):
    s = Serializer(compress_over=compress_over)
    out = s.loads(s.dumps(value))
    assert out == value and type(out) is type(value)


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(12, dtype=np.int64).reshape(3, 4),
        np.linspace(0, 1, 7, dtype=np.float32),
        np.array([[1 + 2j]], dtype=np.complex128),
        np.zeros((0, 3), dtype=np.uint8),
        np.array(3.5),
        np.array([True, False]),
        np.arange(10, dtype=">i4"),
        np.array(["ab", "c"]),
        np.arange(20).reshape(4, 5)[:, ::2],  # not contiguous
    ],
    ids=lambda a: f"{a.dtype.str}{a.shape}",
)
def test_numpy_arrays(arr):
    s = Serializer()
    out = s.loads(s.dumps(arr))
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable


def test_numpy_scalars_and_nested():
    s = Serializer()
    v = {"x": np.float32(1.25), "y": [np.int8(-3), (np.arange(3),)]}
    out = s.loads(s.dumps(v))
    assert type(out["x"]) is np.float32 and out["x"] == np.float32(1.25)
    assert type(out["y"][0]) is np.int8
    np.testing.assert_array_equal(out["y"][1][0], np.arange(3))


def test_bytes_like_come_back_as_bytes():
    s = Serializer()
    assert s.loads(s.dumps(bytearray(b"ab"))) == b"ab"
    assert type(s.loads(s.dumps(memoryview(b"ab")))) is bytes


def test_subclasses_come_back_as_base_type():
    Point = collections.namedtuple("Point", "x y")
    s = Serializer()
    assert s.loads(s.dumps(Point(1, 2))) == (1, 2)
    assert s.loads(s.dumps(collections.OrderedDict(a=1))) == {"a": 1}


@pytest.mark.parametrize("bad", [object(), np.array([object()]), lambda: 0, {1: object()}], ids=repr)
def test_unsupported_values_are_refused(bad):
    with pytest.raises(TypeError):
        Serializer().dumps(bad)


def test_compression_threshold():
    s = Serializer(compress_over=100)
    small, big = s.dumps("x" * 50), s.dumps("x" * 5000)
    assert small[1] == 0 and big[1] == 1
    assert len(big) < 200
    assert s.loads(big) == "x" * 5000
    # Any serializer decodes compressed frames, whatever its own threshold.
    assert Serializer().loads(big) == "x" * 5000


def test_decompression_bomb_bounded():
    s = Serializer(compress_over=0)
    frame = s.dumps(b"\x00" * 1_000_000)
    with pytest.raises(SerializationError):
        Serializer(max_size=1000).loads(frame)
    assert Serializer().max_size == 64 << 20
    with pytest.raises(ValueError):
        Serializer(max_size=0)


@pytest.mark.parametrize("declared", [True, False])
def test_default_bound_refuses_a_frame_over_64_mib(declared):
    import zstandard
    from kvcache.serialize import _FLAG_ZSTD, _FMT_MSGPACK

    # A bin 32 header claiming 100 MiB, then zeros: a few KB compressed.
    n = 100 << 20
    comp = zstandard.ZstdCompressor(write_content_size=declared).compressobj(size=n + 5 if declared else -1)
    zeros = b"\0" * (1 << 20)
    parts = [comp.compress(b"\xc6" + n.to_bytes(4, "big"))]
    parts += [comp.compress(zeros) for _ in range(100)]
    frame = bytes((_FMT_MSGPACK, _FLAG_ZSTD)) + b"".join(parts) + comp.flush()
    assert len(frame) < 100_000
    with pytest.raises(SerializationError, match="max_size"):
        Serializer().loads(frame)
    assert len(Serializer(max_size=n + 5).loads(frame)) == n


def test_unpicklable_value_raises_type_error():
    import threading

    s = Serializer(pickle_key=b"k" * 16)
    for value in (threading.Lock(), lambda: 1):
        with pytest.raises(TypeError, match="cannot pickle"):
            s.dumps(value)


RAN = []


def _mark(what):
    RAN.append(what)


class _Boom:
    """A value whose unpickling runs code."""

    ran = RAN

    def __reduce__(self):
        return (_mark, ("executed",))


def test_pickle_is_opt_in_and_signed():
    plain, signed = Serializer(), Serializer(pickle_key=KEY)
    with pytest.raises(TypeError, match="pickle_key"):
        plain.dumps(_Boom())
    frame = signed.dumps(_Boom())
    assert frame[0] == 0x02
    _Boom.ran.clear()
    with pytest.raises(SerializationError, match="no pickle_key"):
        plain.loads(frame)
    with pytest.raises(SignatureError):
        Serializer(pickle_key=b"another-key-0123456").loads(frame)
    tampered = bytearray(frame)
    tampered[-1] ^= 1
    with pytest.raises(SignatureError):
        signed.loads(bytes(tampered))
    assert _Boom.ran == []  # nothing was unpickled
    signed.loads(frame)
    assert _Boom.ran == ["executed"]  # the genuine signed payload is accepted


def test_unsigned_pickle_frame_refused_even_with_key():
    raw = pickle.dumps(_Boom())
    forged = bytes((0x02, 0)) + b"\x00" * 32 + raw
    _Boom.ran.clear()
    with pytest.raises(SignatureError):
        Serializer(pickle_key=KEY).loads(forged)
    assert _Boom.ran == []


def test_plain_data_stays_msgpack_with_key():
    frame = Serializer(pickle_key=KEY).dumps({"a": (1, 2)})
    assert frame[0] == 0x01
    assert Serializer().loads(frame) == {"a": (1, 2)}


def test_bad_pickle_key():
    with pytest.raises(ValueError):
        Serializer(pickle_key=b"short")


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01", b"\x07\x00abc", b"\x01\x80\x90", b"\x01\x00\xc1", b"\x01\x01notzstd",
     b"\x01\x00\xc7\x05\x04abcde", b"\x01\x00\xc7\x02\x63ab"],
)
def test_garbage_raises_serialization_error(data):
    with pytest.raises(SerializationError):
        Serializer().loads(data)


def test_random_bytes_never_escape_as_other_errors():
    rng = random.Random(7)
    s = Serializer()
    for _ in range(3000):
        blob = bytes((1, rng.choice((0, 1)))) + os.urandom(rng.randrange(0, 40))
        try:
            s.loads(blob)
        except SerializationError:
            pass


# --- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a,b",
    [(1, 1.0), (1, True), (0, False), (2, complex(2, 0)), ((1, "x"), (1.0, "x")), (frozenset({1, 2}), frozenset({2.0, 1})),
     (3, np.int64(3)), (0.5, decimal.Decimal("0.5")), (-0.0, 0)],
)
def test_equal_keys_encode_equal(a, b):
    assert a == b and encode_key(a) == encode_key(b)


@pytest.mark.parametrize("a,b", [("1", 1), (b"a", "a"), ((1,), 1), (1, 2), ((1, 2), (2, 1)), (1.5, 1)])
def test_different_keys_encode_differently(a, b):
    assert encode_key(a) != encode_key(b)


@pytest.mark.parametrize(
    "key", [None, 0, -5, 2**70, "s", b"b", 1.25, float("inf"), (), (1, ("a", None)), frozenset({"x", 3}), 1 + 2j, int, str]
)
def test_keys_decode_equal(key):
    out = decode_key(encode_key(key))
    assert out == key and hash(out) == hash(key)


def test_cachetools_style_keys():
    cachetools_keys = pytest.importorskip("cachetools.keys")
    for key in [cachetools_keys.hashkey(1, a=2), cachetools_keys.typedkey(1, 2.5, k="v")]:
        assert decode_key(encode_key(key)) == key


@pytest.mark.parametrize("key", [[1], {"a": 1}, object(), decimal.Decimal("0.1"), (1, [2])], ids=repr)
def test_unencodable_keys(key):
    with pytest.raises(TypeError):
        encode_key(key)


def test_corrupt_key():
    with pytest.raises(SerializationError):
        decode_key(b"\xc1")


# --- nesting depth (issue 14): one limit for every encoder and decoder, never a crash ------

from kvcache.serialize import MAX_DEPTH  # noqa: E402


def nested(depth, kind=tuple, leaf=0):
    """`depth` containers of `kind` around `leaf`."""
    v = leaf
    for _ in range(depth):
        v = kind([v])
    return v


def ext_chain(depth, code=1):
    """msgpack bytes of `depth` nested extensions of `code`, built without kvcache's encoder."""
    b = msgpack.packb([])
    for _ in range(depth):
        b = msgpack.packb([msgpack.ExtType(code, b)])
    return b


@pytest.mark.parametrize("kind", [tuple, list, frozenset, lambda x: {"k": x[0]}], ids=["tuple", "list", "frozenset", "dict"])
def test_nesting_up_to_the_limit_roundtrips_and_one_more_is_refused(kind):
    s = Serializer()
    ok = nested(MAX_DEPTH, kind)
    assert s.loads(s.dumps(ok)) == ok
    with pytest.raises(SerializationError, match="MAX_DEPTH"):
        s.dumps(nested(MAX_DEPTH + 1, kind))
    # the refusal holds with pickle enabled too: one limit, whatever the format
    with pytest.raises(SerializationError):
        Serializer(pickle_key=KEY).dumps(nested(MAX_DEPTH + 1, kind))


def test_mixed_lists_and_tuples_count_every_level():
    s = Serializer()
    v = 0
    for i in range(MAX_DEPTH):
        v = [v] if i % 2 else (v,)
    assert s.loads(s.dumps(v)) == v
    with pytest.raises(SerializationError):
        s.dumps([v])
    with pytest.raises(SerializationError):
        s.dumps({"a": [1, 2, v]})
    with pytest.raises(SerializationError):
        s.dumps({(nested(MAX_DEPTH),): 1})      # dict keys are walked too


def test_deep_values_are_refused_not_crashing():
    # 60 tuples each around 500 lists used to overflow the C stack inside msgpack's packer.
    v = 0
    for _ in range(60):
        v = (nested(500, list, v),)
    with pytest.raises(SerializationError):
        Serializer().dumps(v)
    with pytest.raises(SerializationError):
        Serializer().dumps(nested(100_000))
    cyclic = []
    cyclic.append(cyclic)
    with pytest.raises(SerializationError):
        Serializer().dumps(cyclic)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 200, 2000])
@pytest.mark.parametrize("code", [1, 2, 3])
def test_crafted_deep_extensions_raise_serialization_error(depth, code):
    # 200 nested tuple extensions crashed the process (one C-stack msgpack call per level).
    frame = b"\x01\x00" + ext_chain(depth, code)
    with pytest.raises(SerializationError):
        Serializer().loads(frame)


def test_crafted_deep_plain_arrays_raise_serialization_error():
    for depth in (MAX_DEPTH + 1, 1000, 5000):
        with pytest.raises(SerializationError):
            Serializer().loads(b"\x01\x00" + b"\x91" * depth + b"\x00")
    # plain arrays between extensions: each level counts
    b = b"\x00"
    for _ in range(40):
        b = b"\x91" * 30 + msgpack.packb(msgpack.ExtType(1, b"\x91" + b))
    with pytest.raises(SerializationError):
        Serializer().loads(b"\x01\x00" + b)


def test_decoding_at_the_limit_fits_a_small_thread_stack():
    import threading

    s = Serializer()
    frames = [s.dumps(nested(MAX_DEPTH, kind)) for kind in (tuple, frozenset, list)]
    key = encode_key(nested(MAX_DEPTH))
    bad = [b"\x01\x00" + ext_chain(5000), ext_chain(5000)]
    out = []

    def work():
        for f in frames:
            out.append(s.loads(f))
        out.append(s.dumps(nested(MAX_DEPTH)))
        out.append(decode_key(key))
        out.append(encode_key(nested(MAX_DEPTH)))
        for b, dec in zip(bad, (s.loads, decode_key)):
            try:
                dec(b)
            except SerializationError:
                out.append("refused")

    old = threading.stack_size(512 * 1024)
    try:
        t = threading.Thread(target=work)
        t.start()
        t.join()
    finally:
        threading.stack_size(old)
    assert len(out) == 8 and out[-2:] == ["refused", "refused"]
    assert out[:3] == [nested(MAX_DEPTH, k) for k in (tuple, frozenset, list)]
    assert out[4] == nested(MAX_DEPTH) and out[5] == key


def test_key_nesting_limit():
    ok = nested(MAX_DEPTH)
    assert decode_key(encode_key(ok)) == ok
    assert decode_key(encode_key(nested(MAX_DEPTH, frozenset))) == nested(MAX_DEPTH, frozenset)
    with pytest.raises(SerializationError):
        encode_key(nested(MAX_DEPTH + 1))
    with pytest.raises(SerializationError):
        encode_key(nested(MAX_DEPTH + 1, frozenset))
    for depth in (MAX_DEPTH + 1, 200, 3000):
        with pytest.raises(SerializationError):
            decode_key(ext_chain(depth))
        with pytest.raises(SerializationError):
            decode_key(ext_chain(depth, 3))


@pytest.mark.parametrize(
    "data",
    [msgpack.packb([1, 2]), msgpack.packb({"a": 1}), msgpack.packb(msgpack.ExtType(1, msgpack.packb([[1]]))),
     msgpack.packb(msgpack.ExtType(2, msgpack.packb([1]))), msgpack.packb(msgpack.ExtType(4, b"")),
     msgpack.packb(msgpack.ExtType(1, msgpack.packb([1]) + b"x")), msgpack.packb(msgpack.ExtType(1, b"\x05"))],
    ids=["list", "dict", "tuple-of-list", "set", "ndarray", "trailing", "not-a-list"],
)
def test_decode_key_refuses_what_is_not_a_key(data):
    with pytest.raises(SerializationError):
        decode_key(data)


def test_numpy_complex_key_encodes_as_complex():
    assert encode_key(np.complex128(1 + 2j)) == encode_key(1 + 2j)
    assert decode_key(encode_key(np.complex128(1 + 2j))) == 1 + 2j


# --- encryption ---------------------------------------------------------------

from kvcache.serialize import Cipher  # noqa: E402  (cryptography: in the test extra)

K1, K2 = b"k" * 32, b"second-key-16byt"


def test_cipher_round_trip_hides_the_plaintext():
    c = Cipher(K1)
    secret = b"card 4111-1111-1111-1111"
    frame = c.seal(secret, b"ns:v:k1")
    assert secret not in frame and b"4111" not in frame
    assert c.open(frame, b"ns:v:k1") == secret
    assert c.seal(secret, b"ns:v:k1") != frame          # a fresh nonce every time


@pytest.mark.parametrize("mutate", [
    lambda f: f[:-1] + bytes([f[-1] ^ 1]),               # tag
    lambda f: f[:20] + bytes([f[20] ^ 0x80]) + f[21:],   # ciphertext
    lambda f: f[:8] + bytes([f[8] ^ 1]) + f[9:],         # nonce
    lambda f: f[:-5],                                     # truncated
    lambda f: b"",
    lambda f: b"\x01\x00" + f[2:],                        # a plain serializer frame
])
def test_cipher_rejects_tampering(mutate):
    c = Cipher(K1)
    frame = c.seal(b"value", b"ns:v:k1")
    with pytest.raises(SignatureError):
        c.open(mutate(frame), b"ns:v:k1")


def test_cipher_binds_the_associated_data():
    c = Cipher(K1)
    frame = c.seal(b"value", b"ns:v:k1")
    with pytest.raises(SignatureError):
        c.open(frame, b"ns:v:k2")                         # copied to another key
    with pytest.raises(SignatureError):
        c.open(frame, b"other:v:k1")                      # or another namespace


def test_cipher_rotation_newest_first():
    old = Cipher(K1)
    rotated = Cipher([K2, K1])
    frame_old = old.seal(b"v", b"a")
    assert rotated.open(frame_old, b"a") == b"v"          # old values still read
    frame_new = rotated.seal(b"v", b"a")
    assert Cipher(K2).open(frame_new, b"a") == b"v"       # new values use the newest key
    with pytest.raises(SignatureError, match="does not hold"):
        old.open(frame_new, b"a")


@pytest.mark.parametrize("keys, exc", [
    (b"short", ValueError), ("x" * 20, ValueError), ([], ValueError), ([K1, K1], ValueError),
    (123, TypeError), ([K1, 5], TypeError),
])
def test_cipher_rejects_bad_keys(keys, exc):
    with pytest.raises(exc):
        Cipher(keys)


def test_cipher_str_key_is_its_utf8_bytes():
    assert Cipher("s" * 24).open(Cipher(b"s" * 24).seal(b"v", b"a"), b"a") == b"v"
