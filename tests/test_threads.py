"""Many threads on one small cache: no crash, no lost structure, the bound holds."""
import random
import sys
import threading

import kvcache


def hammer(cache, seed, n, errors):
    rnd = random.Random(seed)
    try:
        for _ in range(n):
            k = rnd.randrange(64)
            r = rnd.random()
            if r < 0.35:
                cache.get(k)
            elif r < 0.7:
                cache[k] = k
            elif r < 0.8:
                cache.pop(k, None)
            elif r < 0.85:
                try:
                    cache.popitem()
                except KeyError:
                    pass
            elif r < 0.9:
                k in cache
                cache.peek(k)
            elif r < 0.95:
                try:
                    for key in cache:
                        cache.peek(key)
                except RuntimeError:
                    pass                    # changed size during iteration: expected under threads
            elif r < 0.97:
                cache.setdefault(k, 0)
            elif r < 0.99:
                cache.get_many([k, k + 1, k + 2])
            else:
                cache.resize(rnd.choice([8, 16, 32]))
    except Exception as exc:               # any other exception is a bug
        errors.append(exc)


def test_threads_hammer(cache_cls):
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        cache = cache_cls(32)
        errors = []
        threads = [threading.Thread(target=hammer, args=(cache, i, 100_000 if cache_cls is kvcache.LRUCache else 25_000, errors))
                   for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    cache._check()
    assert len(cache) <= cache.maxsize
    s = cache.stats()
    assert s.hits + s.misses > 0


class SlowEq:
    """A key whose __eq__ releases the GIL (other threads run in the middle of a lookup)."""

    def __init__(self, v):
        self.v = v

    def __hash__(self):
        return self.v % 4

    def __eq__(self, other):
        import time
        time.sleep(0)
        return isinstance(other, SlowEq) and other.v == self.v


def test_threads_with_gil_releasing_eq(cache_cls):
    cache = cache_cls(16)
    errors = []

    def work(seed):
        rnd = random.Random(seed)
        try:
            for _ in range(3000):
                k = SlowEq(rnd.randrange(24))
                if rnd.random() < 0.5:
                    cache[k] = k.v
                else:
                    v = cache.get(k)
                    assert v is None or v == k.v
                if rnd.random() < 0.05:
                    cache.pop(k, None)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    cache._check()
    assert len(cache) <= 16
    assert len({k.v for k in cache}) == len(cache)   # no key stored twice
