# Checked by mypy --strict in tests/test_typing.py, never run: each reveal_type's expected output
# is in the "revealed:" comment ending its line (an Any there fails the test); each deliberate
# error carries its code in its ignore, which --strict (warn_unused_ignores) requires to be needed.
import threading

import kvcache
from kvcache import cached, cachedmethod, fifo_cache, lfu_cache, lru_cache, memoize, rr_cache, ttl_cache
from kvcache import keys


@lru_cache(maxsize=32)
def square(x: int) -> int:
    return x * x


@lru_cache
def bare(x: int) -> str:
    return str(x)


@kvcache.cache
def unbounded(x: int, *, scale: float = 1.0) -> float:
    return x * scale


@cached(kvcache.LRUCache(maxsize=10))
def via_cached(name: str) -> bytes:
    return name.encode()


@cached({}, lock=threading.Lock(), info=True)
def via_cached_info(name: str) -> int:
    return len(name)


@lfu_cache(maxsize=8)
def lfu(x: int) -> int:
    return x


@fifo_cache
def fifo(x: int) -> int:
    return x


@rr_cache(16)
def rr(x: int) -> int:
    return x


@ttl_cache(maxsize=8, ttl=1.5)
def ttl(x: int) -> int:
    return x


@memoize
def memo_bare(x: int) -> int:
    return x


@memoize(maxsize=64, policy="tinylfu", ttl=3.0)
def memo(x: int, y: str = "") -> list[str]:
    return [y] * x


@memoize()
async def fetch(url: str) -> bytes:
    return url.encode()


class Service:
    def __init__(self) -> None:
        self.store: kvcache.LRUCache[object, int] = kvcache.LRUCache(maxsize=4)

    @cachedmethod(lambda self: self.store)
    def lookup(self, key: str) -> int:
        return len(key)

    @cachedmethod(lambda self: self.store, info=True)
    def lookup_info(self, key: str) -> int:
        return len(key)

    @memoize
    def compute(self, n: int) -> float:
        return n / 2

    @lru_cache
    def method(self, n: int) -> str:
        return str(n)


s = Service()
reveal_type(square(3))  # revealed: int
reveal_type(square.cache_info().hits)  # revealed: int
reveal_type(square.cache_parameters())  # revealed: TypedDict(kvcache._memo._CacheParameters, {'maxsize': int | None, 'typed': bool})
reveal_type(bare(1))  # revealed: str
reveal_type(unbounded(2, scale=0.5))  # revealed: float
reveal_type(via_cached("a"))  # revealed: bytes
reveal_type(via_cached_info("a"))  # revealed: int
reveal_type(via_cached_info.cache_info())  # revealed: tuple[int, int, int | None, int, fallback=functools._CacheInfo]
reveal_type(lfu(1))  # revealed: int
reveal_type(fifo(1))  # revealed: int
reveal_type(rr(1))  # revealed: int
reveal_type(ttl.cache_parameters()["maxsize"])  # revealed: int | None
reveal_type(memo_bare(1))  # revealed: int
reveal_type(memo(2, "a"))  # revealed: list[str]
reveal_type(memo.cache_invalidate(2))  # revealed: bool
reveal_type(memo.stats().hits)  # revealed: int
reveal_type(s.lookup("k"))  # revealed: int
reveal_type(s.lookup_info.cache_info())  # revealed: tuple[int, int, int | None, int, fallback=functools._CacheInfo]
reveal_type(Service.lookup(s, "k"))  # revealed: int
reveal_type(s.compute(3))  # revealed: float
reveal_type(s.method(3))  # revealed: str

square("x")  # type: ignore[arg-type]
memo(2, 3)  # type: ignore[arg-type]
s.lookup(1)  # type: ignore[arg-type]
s.compute("x")  # type: ignore[arg-type]
via_cached.cache_info()  # type: ignore[attr-defined]
reveal_type(keys.hashkey(1, "a", b=2))  # revealed: tuple[typing.Hashable, ...]
reveal_type(keys.typedmethodkey(s, 1))  # revealed: tuple[typing.Hashable, ...]
keys.hashkey([1])  # type: ignore[arg-type]
keys.methodkey()  # type: ignore[call-arg]


async def main() -> None:
    reveal_type(await fetch("u"))  # revealed: bytes
