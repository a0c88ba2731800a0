"""Safe serialization for values that leave the process (Redis tier, snapshots).

The default format is msgpack, extended with a fixed set of types that decode
without running user code: tuples, sets, frozensets, complex, arbitrary-size
ints, datetime/date/time/timedelta, Decimal and numpy arrays and scalars (any
non-object, non-structured dtype).  Subclasses of supported types (namedtuples,
``IntEnum``, ``OrderedDict``, ...) come back as their plain base type, which
compares equal; ``bytearray`` and ``memoryview`` come back as ``bytes``.
Anything else is refused with :class:`TypeError` unless the caller opts into
pickle by giving an HMAC key: pickled payloads are signed and a payload whose
signature does not verify is rejected before it is unpickled.

Containers (lists, dicts, tuples, sets, frozensets: one level each) nest at
most :data:`MAX_DEPTH` deep in a value or a key.  Encoding refuses anything
deeper with :class:`SerializationError` and every decoder (``Serializer.loads``,
:func:`decode_key`, snapshots) rejects it the same way, counting levels before
it descends: hostile bytes never recurse on the C stack.

Frames are ``format byte, flags byte, [32-byte HMAC-SHA256], payload``;
payloads larger than ``compress_over`` bytes are zstd-compressed.
"""

import datetime
import decimal
import functools
import hashlib
import hmac
import numbers
import os
import pickle
from itertools import chain, compress

import msgpack
import numpy as np

__all__ = [
    "MAX_DEPTH", "Cipher", "Serializer", "SerializationError", "SignatureError", "encode_key", "encode_keys",
    "decode_key",
]

# Each level of tuples/sets/frozensets costs one nested msgpack call (about 2 KB of C
# stack while decoding, more while encoding): 64 levels stay far below the smallest
# thread stacks in use, and far above what cached values and keys need.
MAX_DEPTH = 64


class SerializationError(ValueError):
    """Raised when bytes cannot be decoded into a value, or a value nests deeper than MAX_DEPTH."""


class SignatureError(SerializationError):
    """Raised when a signed (pickled) payload fails HMAC verification."""


# Frame format bytes.  A new wire format gets a new byte; old ones stay decodable.
_FMT_MSGPACK = 0x01
_FMT_PICKLE = 0x02
_FLAG_ZSTD = 0x01
_MAC_SIZE = 32

# msgpack extension codes.  Never renumber: they are part of stored data.
_EXT_TUPLE = 1
_EXT_SET = 2
_EXT_FROZENSET = 3
_EXT_NDARRAY = 4
_EXT_NPSCALAR = 5
_EXT_COMPLEX = 6
_EXT_BIGINT = 7
_EXT_TYPE = 8
_EXT_DATETIME = 9
_EXT_DATE = 10
_EXT_TIME = 11
_EXT_TIMEDELTA = 12
_EXT_DECIMAL = 13
_EXT_BYTEARRAY = 14  # decoded only: msgpack packs bytearray as bin before we see it

_INT64_MIN = -(1 << 63)
_UINT64_MAX = (1 << 64) - 1


def _array_header(arr):
    if arr.dtype.hasobject:
        raise TypeError("numpy arrays of dtype object cannot be serialized safely")
    if arr.dtype.fields is not None:
        raise TypeError("structured numpy arrays are not supported by the safe serializer")
    return arr.dtype.str


# --- nesting ------------------------------------------------------------------
# msgpack packs lists and dicts itself; tuples, sets and frozensets become
# extensions whose payload is packed and unpacked by a nested msgpack call, so
# both directions recurse on the C stack.  Every hook below therefore carries a
# budget: how many more such levels it may open.  The hooks are built once per
# budget (no state shared between threads).  The budget bounds the recursion;
# _check_depth, run on every value before encoding and after decoding, bounds
# the nesting as a whole (lists and dicts included; keys need no walk, see
# decode_key).

_CONTAINERS = (list, tuple, dict, set, frozenset)
_SEQUENCES = frozenset((list, tuple, set, frozenset))
_LEAVES = frozenset((type(None), bool, int, float, str, bytes))
_NESTING_EXTS = frozenset((_EXT_TUPLE, _EXT_SET, _EXT_FROZENSET))


def _too_deep():
    return SerializationError(f"containers nest more than MAX_DEPTH = {MAX_DEPTH} levels deep")


def _check_depth(obj, limit):
    """Raise SerializationError if containers nest more than `limit` levels deep in `obj`.

    Walks one level at a time with C iterators: no recursion, and Python code runs
    per level and per distinct type, never per element.
    """
    if type(obj) in _LEAVES:
        return
    level = [obj]
    depth = 0
    while True:
        kinds = set(map(type, level))
        kinds -= _LEAVES
        if not kinds <= _SEQUENCES:
            kinds = {t for t in kinds if issubclass(t, _CONTAINERS)}
        if not kinds:
            return
        depth += 1
        if depth > limit:
            raise _too_deep()
        found = compress(level, map(kinds.__contains__, map(type, level)))
        maps = {t for t in kinds if issubclass(t, dict)} if not kinds <= _SEQUENCES else ()
        if not maps:
            level = list(chain.from_iterable(found))
            continue
        if maps == kinds:
            dicts, seqs = list(found), ()
        else:
            found = list(found)
            is_map = list(map(maps.__contains__, map(type, found)))
            dicts = list(compress(found, is_map))
            seqs = compress(found, [not m for m in is_map])
        level = list(chain(chain.from_iterable(seqs), chain.from_iterable(map(dict.keys, dicts)),
                           chain.from_iterable(map(dict.values, dicts))))


def _default(budget, obj):
    # Called by msgpack (strict_types=True) for every object that is not exactly
    # None/bool/int/float/str/bytes/list/dict; subclasses land here too.
    if isinstance(obj, (tuple, set, frozenset)):
        if budget <= 0:
            raise _too_deep()
        if isinstance(obj, tuple):
            code = _EXT_TUPLE
        else:
            code = _EXT_FROZENSET if isinstance(obj, frozenset) else _EXT_SET
        return msgpack.ExtType(code, _packb(list(obj), budget - 1))
    if isinstance(obj, list):
        return list(obj)
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, np.ndarray):
        dtype = _array_header(obj)
        data = np.ascontiguousarray(obj).tobytes()
        return msgpack.ExtType(_EXT_NDARRAY, _packb_plain([dtype, list(obj.shape), data]))
    if isinstance(obj, np.generic):
        arr = np.asarray(obj)
        dtype = _array_header(arr)
        return msgpack.ExtType(_EXT_NPSCALAR, _packb_plain([dtype, arr.tobytes()]))
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        if _INT64_MIN <= obj <= _UINT64_MAX:
            return int(obj)
        return msgpack.ExtType(_EXT_BIGINT, str(int(obj)).encode())
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, bytes):
        return bytes(obj)
    if isinstance(obj, complex):
        return msgpack.ExtType(_EXT_COMPLEX, _packb_plain([float(obj.real), float(obj.imag)]))
    # datetime is a subclass of date: test it first.
    if isinstance(obj, datetime.datetime):
        return msgpack.ExtType(_EXT_DATETIME, obj.isoformat().encode())
    if isinstance(obj, datetime.date):
        return msgpack.ExtType(_EXT_DATE, obj.isoformat().encode())
    if isinstance(obj, datetime.time):
        return msgpack.ExtType(_EXT_TIME, obj.isoformat().encode())
    if isinstance(obj, datetime.timedelta):
        return msgpack.ExtType(_EXT_TIMEDELTA, _packb_plain([obj.days, obj.seconds, obj.microseconds]))
    if isinstance(obj, decimal.Decimal):
        return msgpack.ExtType(_EXT_DECIMAL, str(obj).encode())
    raise TypeError(
        f"cannot serialize {type(obj).__qualname__!r} safely; supported: None, bool, int, float, "
        "complex, str, bytes, list, tuple, dict, set, frozenset, datetime types, "
        "Decimal, numpy arrays/scalars (pass pickle_key=... to allow signed pickle)"
    )


def _unpack_nested(data, budget):
    """Decode the one object filling `data`, a payload nested `budget` levels from the limit.

    unpackb keeps its parse stack on the C stack (~40 KB a call): fine for the first
    few levels, where most data lives; deeper payloads go through an Unpacker, five
    times slower but with its parse stack on the heap (~2 KB of C stack a level).
    """
    hook = _HOOKS[budget]
    if budget >= _SHALLOW:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=hook)
    return _unpack_exact(data, hook)


def _unpack_exact(data, hook):
    """Decode the one object filling `data` with an Unpacker (parse stack on the heap)."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, ext_hook=hook,
                                max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    obj = unpacker.unpack()
    if unpacker.tell() != len(data):
        raise SerializationError("extra bytes after a nested value")
    return obj


def _no_ext(code, data):
    raise SerializationError(f"unexpected msgpack extension {code} inside a scalar")


def _unpack_leaf(data, n):
    """Decode the list of `n` scalars inside a numpy/complex/timedelta extension."""
    items = msgpack.unpackb(data, raw=False, ext_hook=_no_ext)
    if type(items) is not list or len(items) != n:
        raise SerializationError("malformed extension payload")
    return items


def _ext_hook(budget, code, data):
    if code in _NESTING_EXTS:
        if budget <= 0:
            raise _too_deep()
        items = _unpack_nested(data, budget - 1)
        if type(items) is not list:
            raise SerializationError("malformed tuple/set payload")
        if code == _EXT_TUPLE:
            return tuple(items)
        return set(items) if code == _EXT_SET else frozenset(items)
    if code == _EXT_NDARRAY:
        dtype, shape, raw = _unpack_leaf(data, 3)
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise SerializationError("refusing numpy dtype object in serialized data")
        # frombuffer over bytes is read-only; users expect a writable array as with pickle.
        return np.frombuffer(raw, dtype=dt).reshape(shape).copy()
    if code == _EXT_NPSCALAR:
        dtype, raw = _unpack_leaf(data, 2)
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise SerializationError("refusing numpy dtype object in serialized data")
        return np.frombuffer(raw, dtype=dt)[0]
    if code == _EXT_COMPLEX:
        real, imag = _unpack_leaf(data, 2)
        if type(real) is not float or type(imag) is not float:
            raise SerializationError("malformed complex payload")
        return complex(real, imag)
    if code == _EXT_BIGINT:
        return int(data.decode())
    if code == _EXT_DATETIME:
        return datetime.datetime.fromisoformat(data.decode())
    if code == _EXT_DATE:
        return datetime.date.fromisoformat(data.decode())
    if code == _EXT_TIME:
        return datetime.time.fromisoformat(data.decode())
    if code == _EXT_TIMEDELTA:
        days, seconds, micros = _unpack_leaf(data, 3)
        return datetime.timedelta(days, seconds, micros)
    if code == _EXT_DECIMAL:
        return decimal.Decimal(data.decode())
    if code == _EXT_BYTEARRAY:
        return bytearray(data)
    if code == _EXT_TYPE:
        return _resolve_type(data)
    raise SerializationError(f"unknown msgpack extension type {code}")


# Snapshots wrap values in two plain lists of their own ([keys, values, ...]): the
# walk allows for them, the extension budget need not.
_FRAME_LEVELS = 2
_DEFAULTS = [functools.partial(_default, b) for b in range(MAX_DEPTH + 1)]
_HOOKS = [functools.partial(_ext_hook, b) for b in range(MAX_DEPTH + 1)]
# Budgets at or above this decode with unpackb: at most two such levels under any top level.
_SHALLOW = MAX_DEPTH - 2


def _packb(obj, budget=MAX_DEPTH):
    return msgpack.packb(obj, use_bin_type=True, strict_types=True, default=_DEFAULTS[budget])


def _packb_plain(obj):
    return msgpack.packb(obj, use_bin_type=True, strict_types=True)


def _unpackb(data, budget=MAX_DEPTH):
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_HOOKS[budget])

DEFAULT_MAX_SIZE = 64 << 20  # bytes a value may decompress to
_PLAIN_HEAD = bytes((_FMT_MSGPACK, 0))
_MAX_SNAPSHOT = 1 << 31


class Serializer:
    """Turn values into bytes and back, safely.

    ``compress_over``: payloads larger than this many bytes are zstd-compressed
    (``None`` never compresses).  ``pickle_key``: bytes enabling signed pickle for
    values msgpack cannot represent; without it pickled payloads are refused on
    load.  ``max_size`` bounds the decompressed size of a payload (default 64 MiB, a
    guard against zstd bombs): a larger one is a SerializationError, found without
    allocating more than about ``max_size``.
    """

    __slots__ = ("compress_over", "compress_level", "max_size", "_pickle_key", "_cctx", "_dctx", "_depth")

    def __init__(self, *, compress_over=None, compress_level=3, pickle_key=None, max_size=None,
                 _frame=False):
        if compress_over is not None and compress_over < 0:
            raise ValueError("compress_over must be >= 0 or None")
        if pickle_key is not None:
            if isinstance(pickle_key, str):
                pickle_key = pickle_key.encode()
            if not isinstance(pickle_key, (bytes, bytearray)) or len(pickle_key) < 16:
                raise ValueError("pickle_key must be at least 16 bytes")
            pickle_key = bytes(pickle_key)
        self.compress_over = compress_over
        self.compress_level = compress_level
        if max_size is None:
            # A snapshot (_frame) is one verified file holding a whole cache: keep its old bound.
            max_size = _MAX_SNAPSHOT if _frame else DEFAULT_MAX_SIZE
        if not (isinstance(max_size, int) and max_size > 0):
            raise ValueError("max_size must be a positive int")
        self.max_size = max_size
        self._pickle_key = pickle_key
        self._cctx = None
        self._dctx = None
        # _frame: the caller wraps each value in _FRAME_LEVELS containers of its own (snapshots)
        self._depth = MAX_DEPTH + (_FRAME_LEVELS if _frame else 0)

    @property
    def allows_pickle(self):
        """Whether signed pickle is enabled."""
        return self._pickle_key is not None

    def _mac(self, head, payload):
        return hmac.new(self._pickle_key, head + payload, hashlib.sha256).digest()

    def dumps(self, obj):
        """Return `obj` as bytes; raise TypeError if it cannot be represented safely.

        SerializationError if containers nest more than MAX_DEPTH levels deep (with
        or without pickle: no decoder would read it back).
        """
        _check_depth(obj, self._depth)
        try:
            payload = _packb(obj, MAX_DEPTH)
            fmt = _FMT_MSGPACK
        except TypeError:
            if self._pickle_key is None:
                raise
            try:
                payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # PicklingError, TypeError, AttributeError: all "cannot represent"
                raise TypeError(f"cannot pickle a value of type {type(obj).__qualname__!r}: {exc}") from exc
            fmt = _FMT_PICKLE
        flags = 0
        if self.compress_over is not None and len(payload) > self.compress_over:
            import zstandard

            if self._cctx is None:
                self._cctx = zstandard.ZstdCompressor(level=self.compress_level)
            payload = self._cctx.compress(payload)
            flags |= _FLAG_ZSTD
        head = bytes((fmt, flags))
        if fmt == _FMT_PICKLE:
            return head + self._mac(head, payload) + payload
        return head + payload

    def _decompress(self, payload):
        import zstandard

        # decompress() allocates the size written in the frame at once: check it first.
        size = zstandard.frame_content_size(payload)
        if size > self.max_size:
            raise SerializationError(f"payload expands to {size} bytes, over max_size={self.max_size}")
        if size >= 0:
            return self._dctx.decompress(payload)
        # No size written: stream it, so a bomb costs what it really expands to, up to the bound.
        parts, total = [], 0
        with self._dctx.stream_reader(payload) as reader:
            while True:
                chunk = reader.read(1 << 20)
                if not chunk:
                    return b"".join(parts)
                total += len(chunk)
                if total > self.max_size:
                    raise SerializationError(f"payload expands past max_size={self.max_size} bytes")
                parts.append(chunk)

    def loads_many(self, blobs, missing=None):
        """Return ``[self.loads(b) for b in blobs]`` with `missing` for each None; faster for short frames.

        Stops at the first invalid frame with its SerializationError, as the loop would.
        """
        head, limit, unpack, loads = _PLAIN_HEAD, self._depth + 2, _unpackb, self.loads
        out = []
        append = out.append
        for b in blobs:
            if b is None:
                append(missing)
            elif len(b) <= limit and b[:2] == head:
                # A plain frame too short to nest past the limit: what loads would do, minus its checks.
                try:
                    append(unpack(b[2:], MAX_DEPTH))
                except Exception:
                    append(loads(b))  # raises the SerializationError loads gives
            else:
                append(loads(b))
        return out

    def loads(self, data):
        """Return the value encoded in `data`; raise SerializationError if it is not valid."""
        data = bytes(data) if not isinstance(data, bytes) else data
        if len(data) < 2:
            raise SerializationError("truncated payload")
        fmt, flags = data[0], data[1]
        if flags & ~_FLAG_ZSTD:
            raise SerializationError(f"unknown payload flags {flags:#x}")
        if fmt == _FMT_MSGPACK:
            payload = data[2:]
        elif fmt == _FMT_PICKLE:
            if self._pickle_key is None:
                raise SerializationError("payload is pickled but no pickle_key was given; refusing to unpickle")
            mac, payload = data[2 : 2 + _MAC_SIZE], data[2 + _MAC_SIZE :]
            # Verify before decompressing: unsigned bytes never reach zstd or pickle.
            if len(mac) != _MAC_SIZE or not hmac.compare_digest(mac, self._mac(data[:2], payload)):
                raise SignatureError("pickled payload signature does not verify; rejected")
        else:
            raise SerializationError(f"unknown payload format {fmt:#x} (not written by kvcache?)")
        if flags & _FLAG_ZSTD:
            try:
                import zstandard
            except ImportError:
                raise SerializationError("payload is zstd-compressed: pip install zstandard") from None

            if self._dctx is None:
                self._dctx = zstandard.ZstdDecompressor()
            try:
                payload = self._decompress(payload)
            except zstandard.ZstdError as exc:
                raise SerializationError(f"corrupt compressed payload: {exc}") from None
        if fmt == _FMT_PICKLE:
            return pickle.loads(payload)
        try:
            obj = _unpackb(payload, MAX_DEPTH)
            if len(payload) > self._depth:     # every level takes a byte at least
                _check_depth(obj, self._depth)
            return obj
        except SerializationError:
            raise
        except msgpack.StackError:      # plain arrays/maps past msgpack's own stack
            raise _too_deep() from None
        except Exception as exc:  # msgpack raises several unrelated types on garbage
            raise SerializationError(f"corrupt payload: {exc!r}") from None



class Cipher:
    """Encrypt and authenticate values that leave the process with AES-GCM.

    ``keys``: one key or a list, newest first (16, 24 or 32 bytes each; a str is
    UTF-8 encoded and must have one of those lengths too).  :meth:`seal` always
    uses the newest key; :meth:`open` accepts any of them, so keys rotate by
    putting the new one in front and dropping the old one once every stored
    value has been rewritten or has expired.  The associated data (the remote
    tiers pass the namespace and the key) is authenticated, so a value copied to
    another key does not decrypt.  Needs the ``cryptography`` package.

    Frames are ``0xE1, 4-byte key id, 12-byte random nonce, ciphertext+tag``.
    The key id is a digest prefix: it names the key without revealing it.
    """

    __slots__ = ("_aeads", "_new_id", "_new_aead")

    def __init__(self, keys):
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise ImportError("encryption needs the cryptography package: pip install cryptography") from None
        if isinstance(keys, (bytes, bytearray, str)):
            keys = [keys]
        try:
            keys = list(keys)
        except TypeError:
            raise TypeError("encryption_key must be bytes, str or a list of them, newest first") from None
        if not keys:
            raise ValueError("encryption_key: give at least one key")
        self._aeads = {}
        for i, key in enumerate(keys):
            if isinstance(key, str):
                key = key.encode()
            if not isinstance(key, (bytes, bytearray)):
                raise TypeError(f"encryption key {i}: bytes or str expected, got {type(key).__name__}")
            if len(key) not in (16, 24, 32):
                raise ValueError(f"encryption key {i}: AES needs 16, 24 or 32 bytes, got {len(key)}")
            kid = hashlib.sha256(b"kvcache-key-id" + bytes(key)).digest()[:4]
            if kid in self._aeads:
                raise ValueError(f"encryption key {i} is given twice")
            self._aeads[kid] = AESGCM(bytes(key))
            if i == 0:
                self._new_id, self._new_aead = kid, self._aeads[kid]

    def seal(self, data, aad):
        """Return `data` encrypted with the newest key, bound to `aad`."""
        nonce = os.urandom(12)     # random 96-bit nonces: safe for far more than 2**32 values per key
        return b"\xe1" + self._new_id + nonce + self._new_aead.encrypt(nonce, data, aad)

    def open(self, frame, aad):
        """Return the plaintext of `frame`; raise SignatureError if it is not ours for `aad`."""
        from cryptography.exceptions import InvalidTag

        if len(frame) < 1 + 4 + 12 + 16 or frame[0] != 0xE1:
            raise SignatureError("not an encrypted kvcache value")
        aead = self._aeads.get(bytes(frame[1:5]))
        if aead is None:
            raise SignatureError("value encrypted with a key this cache does not hold")
        try:
            return aead.decrypt(bytes(frame[5:17]), bytes(frame[17:]), aad)
        except InvalidTag:
            raise SignatureError("encrypted value does not authenticate (tampered, or stored under another key)") from None

# --- keys -------------------------------------------------------------------
# Keys that leave the process need a *canonical* encoding: keys equal in
# Python's sense (1, 1.0, True; a tuple and a namedtuple) must give the same
# bytes, as they are one key in a dict and in every kvcache cache.

class TypeMark:
    """Stand-in for a class found in a decoded key that this process never encoded."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"<TypeMark {self.name}>"

    def __eq__(self, other):
        return isinstance(other, TypeMark) and other.name == self.name

    def __hash__(self):
        return hash(("TypeMark", self.name))


# Classes appear in keys as markers (cachetools' kwargs separator, typedkey's
# argument types).  Decoding resolves a class name only to a class this very
# process has encoded: nothing is ever imported or looked up by name.
_TYPES_SEEN: dict[str, type] = {}


# Classes a fresh process may resolve by name (for snapshots of typedkey /
# kwargs keys): builtins, and the kwargs separator of the key modules, only if
# the module is already imported.
_RESOLVABLE_MODULES = ("cachetools.keys", "kvcache.keys")


def _resolve_type(data):
    cls = _TYPES_SEEN.get(data)
    if cls is not None:
        return cls
    name = data.decode("utf-8", "replace")
    module, _, qualname = name.partition(":")
    if module == "builtins":
        import builtins

        cls = getattr(builtins, qualname, None)
    elif module in _RESOLVABLE_MODULES and qualname == "_HashedTuple":
        import sys

        cls = getattr(sys.modules.get(module), qualname, None)
    if isinstance(cls, type):
        return cls
    return TypeMark(name)


def _canon(obj, budget=MAX_DEPTH):
    # budget: how many more tuple/frozenset levels the key may open (see "nesting")
    t = type(obj)
    if t is str or t is bytes or obj is None:
        return obj
    if t is int:
        if _INT64_MIN <= obj <= _UINT64_MAX:
            return obj
        return msgpack.ExtType(_EXT_BIGINT, str(obj).encode())
    if isinstance(obj, (tuple, frozenset)):
        if budget <= 0:
            raise _too_deep()
        if isinstance(obj, tuple):
            return msgpack.ExtType(_EXT_TUPLE, _packb_plain([_canon(x, budget - 1) for x in obj]))
        items = sorted(_packb_plain(_canon(x, budget - 1)) for x in obj)
        return msgpack.ExtType(_EXT_FROZENSET, b"".join(items))
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, bytes):
        return bytes(obj)
    if isinstance(obj, type):
        name = f"{obj.__module__}:{obj.__qualname__}".encode()
        _TYPES_SEEN.setdefault(name, obj)
        return msgpack.ExtType(_EXT_TYPE, name)
    if isinstance(obj, complex):
        if obj.imag:
            # float(): numpy complex parts are numpy floats, and must give the same bytes
            return msgpack.ExtType(_EXT_COMPLEX, _packb_plain([float(obj.real), float(obj.imag)]))
        obj = obj.real
    if isinstance(obj, (numbers.Number, np.generic)) and not isinstance(obj, np.ndarray):
        try:
            as_int = int(obj)
            if as_int == obj:
                return _canon(as_int)
            as_float = float(obj)
        except (TypeError, ValueError, OverflowError):
            # nan/inf: no equal int; a float of itself is its only form.
            as_float = float(obj)
            return as_float
        if as_float == obj:
            return as_float
    raise TypeError(
        f"key of type {type(obj).__qualname__!r} cannot be sent to Redis or a snapshot: keys must be "
        "made of None, bool, int, float, str, bytes, tuple, frozenset or classes"
    )


def encode_key(key):
    """Return the canonical bytes of `key`: keys equal in Python give equal bytes.

    TypeError for a key of another type; SerializationError for tuples or
    frozensets nested more than MAX_DEPTH levels deep.
    """
    return _packb_plain(_canon(key))


def encode_keys(keys, prefix=b""):
    """Return ``[prefix + encode_key(k) for k in keys]``, faster (one packer for the batch)."""
    pack = msgpack.Packer(use_bin_type=True, strict_types=True).pack
    return [prefix + pack(_canon(k)) for k in keys]


def _ext_hook_key(budget, code, data):
    # Only what _canon writes.  Lists and dicts decoded from hostile bytes stay
    # unhashable, so nothing here hashes deeper than the budget of tuples.
    if code == _EXT_TUPLE or code == _EXT_FROZENSET:
        if budget <= 0:
            raise _too_deep()
        hook = _KEY_HOOKS[budget - 1]
        if code == _EXT_TUPLE:
            if budget > _SHALLOW:           # as _unpack_nested: unpackb near the top only
                items = msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=hook)
            else:
                items = _unpack_exact(data, hook)
            if type(items) is not list:
                raise SerializationError("malformed tuple in a key")
            return tuple(items)
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, ext_hook=hook,
                                    max_buffer_size=max(len(data), 1))
        unpacker.feed(data)
        return frozenset(unpacker)
    if code in (_EXT_BIGINT, _EXT_TYPE, _EXT_COMPLEX):
        return _ext_hook(0, code, data)
    raise SerializationError(f"msgpack extension {code} is not part of a key")


_KEY_HOOKS = [functools.partial(_ext_hook_key, b) for b in range(MAX_DEPTH + 1)]


def decode_key(data):
    """Return the key encoded by :func:`encode_key` (equal to the original).

    SerializationError for bytes that are not a key: corrupt, nested deeper than
    MAX_DEPTH, or decoding to something unhashable.
    """
    try:
        key = msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_KEY_HOOKS[MAX_DEPTH])
        # Hashable means made of scalars, tuples and frozensets only (lists and dicts are
        # not), each level of which the hooks' budget counted: no walk needed.
        hash(key)
        return key
    except SerializationError:
        raise
    except msgpack.StackError:
        raise _too_deep() from None
    except Exception as exc:
        raise SerializationError(f"corrupt key: {exc!r}") from None
