"""The numpy all-MiniLM-L6-v2 (kvcache.minilm): a text's bits do not depend on its batch, the
cache over it is exact, and it agrees with sentence-transformers where that is installed."""
import json
import math
import os

import numpy
import pytest

from kvcache import CachedEmbedder, VectorCache
from kvcache import minilm

TEXTS = [
    "The cat sits on the mat.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "The new movie is so great.",
    "A man is playing a guitar.",
    "The stock market fell sharply on Monday.",
    "",
    "x",
    "naïve café — 東京 🙂 Ünïcödé",
    "def f(x):\n    return x ** 2  # code",
    "Numbers: 3.14159, 1,000,000 and 42.",
    "[CLS] [SEP] [PAD] typed as text",
    "word " * 400,                          # truncated to max_seq_length tokens
    "Short.",
    "Another short one.",
]


@pytest.fixture(scope="module")
def model():
    try:
        m = minilm.load_minilm()
    except ImportError as e:
        if os.environ.get("KVCACHE_REQUIRE_SERVICES"):
            pytest.fail(f"{e} (KVCACHE_REQUIRE_SERVICES is set)")
        pytest.skip(str(e))
    try:
        import threadpoolctl
    except ImportError:
        yield m
        return
    # For speed only (small products: see MiniLM); every claim here holds at any thread count.
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        yield m


def bits(a):
    return numpy.ascontiguousarray(a).view(numpy.uint32)


def test_gelu_matches_the_erf_form():
    x = numpy.linspace(-8, 8, 200_001, dtype=numpy.float32)
    want = numpy.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.tolist()])
    got = minilm._gelu(x)
    assert got.dtype == numpy.float32
    assert numpy.abs(got - want).max() < 1e-6


def test_output_shape_dtype_and_unit_norm(model):
    out = model.encode(TEXTS)
    assert out.shape == (len(TEXTS), 384) and out.dtype == numpy.float32
    assert numpy.allclose(numpy.linalg.norm(out, axis=1), 1, atol=1e-6)
    assert max(len(ids) for ids in model.tokenize(TEXTS)) == model.max_seq_length == 256


def test_similar_sentences_are_closer(model):
    e = model.encode(TEXTS[1:7])
    sim = e @ e.T
    assert sim[0, 1] > 0.6 > sim[0, 2]          # eating food / eating bread vs a movie
    assert sim[2, 3] > 0.8 > sim[2, 4]          # two reviews of the movie vs a guitar


def test_a_text_gets_the_same_bits_in_any_batch(model):
    alone = numpy.stack([model.encode([t])[0] for t in TEXTS])
    assert numpy.array_equal(bits(model.encode(TEXTS)), bits(alone))
    rng = numpy.random.default_rng(0)
    for _ in range(5):
        order = rng.permutation(len(TEXTS))
        k = int(rng.integers(1, len(TEXTS)))
        picked = [TEXTS[i] for i in order[:k]] * 2           # duplicates too
        assert numpy.array_equal(bits(model.encode(picked)), bits(alone[list(order[:k]) * 2]))


def test_same_bits_in_any_batch_with_two_blas_threads_too(model):
    # The bits differ between thread counts, never between batches at one count.
    threadpoolctl = pytest.importorskip("threadpoolctl")
    texts = TEXTS[:5]
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        alone = numpy.stack([model.encode([t])[0] for t in texts])
        together = model.encode(texts[::-1] + texts[:3])[::-1]
    assert numpy.array_equal(bits(together[3:]), bits(alone))
    assert numpy.array_equal(bits(together[:3]), bits(alone[:3][::-1]))


def test_concurrent_calls_get_the_same_bits(model):
    import threading
    want = model.encode(TEXTS[:6])
    got, errors = [], []

    def work():
        try:
            for _ in range(3):
                got.append(model.encode(TEXTS[:6]))
        except Exception as e:                               # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 12
    assert all(numpy.array_equal(bits(g), bits(want)) for g in got)


def test_the_cache_returns_exactly_what_the_model_returns(model):
    rng = numpy.random.default_rng(1)
    pool = [f"Sentence number {i} about {w}." for i, w in
            enumerate(["rain", "sun", "trains", "tea", "maps", "ships", "clocks", "gardens"] * 4)]
    embedder = CachedEmbedder(model.encode, VectorCache(len(pool), model.dim), minilm.MODEL_NAME)
    served = 0
    for _ in range(6):
        batch = [pool[i] for i in rng.zipf(1.3, 12) % len(pool)]
        got, want = embedder(batch), model.encode(batch)
        assert numpy.array_equal(bits(got), bits(want))
        served += len(batch)
    assert embedder.stats()["encoded"] < served              # some rows came from the cache


def test_bad_input(model, tmp_path):
    with pytest.raises(TypeError, match="list of texts"):
        model.encode("one string")
    with pytest.raises(TypeError, match="str"):
        model.encode(["ok", b"bytes"])
    assert model.encode([]).shape == (0, 384)
    with pytest.raises(FileNotFoundError):
        minilm.load_minilm(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="not a BERT"):
        minilm.load_minilm(tmp_path)


def test_agrees_with_sentence_transformers(model):
    st = pytest.importorskip("sentence_transformers")
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    ref = st.SentenceTransformer(minilm.model_dir(), device="cpu")
    want = ref.encode(TEXTS, batch_size=len(TEXTS), convert_to_numpy=True)
    got = model.encode(TEXTS)
    assert numpy.abs(got - want).max() < 2e-6
    assert (got * want).sum(axis=1).min() > 1 - 1e-6
