"""Warm-start snapshots: save a cache's contents, order and frequencies to a file.

File layout (all integers little-endian)::

    magic     8 bytes   b"KVCSNAP\\0"
    version   u16       format version (1)
    flags     u16       bit 0: checksum is an HMAC-SHA256 under the caller's key
    hlen      u32       length of the header
    header    msgpack   {"class", "module", "maxsize", "count", "created", "keys", "kvcache"}
    plen      u64       length of the payload
    payload   bytes     a kvcache.serialize frame of [keys, values, frequencies or None]
    checksum  32 bytes  SHA-256 (or HMAC-SHA256) of everything before it

Loading reads and checks the whole file (magic, version, lengths, checksum)
and decodes it before touching the cache; the cache is then replaced in one
step (``_import_state``), so a bad file raises :class:`SnapshotError` and
leaves the running cache as it was.  Loading never runs code: values are
msgpack, unless the snapshot was saved with ``pickle_key=`` and is loaded with
the same key, in which case pickled values are accepted only if signed.
"""

import hashlib
import hmac
import os
import struct
import tempfile
import time

import msgpack
import numpy as np

from kvcache.serialize import SerializationError, Serializer, decode_key, encode_key

__all__ = ["SnapshotError", "save", "load", "load_into", "read_header"]

MAGIC = b"KVCSNAP\x00"
VERSION = 1
_FLAG_HMAC = 0x01
_HEAD = struct.Struct("<8sHHI")
_PLEN = struct.Struct("<Q")
_SUM = 32


class SnapshotError(ValueError):
    """Raised for a snapshot file that is truncated, corrupt, foreign or of another version."""


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
    The file is created with mode 0600: it holds the cached data.
    """
    pickle_key = _norm_key(pickle_key)
    if compress_over == -1:
        compress_over = _default_compress_over()
    ser = Serializer(compress_over=compress_over, pickle_key=pickle_key)
    keys, values, aux, ttl = cache._export_state(ttl=True)
    # remaining times-to-live travel as seconds; load subtracts the time the file sat on disk
    ttl = None if not np.isfinite(ttl).any() else [float(x) for x in ttl]
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
    """Return (header dict, payload bytes) of a verified snapshot file."""
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
    if flags & _FLAG_HMAC:
        if pickle_key is None:
            raise SnapshotError(f"{path}: snapshot is signed; pass the pickle_key it was saved with")
        key = pickle_key
    else:
        key = None
    if not hmac.compare_digest(data[end:], _digest(key, data[:end])):
        raise SnapshotError(
            f"{path}: snapshot checksum mismatch (corrupt file"
            + (", or another pickle_key)" if key is not None else ")")
        )
    try:
        header = msgpack.unpackb(data[_HEAD.size : pos], raw=False)
    except Exception as exc:
        raise SnapshotError(f"{path}: corrupt snapshot header: {exc!r}") from None
    if not isinstance(header, dict) or not {"class", "maxsize", "count", "keys"} <= header.keys():
        raise SnapshotError(f"{path}: corrupt snapshot header")
    return header, data[pos + _PLEN.size : end]


def read_header(path, *, pickle_key=None):
    """Return the header of a verified snapshot (class, maxsize, count, created, ...)."""
    return _read(path, _norm_key(pickle_key))[0]


def _decode(path, header, payload, pickle_key):
    ser = Serializer(pickle_key=pickle_key)
    try:
        state = ser.loads(payload)
        if len(state) == 3:                 # written before remaining TTLs were saved
            state = list(state) + [None]
        enc_keys, values, aux, ttl = state
        if ttl is not None:
            ttl = np.asarray(ttl, dtype=np.float64)
            if ttl.shape != (len(enc_keys),):
                raise ValueError("time-to-live list does not match the keys")
            ttl = ttl - max(0.0, time.time() - float(header["created"]))
        if header["keys"] == "canonical":
            keys = [decode_key(k) for k in enc_keys]
        elif header["keys"] == "serializer":
            keys = list(enc_keys)
        else:
            raise SnapshotError(f"{path}: unknown key format {header['keys']!r}")
    except SnapshotError:
        raise
    except (SerializationError, TypeError, ValueError) as exc:
        raise SnapshotError(f"{path}: corrupt snapshot payload: {exc}") from None
    if len(keys) != header["count"] or len(values) != header["count"]:
        raise SnapshotError(f"{path}: snapshot holds {len(keys)} keys, header says {header['count']}")
    return keys, values, aux, ttl


def _takes_ttl(cls):
    # TTLCache and its subclasses (a `ttl` property) take the default time-to-live as `ttl=`
    return hasattr(cls, "ttl")


def _size_keyword(cls):
    # lru-dict's LRU(size, callback) names its bound `size`
    from kvcache import LRU

    return "size" if issubclass(cls, LRU) else "maxsize"


def _plain_number(x):
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def load_into(cache, path, *, pickle_key=None):
    """Replace the contents of `cache` with the snapshot at `path`; return `cache`.

    Order and frequencies are restored (frequencies only into a cache that keeps
    them).  On any error the cache is left untouched.
    """
    pickle_key = _norm_key(pickle_key)
    header, payload = _read(path, pickle_key)
    keys, values, aux, ttl = _decode(path, header, payload, pickle_key)
    try:
        cache._import_state(keys, values, aux, ttl)
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"{os.fspath(path)}: snapshot does not fit this cache: {exc}") from exc
    return cache


def load(cls, path, *, pickle_key=None, **kwargs):
    """Return a new `cls` cache holding the snapshot at `path`.

    ``maxsize`` defaults to the saved one; other constructor arguments
    (getsizeof, on_evict, ...) are not saved and can be passed as keywords.
    """
    pickle_key = _norm_key(pickle_key)
    header, payload = _read(path, pickle_key)
    keys, values, aux, ttl = _decode(path, header, payload, pickle_key)
    kwargs.setdefault(_size_keyword(cls), header["maxsize"])
    if header.get("ttl") is not None and _takes_ttl(cls):
        kwargs.setdefault("ttl", header["ttl"])
    cache = cls(**kwargs)
    try:
        cache._import_state(keys, values, aux, ttl)
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"{os.fspath(path)}: snapshot does not fit this cache: {exc}") from exc
    return cache
