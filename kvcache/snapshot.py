"""Warm-start snapshots: save a cache's contents, order and frequencies to a file.

File layout (all integers little-endian)::

    magic     8 bytes   b"KVCSNAP\\0"
    version   u16       format version (1)
    flags     u16       bit 0: checksum is an HMAC-SHA256 under the caller's key
    hlen      u32       length of the header
    header    msgpack   {"class", "module", "maxsize", "count", "created", "keys", "kvcache"}
    plen      u64       length of the payload
    payload   bytes     a kvcache.serialize frame of [keys, values, frequencies or None,
                        remaining times-to-live or None]
    checksum  32 bytes  SHA-256 (or HMAC-SHA256) of everything before it

Loading reads and checks the whole file (magic, version, lengths, checksum),
decodes it and checks every field (types, lengths, counts, frequencies,
times-to-live, nesting depth) before touching the cache; the cache is then
replaced in one step (``_import_state``), so a bad file raises
:class:`SnapshotError` and leaves the running cache as it was.  Loading never
runs code: values are msgpack, unless the snapshot was saved with
``pickle_key=`` and is loaded with the same key, in which case pickled values
are accepted only if signed.

Trust: without a key the trailer is a plain SHA-256, a checksum against
accidental corruption, not a signature: anyone can write a file that passes
it.  Such a file still only yields msgpack data (never code), checked as
above.  To accept files only from yourself (e.g. read from a shared or
untrusted place), save and load with the same secret ``pickle_key=``: the
trailer is then an HMAC-SHA256 under it, and a load with a key refuses any
file not signed with that key, unsigned files included.
"""

import datetime
import hashlib
import hmac
import math
import os
import struct
import sys
import tempfile
import time

import msgpack
import numpy as np

from kvcache._core import install_snapshots
from kvcache.serialize import SerializationError, Serializer, decode_key, encode_key

__all__ = ["SnapshotError", "save", "load", "load_into", "read_header"]

MAGIC = b"KVCSNAP\x00"
VERSION = 1
_FLAG_HMAC = 0x01
_HEAD = struct.Struct("<8sHHI")
_PLEN = struct.Struct("<Q")
_SUM = 32
# Frequencies beyond this cannot come from counting hits, and leave room to count more.
MAX_FREQUENCY = 1 << 62


class SnapshotError(ValueError):
    """Raised for a snapshot file that is truncated, corrupt, foreign, unsigned or of another version."""


def _digest(key, data):
    if key is None:
        return hashlib.sha256(data).digest()
    return hmac.new(key, data, hashlib.sha256).digest()


def _norm_key(pickle_key):
    if isinstance(pickle_key, str):
        pickle_key = pickle_key.encode()
    return pickle_key


def _default_compress_over():
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return None
    return 4096


def save(cache, path, *, pickle_key=None, compress_over=-1):
    """Write `cache` to `path` atomically (temporary file, fsync, rename).

    The payload is zstd-compressed above `compress_over` bytes (default 4096
    when zstandard is installed; None never compresses).

    Keys must be encodable by :func:`kvcache.serialize.encode_key` (or anything,
    with `pickle_key`); values as for :class:`kvcache.serialize.Serializer`.
    Keys and values nesting containers deeper than
    :data:`kvcache.serialize.MAX_DEPTH` are refused (SerializationError), as is
    anything else a load would reject: nothing is written then.
    With `pickle_key` (a secret of 16 bytes or more) the file is signed with
    HMAC-SHA256 and only a load with the same key accepts it; without one the
    trailer is a SHA-256 checksum, which detects corruption but proves nothing
    about who wrote the file.  The file is created with mode 0600: it holds the
    cached data.
    """
    pickle_key = _norm_key(pickle_key)
    if compress_over == -1:
        compress_over = _default_compress_over()
    ser = Serializer(compress_over=compress_over, pickle_key=pickle_key, _frame=True)
    keys, values, aux, ttl = cache._export_state(ttl=True)
    if aux is not None and len(aux) == len(keys) and len(aux) and int(np.max(aux)) >= MAX_FREQUENCY:
        raise ValueError(f"an LFU frequency reached {int(np.max(aux))}; snapshots hold frequencies below 2**62")
    # remaining times-to-live travel as seconds; load subtracts the time the file sat on disk
    # (NaN, which the cache reads as "never expires", is written as inf: a file never holds NaN)
    ttl = None if not np.isfinite(ttl).any() else [x if x == x else math.inf for x in map(float, ttl)]
    try:
        enc_keys = [encode_key(k) for k in keys]
        key_format = "canonical"
    except TypeError:
        if pickle_key is None:
            raise
        enc_keys = list(keys)  # goes through the signed-pickle path with the values
        key_format = "serializer"
    payload = ser.dumps([enc_keys, list(values), aux, ttl])
    cls = type(cache)
    header = msgpack.packb(
        {
            "class": cls.__qualname__,
            "module": cls.__module__,
            "maxsize": cache.maxsize,
            "ttl": _plain_number(getattr(cache, "ttl", None)),
            "count": len(keys),
            "created": time.time(),
            "keys": key_format,
            "kvcache": _version(),
        },
        use_bin_type=True,
    )
    flags = _FLAG_HMAC if pickle_key is not None else 0
    body = _HEAD.pack(MAGIC, VERSION, flags, len(header)) + header + _PLEN.pack(len(payload)) + payload
    _atomic_write(os.fspath(path), body + _digest(pickle_key, body))


def _version():
    try:
        from kvcache import __version__
    except ImportError:  # pragma: no cover
        return None
    return __version__


def _atomic_write(path, data):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    # Make the rename itself durable; not every platform can fsync a directory.
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _read(path, pickle_key):
    """Return (header dict, payload bytes) of a verified snapshot file with a well-formed header."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _HEAD.size or not data.startswith(MAGIC):
        if MAGIC.startswith(data[: len(MAGIC)]) and len(data) < _HEAD.size:
            raise SnapshotError(f"{path}: truncated snapshot ({len(data)} bytes)")
        raise SnapshotError(f"{path}: not a kvcache snapshot (bad magic)")
    _, version, flags, hlen = _HEAD.unpack_from(data)
    if version != VERSION:
        raise SnapshotError(f"{path}: snapshot format version {version} is not supported (this kvcache reads {VERSION})")
    if flags & ~_FLAG_HMAC:
        raise SnapshotError(f"{path}: unknown snapshot flags {flags:#x}")
    pos = _HEAD.size + hlen
    if len(data) < pos + _PLEN.size:
        raise SnapshotError(f"{path}: truncated snapshot (header cut short)")
    (plen,) = _PLEN.unpack_from(data, pos)
    end = pos + _PLEN.size + plen
    if len(data) < end + _SUM:
        raise SnapshotError(f"{path}: truncated snapshot: expected {end + _SUM} bytes, file has {len(data)}")
    if len(data) > end + _SUM:
        raise SnapshotError(f"{path}: trailing bytes after the snapshot checksum")
    signed = bool(flags & _FLAG_HMAC)
    if signed and pickle_key is None:
        raise SnapshotError(f"{path}: snapshot is signed; pass the pickle_key it was saved with")
    if pickle_key is not None and not signed:
        # a key asks for authentication: an unsigned file proves nothing about its writer
        raise SnapshotError(f"{path}: snapshot is not signed, but a pickle_key was given; refusing it")
    if not hmac.compare_digest(data[end:], _digest(pickle_key, data[:end])):
        raise SnapshotError(
            f"{path}: snapshot checksum mismatch (corrupt file"
            + (", or another pickle_key)" if signed else ")")
        )
    try:
        header = msgpack.unpackb(data[_HEAD.size : pos], raw=False)
    except Exception as exc:
        raise SnapshotError(f"{path}: corrupt snapshot header: {exc!r}") from None
    _check_header(path, header, signed)
    return header, data[pos + _PLEN.size : end]


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# field: (required, check, what it must be)
_HEADER_FIELDS = {
    "class": (True, lambda v: isinstance(v, str) and v != "", "a class name"),
    "module": (True, lambda v: isinstance(v, str), "a module name"),
    "maxsize": (True, lambda v: isinstance(v, (int, float)) and v >= 0, "a number >= 0"),
    "count": (True, lambda v: type(v) is int and v >= 0, "an int >= 0"),
    "created": (True, lambda v: _is_number(v) and math.isfinite(v), "a finite time"),
    "keys": (True, lambda v: v in ("canonical", "serializer"), '"canonical" or "serializer"'),
    "ttl": (False, lambda v: v is None or _is_number(v), "a number or None"),
    "kvcache": (False, lambda v: v is None or isinstance(v, str), "a version string or None"),
}


def _check_header(path, header, signed):
    if not isinstance(header, dict):
        raise SnapshotError(f"{path}: corrupt snapshot header (not a map)")
    for field, (required, ok, what) in _HEADER_FIELDS.items():
        if field not in header:
            if required:
                raise SnapshotError(f"{path}: corrupt snapshot header: no {field!r}")
        elif not ok(header[field]):
            raise SnapshotError(f"{path}: corrupt snapshot header: {field!r} must be {what}, not {header[field]!r}")
    if header["keys"] == "serializer" and not signed:
        # save writes such keys only through signed pickle
        raise SnapshotError(f"{path}: corrupt snapshot header: key format 'serializer' in an unsigned file")


def read_header(path, *, pickle_key=None):
    """Return the header of a verified snapshot (class, maxsize, count, created, ...)."""
    return _read(path, _norm_key(pickle_key))[0]


def _decode(path, header, payload, pickle_key):
    """Return (keys, values, aux, ttl) checked for _import_state; SnapshotError otherwise."""
    ser = Serializer(pickle_key=pickle_key, _frame=True)
    n = header["count"]

    def bad(msg):
        return SnapshotError(f"{path}: corrupt snapshot payload: {msg}")

    try:
        state = ser.loads(payload)
    except SerializationError as exc:
        raise bad(exc) from None
    if type(state) is not list or len(state) not in (3, 4):
        raise bad("not a [keys, values, frequencies, times-to-live] list")
    if len(state) == 3:                 # written before remaining TTLs were saved
        state.append(None)
    enc_keys, values, aux, ttl = state
    if type(enc_keys) is not list or type(values) is not list:
        raise bad("keys and values must be lists")
    if len(enc_keys) != n or len(values) != n:
        raise SnapshotError(f"{path}: snapshot holds {len(enc_keys)} keys and {len(values)} values, header says {n}")
    if header["keys"] == "canonical":
        if not all(type(k) is bytes for k in enc_keys):
            raise bad("canonical keys must be bytes")
        try:
            keys = [decode_key(k) for k in enc_keys]
        except SerializationError as exc:
            raise bad(exc) from None
    else:
        keys = enc_keys
        try:
            for k in keys:
                hash(k)
        except TypeError as exc:
            raise bad(f"unhashable key: {exc}") from None
    if len(set(keys)) != n:
        raise bad("a key appears twice")
    return keys, values, _check_aux(bad, aux, n, header["class"]), _check_ttl(bad, header, ttl, n)


def _check_aux(bad, aux, n, saved_by):
    """Return the policy state as saved: None, n LFU frequencies, or a TinyLFU state (int64)."""
    if aux is None:
        return None
    if type(aux) is not np.ndarray or aux.ndim != 1 or aux.dtype.kind not in "iu":
        raise bad("frequencies must be a 1-D integer array")
    if aux.shape[0] == n:
        # LFU frequencies: positive, in eviction order, far from overflowing when counted on
        if n and not (aux.min() >= 1 and aux.max() < MAX_FREQUENCY):
            raise bad(f"frequencies must be in [1, 2**62), not {int(aux.min())}..{int(aux.max())}")
        if n > 1 and not (aux[1:] >= aux[:-1]).all():
            raise bad("frequencies are not in eviction order")
        return aux.astype(np.int64)
    # Otherwise a TinyLFUCache's state: n region bytes, then its own header and tables, which
    # TinyLFUCache._import_state checks in full (a ValueError there is a SnapshotError here;
    # another class drops the state and keeps the checked contents).
    if saved_by != "TinyLFUCache" or aux.dtype != np.int64 or aux.shape[0] <= n:
        raise bad("frequencies do not match the keys")
    return aux


def _check_ttl(bad, header, ttl, n):
    """Return the remaining times-to-live now (float64 array; inf: never expires), or None."""
    if ttl is None:
        return None
    if type(ttl) is not list or len(ttl) != n:
        raise bad("times-to-live must be a list with one number per key")
    if not all(_is_number(x) for x in ttl):
        raise bad("times-to-live must be numbers")
    arr = np.array(ttl, dtype=np.float64)
    if np.isnan(arr).any() or (arr == -math.inf).any():
        raise bad("a time-to-live is NaN or -inf")
    return arr - max(0.0, time.time() - float(header["created"]))


def _takes_ttl(cls):
    # TTLCache and its subclasses (a `ttl` property) take the default time-to-live as `ttl=`
    return hasattr(cls, "ttl")


def _size_keyword(cls):
    # lru-dict's LRU(size, callback) names its bound `size`
    from kvcache import LRU

    return "size" if issubclass(cls, LRU) else "maxsize"


def _plain_number(x):
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _fit_aux(cache, aux, n):
    """Drop policy state that `cache` cannot take (LFU frequencies vs a TinyLFU state)."""
    if aux is None:
        return None
    from kvcache import TinyLFUCache

    if isinstance(cache, TinyLFUCache) != (aux.shape[0] != n):
        return None
    return aux


def _default_ttl(cache, header, ttl, n):
    """Give `cache`'s default ttl, if it has one, to the entries of a cache that had none.

    They are then as if set at load time, as a TTLCache promises for every entry.  A file
    from a cache with a default ttl keeps its times, "never" included.
    """
    default = getattr(cache, "ttl", None)
    if default is None or header.get("ttl") is not None:
        return ttl
    seconds = default.total_seconds() if isinstance(default, datetime.timedelta) else float(default)
    ttl = np.full(n, math.inf) if ttl is None else ttl.copy()
    ttl[ttl == math.inf] = seconds
    return ttl


def _import(cache, path, header, keys, values, aux, ttl):
    ttl = _default_ttl(cache, header, ttl, len(keys))
    try:
        cache._import_state(keys, values, _fit_aux(cache, aux, len(keys)), ttl)
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"{os.fspath(path)}: snapshot does not fit this cache: {exc}") from exc


def load_into(cache, path, *, pickle_key=None):
    """Replace the contents of `cache` with the snapshot at `path`; return `cache`.

    Order and frequencies are restored (frequencies only into a cache that keeps
    them); a snapshot of another class fills any cache.  In a cache with a
    default ttl (TTLCache), the entries of a snapshot from a cache without one
    get that default, counted from the load, unless the file gives them a
    time-to-live.  Any defect in the file raises SnapshotError and leaves the
    cache untouched.  With `pickle_key`, only a file signed with that key is
    accepted.
    """
    pickle_key = _norm_key(pickle_key)
    header, payload = _read(path, pickle_key)
    keys, values, aux, ttl = _decode(path, header, payload, pickle_key)
    _import(cache, path, header, keys, values, aux, ttl)
    return cache


def load(cls, path, *, pickle_key=None, **kwargs):
    """Return a new `cls` cache holding the snapshot at `path`.

    ``maxsize`` defaults to the saved one, and for a TTLCache ``ttl`` too; other
    constructor arguments (getsizeof, on_evict, timer, TLRUCache's ttu, ...) are
    not saved and can be passed as keywords.  A snapshot of another class loads
    too: ``TTLCache.load`` of a file without a default ttl (saved by an LRUCache,
    say) needs ``ttl=`` and raises SnapshotError without it.  Any defect in the
    file raises SnapshotError.  With `pickle_key`, only a file signed with that
    key is accepted.
    """
    pickle_key = _norm_key(pickle_key)
    header, payload = _read(path, pickle_key)
    keys, values, aux, ttl = _decode(path, header, payload, pickle_key)
    given = set(kwargs)
    kwargs.setdefault(_size_keyword(cls), header["maxsize"])
    if _takes_ttl(cls) and "ttl" not in kwargs:
        if header.get("ttl") is None:
            raise SnapshotError(
                f"{os.fspath(path)}: this {header['class']} snapshot holds no default ttl; "
                f"pass ttl= to {cls.__name__}.load"
            )
        kwargs["ttl"] = header["ttl"]
    try:
        cache = cls(**kwargs)
    except TypeError as exc:
        raise TypeError(f"{cls.__name__}.load: {exc} (pass the constructor arguments a snapshot does not hold)") from exc
    except ValueError as exc:
        # The file is at fault when the caller's own arguments pass with harmless stand-ins
        # for the saved ones (maxsize and ttl are the only ones a snapshot holds).
        try:
            cls(**{k: (v if k in given else 1) for k, v in kwargs.items()})
        except ValueError:
            raise exc from None
        raise SnapshotError(f"{os.fspath(path)}: the saved constructor arguments are invalid: {exc}") from exc
    _import(cache, path, header, keys, values, aux, ttl)
    return cache


# Cache.save and Cache.load call this module; the engine imports nothing of ours, so the
# functions are handed to it here (kvcache/__init__ imports this module).
install_snapshots(sys.modules[__name__])
