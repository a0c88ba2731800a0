"""Serve requests that share a system prompt, with and without prefix caching.

Run: python examples/llm_prefix_demo.py
"""
import numpy as np

from kvcache.llm import BlockPool, Decoder, PrefixCache


def block_manager_tour():
    # The block manager on its own: 16-token blocks, K/V for 2 layers x 4 heads x 32 dims.
    pool = BlockPool(num_blocks=64, block_size=16, layers=2, kv_heads=4, head_dim=32)
    cache = PrefixCache(pool, salt=b"my-model/v1")
    system = list(range(100, 148))  # 48 tokens = 3 full blocks

    n, hit = cache.match(system + [1, 2, 3])  # cold: nothing cached
    table = np.concatenate((hit, cache.allocate(4 - len(hit))))
    # ... a model would write K/V for tokens n.. into pool.keys(l)[table], pool.values(l)[table]
    cache.commit(system + [1, 2, 3], table)  # the 3 full blocks become shareable
    cache.release(table)  # they stay cached (evictable, LRU) until room is needed

    n, hit = cache.match(system + [7, 8, 9])  # another request, same system prompt
    print(f"second request: {n} of {len(system) + 3} prompt tokens served from cache, "
          f"blocks {hit.tolist()}")
    cache.release(hit)
    print(cache.stats())


def decoder_demo(n_requests=8):
    dec = Decoder(seed=0)
    rng = np.random.default_rng(0)
    system = rng.integers(0, dec.vocab_size, 512)
    prompts = [np.concatenate((system, rng.integers(0, dec.vocab_size, 32)))
               for _ in range(n_requests)]
    outputs = {}
    for mode in ("kv", "prefix"):
        ttfts = []
        for p in prompts:
            outputs.setdefault(mode, []).append(dec.generate(p, 16, mode))
            ttfts.append(dec.last_stats.ttft)
        print(f"{mode:6s}: time to first token {1e3 * np.mean(ttfts):7.2f} ms on average "
              f"(first request {1e3 * ttfts[0]:.2f} ms, last {1e3 * ttfts[-1]:.2f} ms)")
    assert outputs["kv"] == outputs["prefix"], "prefix caching must not change the output"
    print("same tokens in both modes; prefix cache:", dec.prefix_cache.stats())


if __name__ == "__main__":
    block_manager_tour()
    decoder_demo()
