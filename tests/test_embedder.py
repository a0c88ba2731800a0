"""CachedEmbedder over a deterministic fake encoder that counts its calls."""
import numpy
import pytest

from kvcache import CachedEmbedder, VectorCache, digest
from kvcache import _vector

DIM = 8


class FakeEncoder:
    """Deterministic per-text vectors (seeded by the text's digest); records every call."""

    def __init__(self, dtype=numpy.float32, salt=0):
        self.calls = []
        self.dtype = dtype
        self.salt = salt

    def vector(self, text):
        seed = int(digest([text])[0, 1]) ^ self.salt
        return numpy.random.default_rng(seed).standard_normal(DIM).astype(self.dtype)

    def __call__(self, texts):
        self.calls.append(list(texts))
        if not texts:
            return numpy.empty((0, DIM), dtype=self.dtype)
        return numpy.stack([self.vector(t) for t in texts])


def make(maxsize=100, namespace="fake-model", **kw):
    enc = FakeEncoder(**kw)
    return enc, CachedEmbedder(enc, VectorCache(maxsize, DIM), namespace)


def test_dedupes_and_encodes_only_misses_in_one_call():
    enc, emb = make()
    out = emb(["a", "b", "a", "c", "b"])
    assert enc.calls == [["a", "b", "c"]]
    out2 = emb(["c", "d", "a", "d"])
    assert enc.calls[1:] == [["d"]]
    emb(["a", "b", "c", "d"])
    assert len(enc.calls) == 2          # all hits: encode is not called at all
    assert out.shape == (5, DIM) and out2.shape == (4, DIM)


def test_rows_in_input_order_and_bit_identical_to_encode():
    enc, emb = make()
    texts = ["x", "y", "x", "z", "naïve café", "", "y"]
    direct = FakeEncoder()(texts)
    for _ in range(3):                  # cold, warm, warm
        got = emb(texts)
        assert got.dtype == numpy.float32
        assert numpy.array_equal(got.view(numpy.uint32), direct.view(numpy.uint32))


def test_namespaces_never_share_entries():
    cache = VectorCache(100, DIM)
    a_enc, b_enc = FakeEncoder(salt=1), FakeEncoder(salt=2)
    a = CachedEmbedder(a_enc, cache, "model-a")
    b = CachedEmbedder(b_enc, cache, "model-b")
    va, vb = a(["same text"]), b(["same text"])
    assert len(a_enc.calls) == len(b_enc.calls) == 1 and len(cache) == 2
    assert not numpy.array_equal(va, vb)
    assert numpy.array_equal(a(["same text"]), va) and numpy.array_equal(b(["same text"]), vb)


def test_texts_colliding_on_64_bits_are_not_confused():
    previous = _vector._set_digest_truncation(True)   # every text gets 64-bit key 0
    try:
        enc, emb = make()
        keys = emb.keys(["first", "second", "third"])
        assert (keys[:, 0] == 0).all() and len(set(keys[:, 1].tolist())) == 3
        first = emb(["first", "second"])
        again = emb(["second", "third", "first"])
    finally:
        _vector._set_digest_truncation(previous)
    direct = FakeEncoder()
    assert numpy.array_equal(first, direct(["first", "second"]))
    assert numpy.array_equal(again, direct(["second", "third", "first"]))
    assert enc.calls == [["first", "second"], ["third"]]


def test_more_misses_than_the_cache_holds():
    enc, emb = make(maxsize=3)
    texts = [f"t{i}" for i in range(10)]
    assert numpy.array_equal(emb(texts), FakeEncoder()(texts))
    assert len(emb.cache) == 3
    assert numpy.array_equal(emb(texts[-3:]), FakeEncoder()(texts[-3:]))
    assert len(enc.calls) == 1


def test_encoder_errors_leave_the_cache_unchanged():
    cache = VectorCache(10, DIM)
    bad_shape = CachedEmbedder(lambda ts: numpy.zeros((len(ts), DIM + 1), numpy.float32),
                               cache, "m")
    with pytest.raises(ValueError, match="shape"):
        bad_shape(["a"])
    lossy = CachedEmbedder(lambda ts: numpy.zeros((len(ts), DIM), numpy.float64), cache, "m")
    with pytest.raises(TypeError, match="float64"):
        lossy(["a"])

    def boom(ts):
        raise RuntimeError("model down")
    with pytest.raises(RuntimeError):
        CachedEmbedder(boom, cache, "m")(["a"])
    assert len(cache) == 0


def test_lower_precision_encoder_output_is_exact():
    enc, emb = make(dtype=numpy.float16)
    got = emb(["a", "b"])
    assert numpy.array_equal(got, FakeEncoder(dtype=numpy.float16)(["a", "b"]).astype(numpy.float32))


def test_input_forms_and_stats():
    enc, emb = make()
    assert emb([]).shape == (0, DIM)
    assert enc.calls == []
    assert numpy.array_equal(emb(("a", "b")), emb.encode(iter(["a", "b"])))
    with pytest.raises(TypeError, match="list of texts"):
        emb("a single string")
    s = emb.stats()
    assert s["encoded"] == 2 and s["calls"] == 3 and s["hits"] == 2 and s["misses"] == 2


def test_constructor_checks():
    cache = VectorCache(4, DIM)
    with pytest.raises(TypeError):
        CachedEmbedder("not callable", cache, "m")
    with pytest.raises(TypeError):
        CachedEmbedder(FakeEncoder(), {}, "m")
    with pytest.raises(TypeError):
        CachedEmbedder(FakeEncoder(), cache, None)
