"""Every public class, function and method shows its real signature in inspect and help().

A compiled class has no signature inspect can read from its code: it is written by hand (the
docstring's first line, or `__signature__` where a default is an object).  The expected
parameter lists below are copied from the `def` lines, so a hand-written signature that drifts
from its __init__ fails here.  Defaults are compared too; `MISSING` stands for a private
sentinel (`pop`'s "no default" marker).
"""

import ast
import inspect
import pydoc
import random
import time

import numpy as np
import pytest

import kvcache
from kvcache import embeddings, keys, llm, serialize, simulate, snapshot

redis_mod = pytest.importorskip("kvcache.redis")
memcached_mod = pytest.importorskip("kvcache.memcached")

CACHE_ARGS = "maxsize, getsizeof=None, *, on_evict=None, seed=None, capacity=None"

CLASSES = {
    kvcache.Cache: CACHE_ARGS,
    kvcache.FIFOCache: CACHE_ARGS,
    kvcache.LRUCache: CACHE_ARGS,
    kvcache.LFUCache: CACHE_ARGS,
    kvcache.TinyLFUCache: CACHE_ARGS,
    kvcache.RRCache: "maxsize, choice=random.choice, getsizeof=None, *, on_evict=None, seed=None, "
                     "capacity=None",
    kvcache.TTLCache: "maxsize, ttl, timer=time.monotonic, getsizeof=None, *, on_evict=None, "
                      "seed=None, capacity=None",
    kvcache.TLRUCache: "maxsize, ttu, timer=time.monotonic, getsizeof=None, *, on_evict=None, "
                       "seed=None, capacity=None",
    kvcache.VectorCache: "maxsize, dim, dtype=np.float32, policy='lru', *, seed=None",
    kvcache.LRU: "size, callback=None",
    kvcache.CacheStats: "hits, misses, evictions, currsize, maxsize",
    kvcache.CacheInfo: "hits, misses, maxsize, currsize",
    kvcache.CachedEmbedder: "encode, cache, namespace",
    redis_mod.TieredCache: "local, client, namespace, ttl=None, serializer=None, compress_over=None, "
                           "strict=False, *, lock_lease=10.0, lock_wait=30.0, failure_threshold=3, "
                           "backoff=0.05, max_backoff=5.0, max_value_size=None, encryption_key=None, "
                           "consistency='eventual', wait_replicas=0, wait_timeout=1.0",
    redis_mod.AsyncTieredCache: "local, client, namespace, ttl=None, serializer=None, compress_over=None, "
                                "strict=False, *, lock_lease=10.0, lock_wait=30.0, failure_threshold=3, "
                                "backoff=0.05, max_backoff=5.0, max_value_size=None, encryption_key=None, "
                                "consistency='eventual', wait_replicas=0, wait_timeout=1.0",
    memcached_mod.TieredCache: "local, client, namespace, *, consistency='eventual', max_stale=1.0, "
                               "encryption_key=None, ttl=None, serializer=None, compress_over=None, "
                               "strict=False, timeout=0.25, lock_lease=10.0, lock_wait=30.0, "
                               "failure_threshold=3, backoff=0.05, max_backoff=5.0, max_value_size=1047552",
    redis_mod.TierStats: "local_hits, remote_hits, misses, sets, deletes, errors, invalidations, "
                         "circuit, live, rejections, stream_error",
    llm.BlockPool: "num_blocks, block_size, layers, kv_heads, head_dim, dtype=np.float16",
    llm.PrefixCache: "pool, salt=b'', *, _digest_bits=128",
    llm.Decoder: "vocab_size=512, d_model=128, n_heads=4, n_layers=4, d_ff=512, block_size=16, "
                 "num_blocks=2048, max_seq_len=4096, seed=0",
    llm.GenerationStats: "mode, prompt_tokens, cached_tokens, new_tokens, ttft, seconds",
    llm.PrefixCacheStats: "queries, hit_blocks, hit_tokens, committed, evictions, cached, free, "
                          "evictable, in_use, num_blocks",
    serialize.Cipher: "keys",
    serialize.Serializer: "*, compress_over=None, compress_level=3, pickle_key=None, "
                          "max_size=None, _frame=False",
}

FUNCTIONS = {
    kvcache.digest: "items, namespace=None",
    kvcache.cache: "user_function, /",
    kvcache.cached: "cache, key=keys.hashkey, lock=None, condition=None, info=False",
    kvcache.cachedmethod: "cache, key=keys.methodkey, lock=None, condition=None, info=False",
    kvcache.lru_cache: "maxsize=128, typed=False",
    kvcache.fifo_cache: "maxsize=128, typed=False",
    kvcache.lfu_cache: "maxsize=128, typed=False",
    kvcache.rr_cache: "maxsize=128, choice=random.choice, typed=False",
    kvcache.ttl_cache: "maxsize=128, ttl=600, timer=time.monotonic, typed=False",
    kvcache.memoize: "maxsize=128, *, policy='lru', typed=False, key=None, single_flight=True, "
                     "ttl=None",
    keys.hashkey: "*args, **kwargs",
    keys.typedkey: "*args, **kwargs",
    keys.methodkey: "self, /, *args, **kwargs",
    keys.typedmethodkey: "self, /, *args, **kwargs",
    llm.load_gguf: "path=None, *, pool_blocks=None, block_size=16",
    snapshot.save: "cache, path, *, pickle_key=None, compress_over=-1",
    snapshot.load: "cls, path, *, pickle_key=None, **kwargs",
    snapshot.load_into: "cache, path, *, pickle_key=None",
    snapshot.read_header: "path, *, pickle_key=None",
    serialize.encode_key: "key",
    serialize.encode_keys: "keys, prefix=b''",
    serialize.decode_key: "data",
    simulate.opt: "keys, maxsize",
    simulate.replay: "keys, policy, maxsize, *, seed=None, progress=None",
    simulate.load_trace: "path",
    simulate.main: "argv=None",
}

CACHE_METHODS = {
    "__init__": "self, /, " + CACHE_ARGS,
    "get": "self, /, key, default=None",
    "peek": "self, key, default=None",
    "pop": "self, key, default=MISSING",
    "popitem": "self",
    "setdefault": "self, key, default=None",
    "update": "self, other=(), /, **kwargs",
    "clear": "self",
    "getsizeof": "value",
    "stats": "self",
    "resize": "self, maxsize",
    "get_many": "self, keys, default=None",
    "set_many": "self, keys, values",
    "keys": "self",
    "values": "self",
    "items": "self",
    "set": "self, key, value, ttl=None",
    "ttl_of": "self, key",
    "expire": "self, time=None",
    "save": "self, path, *, pickle_key=None",
    "load": "path, *, pickle_key=None, **kwargs",      # bound to the class on class access
}

METHODS = {
    (cls, name): spec
    for cls in (kvcache.Cache, kvcache.FIFOCache, kvcache.LRUCache, kvcache.LFUCache,
                kvcache.RRCache, kvcache.TTLCache, kvcache.TLRUCache, kvcache.TinyLFUCache)
    for name, spec in CACHE_METHODS.items()
    # these three take their own arguments: their __init__ is checked through the class
    if not (name == "__init__" and cls in (kvcache.RRCache, kvcache.TTLCache, kvcache.TLRUCache))
}
METHODS.update({
    (kvcache.LRU, "__init__"): "self, /, size, callback=None",
    (kvcache.LRU, "keys"): "self",
    (kvcache.LRU, "values"): "self",
    (kvcache.LRU, "items"): "self",
    (kvcache.LRU, "has_key"): "self, key",
    (kvcache.LRU, "peek_first_item"): "self",
    (kvcache.LRU, "peek_last_item"): "self",
    (kvcache.LRU, "get_size"): "self",
    (kvcache.LRU, "set_size"): "self, size",
    (kvcache.LRU, "set_callback"): "self, callback",
    (kvcache.LRU, "get_stats"): "self",
    (kvcache.LRU, "pop"): "self, key, default=MISSING",
    (kvcache.LRU, "setdefault"): "self, key, default=None",
    (kvcache.LRU, "popitem"): "self, least_recent=True",
    (kvcache.LRU, "clear"): "self",
    (kvcache.VectorCache, "get"): "self, key, default=None",
    (kvcache.VectorCache, "get_many"): "self, keys, out=None",
    (kvcache.VectorCache, "set_many"): "self, keys, rows",
    (kvcache.VectorCache, "clear"): "self",
    (kvcache.VectorCache, "stats"): "self",
    (kvcache.CachedEmbedder, "keys"): "self, texts",
    (kvcache.CachedEmbedder, "encode"): "self, texts",
    (kvcache.CachedEmbedder, "stats"): "self",
    (redis_mod.TieredCache, "set"): "self, key, value, ttl=MISSING",
    (redis_mod.TieredCache, "get_or_set"): "self, key, compute, ttl=MISSING",
    (redis_mod.TieredCache, "delete"): "self, key",
    (redis_mod.TieredCache, "wait_live"): "self, timeout=5.0",
    (redis_mod.TieredCache, "get_many"): "self, keys, default=None",
    (redis_mod.TieredCache, "set_many"): "self, keys, values, ttl=MISSING",
    (redis_mod.TieredCache, "delete_many"): "self, keys",
    (redis_mod.TieredCache, "from_url"): "url, local, namespace, *, timeout=0.25, cluster=False, "
                                         "client_kwargs=None, **kwargs",
    (redis_mod.AsyncTieredCache, "get"): "self, key, default=None",
    (redis_mod.AsyncTieredCache, "set"): "self, key, value, ttl=MISSING",
    (redis_mod.AsyncTieredCache, "get_or_set"): "self, key, compute, ttl=MISSING",
    (redis_mod.AsyncTieredCache, "delete"): "self, key",
    (redis_mod.AsyncTieredCache, "wait_live"): "self, timeout=5.0",
    (redis_mod.AsyncTieredCache, "get_many"): "self, keys, default=None",
    (redis_mod.AsyncTieredCache, "set_many"): "self, keys, values, ttl=MISSING",
    (redis_mod.AsyncTieredCache, "delete_many"): "self, keys",
    (redis_mod.AsyncTieredCache, "cached"): "self, ttl=MISSING, key=None",
    (redis_mod.AsyncTieredCache, "from_url"): "url, local, namespace, *, timeout=0.25, cluster=False, "
                                              "client_kwargs=None, **kwargs",
    (llm.PrefixCache, "match"): "self, tokens",
    (llm.PrefixCache, "commit"): "self, tokens, block_ids",
    (llm.Decoder, "generate"): "self, prompt_ids, max_new_tokens, mode='prefix', *, "
                               "return_logits=False",
    (serialize.Serializer, "dumps"): "self, obj",
    (serialize.Serializer, "loads"): "self, data",
})

MISSING = object()
NAMESPACE = {"random": random, "time": time, "np": np, "keys": keys, "MISSING": MISSING}


def expected_signature(spec):
    """Return the Signature of `def f(<spec>)`, its defaults evaluated in NAMESPACE."""
    tree = ast.parse(f"def f({spec}): pass")
    code = compile(tree, "<spec>", "exec")
    ns = dict(NAMESPACE)
    exec(code, ns)
    return inspect.signature(ns["f"])


def check(obj, spec, name):
    actual = inspect.signature(obj)
    expected = expected_signature(spec)
    assert [(p.name, p.kind) for p in actual.parameters.values()] == \
        [(p.name, p.kind) for p in expected.parameters.values()], (name, str(actual))
    for p in expected.parameters.values():
        got = actual.parameters[p.name].default
        if p.default is MISSING:
            assert type(got) is object, (name, p.name, got)
        else:
            assert got == p.default, (name, p.name, got)
    # help() shows what inspect found, not `(*args, **kwargs)` or nothing
    text = pydoc.render_doc(obj, renderer=pydoc.plaintext)
    # 3.13's pydoc wraps a long signature over several lines: compare without layout
    flat = "".join(text.replace(" |", " ").split())
    assert "".join(str(actual).split()) in flat, (name, str(actual))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__qualname__)
def test_class_signature(cls):
    check(cls, CLASSES[cls], cls.__qualname__)


@pytest.mark.parametrize("func", FUNCTIONS, ids=lambda f: f.__qualname__)
def test_function_signature(func):
    check(func, FUNCTIONS[func], func.__qualname__)


@pytest.mark.parametrize("key", METHODS, ids=lambda k: f"{k[0].__name__}.{k[1]}")
def test_method_signature(key):
    cls, name = key
    check(getattr(cls, name), METHODS[key], f"{cls.__name__}.{name}")


def test_every_public_name_is_covered():
    # a new public callable must get an expected signature here (exceptions excepted: their
    # constructors are the built-in ones)
    covered = set(CLASSES) | set(FUNCTIONS)
    for module in (kvcache, redis_mod, memcached_mod, llm, keys, snapshot, serialize, simulate, embeddings):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj) or not callable(obj):
                continue
            if isinstance(obj, type) and issubclass(obj, BaseException):
                continue
            assert obj in covered, f"{module.__name__}.{name}"


def test_python_subclass_gets_its_own_signature():
    # the hand-written class signature is inherited only by subclasses that keep __init__
    class Kept(kvcache.RRCache):
        pass

    class Own(kvcache.RRCache):
        def __init__(self, size, flag=False):
            super().__init__(size)

    class OwnLRU(kvcache.LRUCache):
        def __init__(self, size):
            super().__init__(size)

    assert inspect.signature(Kept) == inspect.signature(kvcache.RRCache)
    assert str(inspect.signature(Own)) == "(size, flag=False)"
    assert str(inspect.signature(OwnLRU)) == "(size)"
    assert str(inspect.signature(type("Sub", (kvcache.LRUCache,), {}))) == f"({CACHE_ARGS})"


def test_instance_has_no_signature_attribute():
    # __signature__ describes the constructor; a cache itself is not callable
    assert not hasattr(kvcache.RRCache(2), "__signature__")
    assert not hasattr(kvcache.TTLCache(2, 1), "__signature__")


def test_class_docstring_hides_the_signature_line():
    doc = kvcache.LRUCache.__doc__
    assert doc.startswith("Least Recently Used (LRU) cache.")
    assert "--" not in doc.splitlines()[:2]


def f(a, b=2, *, c=3):
    """Add nothing."""
    return a


async def af(a, b=2):
    return a


DECORATED = {
    "lru_cache": lambda: kvcache.lru_cache(f),
    "lru_cache(maxsize)": lambda: kvcache.lru_cache(maxsize=4)(f),
    "cache": lambda: kvcache.cache(f),
    "fifo_cache": lambda: kvcache.fifo_cache()(f),
    "lfu_cache": lambda: kvcache.lfu_cache()(f),
    "rr_cache": lambda: kvcache.rr_cache()(f),
    "ttl_cache": lambda: kvcache.ttl_cache()(f),
    "cached": lambda: kvcache.cached({})(f),
    "cached(info)": lambda: kvcache.cached(kvcache.LRUCache(4), info=True)(f),
    "memoize": lambda: kvcache.memoize(f),
    "memoize(ttl)": lambda: kvcache.memoize(maxsize=4, ttl=5)(f),
    "memoize(tinylfu)": lambda: kvcache.memoize(maxsize=4, policy="tinylfu")(f),
}


@pytest.mark.parametrize("name", DECORATED)
def test_decorated_function_keeps_its_signature(name):
    wrapper = DECORATED[name]()
    assert inspect.signature(wrapper) == inspect.signature(f)
    assert wrapper.__wrapped__ is f
    assert wrapper.__doc__ == f.__doc__
    assert "(a, b=2, *, c=3)" in pydoc.render_doc(wrapper, renderer=pydoc.plaintext)


def test_decorated_coroutine_keeps_its_signature():
    assert inspect.signature(kvcache.memoize(af)) == inspect.signature(af)


class Host:
    def m(self, x, y=1):
        return x

    cm = kvcache.cachedmethod(lambda self: {})(m)
    cm_info = kvcache.cachedmethod(lambda self: {}, info=True)(m)
    memo = kvcache.memoize(m)
    memo_ttl = kvcache.memoize(maxsize=4, ttl=5)(m)
    lru = kvcache.lru_cache(m)


@pytest.mark.parametrize("attr", ["cm", "cm_info", "memo", "memo_ttl", "lru"])
def test_decorated_method_signature(attr):
    # through the class: the function's own; through an instance: without self, as a bound method
    assert inspect.signature(getattr(Host, attr)) == inspect.signature(Host.m)
    bound = getattr(Host(), attr)
    assert str(inspect.signature(bound)) == "(x, y=1)"
    assert bound(3) == 3


def test_bound_method_of_variadic_function():
    # inspect's own rule for bound methods: a leading *args is kept
    class H:
        @kvcache.memoize
        def v(*args):
            return args

        @kvcache.cachedmethod(lambda self: {})
        def w(*args):
            return len(args)

    assert str(inspect.signature(H().v)) == "(*args)"
    assert str(inspect.signature(H().w)) == "(*args)"
