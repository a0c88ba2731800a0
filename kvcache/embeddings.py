"""Embedding cache: wrap a batch text encoder so each distinct text is encoded once."""
import threading

import numpy

from ._vector import VectorCache, digest

__all__ = ["CachedEmbedder"]


class CachedEmbedder:
    """Wrap a batch encoder ``encode(list[str]) -> ndarray[n, dim]`` with a :class:`VectorCache`.

    Each call removes duplicate texts, looks them all up at once, encodes only the misses in a
    single ``encode`` call and returns the rows in input order, bit-identical to what ``encode``
    returned for each text (the encoder must return the cache's dtype, or one that converts to it
    without loss). A cached call equals an uncached one byte for byte only if the encoder gives a
    text the same bits whatever else is in its batch: :class:`kvcache.minilm.MiniLM` does; a
    batch that pads texts to its longest, or runs one matrix product over all of them, does not
    (a difference of about 1e-7). ``namespace`` (e.g. the model name) is part of every key, so encoders with
    different namespaces never share entries even in one cache. Keys are 128-bit
    :func:`kvcache.digest` values of the text's UTF-8 bytes, stable across processes.

    Thread-safety: calls may run from many threads; two threads missing the same text may both
    encode it (the results are equal), and the cache itself is always consistent.
    """

    def __init__(self, encode, cache, namespace):
        if not callable(encode):
            raise TypeError("encode must be callable")
        if not isinstance(cache, VectorCache):
            raise TypeError("cache must be a kvcache.VectorCache")
        if not isinstance(namespace, (str, bytes)):
            raise TypeError("namespace must be str or bytes (e.g. the model name)")
        self.encode_fn = encode
        self.cache = cache
        self.namespace = namespace
        self._lock = threading.Lock()
        self._calls = 0
        self._encoded = 0

    def keys(self, texts):
        """Return the (n, 2) uint64 cache keys of texts under this embedder's namespace."""
        return digest(texts, namespace=self.namespace)

    def encode(self, texts):
        """Return the embeddings of texts as an ``(n, dim)`` array, encoding only the misses."""
        if isinstance(texts, (str, bytes)):
            raise TypeError("encode() takes a list of texts; wrap a single text in a list")
        texts = list(texts)
        cache = self.cache
        first = {}
        inverse = numpy.fromiter((first.setdefault(t, len(first)) for t in texts),
                                 dtype=numpy.intp, count=len(texts))
        unique = list(first)
        keys = self.keys(unique)
        rows, found = cache.get_many(keys)
        miss = numpy.flatnonzero(~found)
        if miss.size:
            missing = [unique[i] for i in miss]
            encoded = numpy.asarray(self.encode_fn(missing))
            if encoded.shape != (len(missing), cache.dim):
                raise ValueError(f"encode returned shape {encoded.shape} for {len(missing)} "
                                 f"texts; expected ({len(missing)}, {cache.dim})")
            if not numpy.can_cast(encoded.dtype, cache.dtype, "safe"):
                raise TypeError(f"encode returned {encoded.dtype}, which a VectorCache of "
                                f"{cache.dtype} cannot hold exactly")
            rows[miss] = encoded
            cache.set_many(keys[miss], rows[miss])
        with self._lock:
            self._calls += 1
            self._encoded += int(miss.size)
        return rows[inverse]

    __call__ = encode

    def stats(self):
        """Return ``(calls, texts encoded)`` plus the cache's statistics as a dict."""
        with self._lock:
            out = {"calls": self._calls, "encoded": self._encoded}
        out.update(self.cache.stats()._asdict())
        return out

    def __repr__(self):
        return f"CachedEmbedder({self.encode_fn!r}, {self.cache!r}, namespace={self.namespace!r})"
