"""Memoizing decorators.

Drop-ins for cachetools (`cached`, `cachedmethod`, `lfu_cache`, `fifo_cache`,
`rr_cache`), for functools (`lru_cache`, `cache`) and for lru-dict (`LRU`),
plus kvcache's own `memoize` with single-flight and coroutine support.
"""

import asyncio
import functools
import inspect
import math
import random
import threading
import time
import types
import weakref
from functools import _CacheInfo

# cache_info()'s type: functools' named tuple (hits, misses, maxsize, currsize), under the name
# cachetools exports it by
CacheInfo = _CacheInfo

_MISSING = object()

from . import keys
from ._core import Cache, CacheStats, FIFOCache, LFUCache, LRUCache, RRCache
from ._expiry import TTLCache, enable_default_ttl
from ._memo import (
    LRU,
    MEMO_ATTR,
    CachedBase,
    CachedMethodBound,
    CachedMethodDescriptorBase,
    MemoBase,
    install_fast_call,
    lru_cache_wrapper,
    register_plain_keyfunc,
    register_plain_methodkey,
)
from ._tinylfu import TinyLFUCache

__all__ = (
    "LRU",
    "CacheInfo",
    "cache",
    "cached",
    "cachedmethod",
    "fifo_cache",
    "lfu_cache",
    "lru_cache",
    "memoize",
    "rr_cache",
    "ttl_cache",
)


def _make_info(cache, hits, misses):
    # cachetools reports maxsize/currsize for its Cache classes and
    # (None, len) for any other mapping; duck typing covers both kvcache's
    # and cachetools' classes.
    try:
        return _CacheInfo(hits, misses, cache.maxsize, cache.currsize)
    except AttributeError:
        return _CacheInfo(hits, misses, None, len(cache))


# ---------------------------------------------------------------------------
# cached: cachetools.cached, one wrapper class per (lock, condition, info)
# combination so that the call path carries no branches.


class _CachedBase:
    def __init__(self, func, cache, key, lock=None, cond=None):
        # Copy first, so func.__dict__ cannot override the wrapper's state
        # when decorators are stacked.
        functools.update_wrapper(self, func)
        self.cache = cache
        self.cache_key = key
        self.cache_lock = lock
        self.cache_condition = cond
        self._func = func

    # Bind, copy and pickle like functools.lru_cache's C wrapper.
    def __get__(self, obj, objtype=None):
        return self if obj is None else types.MethodType(self, obj)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return self.__qualname__

    def __repr__(self):
        return f"<cached {self.__wrapped__!r}>"


class _Cached(CachedBase, _CachedBase):
    # The call path (key, lookup, call, store) is compiled: _core._cached_tp_call.  With the
    # default key and no keyword arguments the key is the argument tuple itself, which
    # equals (and hashes like) hashkey(*args), as cachetools 8's keys are plain tuples.
    def cache_clear(self):
        self.cache.clear()


register_plain_keyfunc(keys.hashkey)
install_fast_call(_Cached)


class _CachedLocked(_CachedBase):
    def __call__(self, /, *args, **kwargs):
        cache = self.cache
        key = self.cache_key(*args, **kwargs)
        lock = self.cache_lock
        with lock:
            try:
                return cache[key]
            except KeyError:
                pass
        val = self._func(*args, **kwargs)
        with lock:
            try:
                # Another thread may have stored a value meanwhile: keep it.
                return cache.setdefault(key, val)
            except ValueError:
                return val

    def cache_clear(self):
        with self.cache_lock:
            self.cache.clear()


class _CachedCond(_CachedBase):
    def __init__(self, *args):
        _CachedBase.__init__(self, *args)
        self._pending = set()

    def __call__(self, /, *args, **kwargs):
        cache = self.cache
        key = self.cache_key(*args, **kwargs)
        lock = self.cache_lock
        cond = self.cache_condition
        pending = self._pending
        with lock:
            while key in pending:
                cond.wait()
            try:
                return cache[key]
            except KeyError:
                pending.add(key)
        try:
            val = self._func(*args, **kwargs)
            with lock:
                try:
                    cache[key] = val
                except ValueError:
                    pass
                return val
        finally:
            with lock:
                pending.remove(key)
                cond.notify_all()

    def cache_clear(self):
        with self.cache_lock:
            self.cache.clear()


class _CachedInfo(_CachedBase):
    def __init__(self, *args):
        _CachedBase.__init__(self, *args)
        self._hits = self._misses = 0

    def __call__(self, /, *args, **kwargs):
        cache = self.cache
        key = self.cache_key(*args, **kwargs)
        try:
            result = cache[key]
            self._hits += 1
            return result
        except KeyError:
            self._misses += 1
        val = self._func(*args, **kwargs)
        try:
            cache[key] = val
        except ValueError:
            pass
        return val

    def cache_clear(self):
        self.cache.clear()
        self._hits = self._misses = 0

    def cache_info(self):
        return _make_info(self.cache, self._hits, self._misses)


class _CachedLockedInfo(_CachedBase):
    def __init__(self, *args):
        _CachedBase.__init__(self, *args)
        self._hits = self._misses = 0

    def __call__(self, /, *args, **kwargs):
        cache = self.cache
        key = self.cache_key(*args, **kwargs)
        lock = self.cache_lock
        with lock:
            try:
                result = cache[key]
                self._hits += 1
                return result
            except KeyError:
                self._misses += 1
        val = self._func(*args, **kwargs)
        with lock:
            try:
                return cache.setdefault(key, val)
            except ValueError:
                return val

    def cache_clear(self):
        with self.cache_lock:
            self.cache.clear()
            self._hits = self._misses = 0

    def cache_info(self):
        with self.cache_lock:
            return _make_info(self.cache, self._hits, self._misses)


class _CachedCondInfo(_CachedBase):
    def __init__(self, *args):
        _CachedBase.__init__(self, *args)
        self._hits = self._misses = 0
        self._pending = set()

    def __call__(self, /, *args, **kwargs):
        cache = self.cache
        key = self.cache_key(*args, **kwargs)
        lock = self.cache_lock
        cond = self.cache_condition
        pending = self._pending
        with lock:
            while key in pending:
                cond.wait()
            try:
                result = cache[key]
                self._hits += 1
                return result
            except KeyError:
                pending.add(key)
                self._misses += 1
        try:
            val = self._func(*args, **kwargs)
            with lock:
                try:
                    cache[key] = val
                except ValueError:
                    pass
                return val
        finally:
            with lock:
                pending.remove(key)
                cond.notify_all()

    def cache_clear(self):
        with self.cache_lock:
            self.cache.clear()
            self._hits = self._misses = 0

    def cache_info(self):
        with self.cache_lock:
            return _make_info(self.cache, self._hits, self._misses)


def cached(cache, key=keys.hashkey, lock=None, condition=None, info=False):
    """Decorate a function to memoize its results in `cache`.

    `cache` is any mutable mapping, a plain dict included.  `lock` guards
    the cache (the function itself runs unlocked); `condition` (a
    `threading.Condition`) also makes concurrent callers of a missing key
    wait for the first one's result.  `info=True` adds `cache_info()`.
    """
    if cache is None:
        raise TypeError("cache must not be None")

    def decorator(func):
        if condition is not None:
            cls = _CachedCondInfo if info else _CachedCond
            return cls(func, cache, key, lock if lock is not None else condition, condition)
        if lock is not None:
            cls = _CachedLockedInfo if info else _CachedLocked
            return cls(func, cache, key, lock)
        cls = _CachedInfo if info else _Cached
        return cls(func, cache, key)

    return decorator


# ---------------------------------------------------------------------------
# cachedmethod: cachetools 8's descriptor.
#
# The first access `obj.method` stores a bound wrapper in obj.__dict__ under the method's
# name, so later accesses find it there without calling the descriptor (as for
# functools.cached_property).  The wrapper refers back to the instance: a reference cycle
# the garbage collector breaks, as in cachetools; the caches keep no reference to it.  A
# descriptor reached otherwise (through super(), or overridden in a subclass) keeps its
# wrappers in obj.__dict__[_WRAPPERS_ATTR], keyed by descriptor.


class _MethodState:
    """Hit counts and keys being computed of one bound wrapper with a lock, condition or info."""

    __slots__ = ("hits", "misses", "pending")

    def __init__(self):
        self.hits = self.misses = 0
        self.pending = set()


_WRAPPERS_ATTR = "__kvcache_cachedmethods"


def _bind(desc, obj):
    # the unpickler's and copier's way back to a wrapper: through the descriptor, so a copy
    # of an instance holds the same wrapper under the name as its attribute returns
    return desc.__get__(obj, type(obj))


class _BoundCachedMethod(CachedMethodBound):
    """A `@cachedmethod` bound to an instance: call it, or reach its cache."""

    # __self__ and _desc are the compiled base's; so is the call path (_core._cm_call)
    __slots__ = ()

    @property
    def cache(self):
        return self._desc._cache(self.__self__)

    @property
    def cache_lock(self):
        # with only a condition, the condition is the lock (as in cachetools)
        desc = self._desc
        lock = desc._lock if desc._lock is not None else desc._cond
        return None if lock is None else lock(self.__self__)

    @property
    def cache_condition(self):
        cond = self._desc._cond
        return None if cond is None else cond(self.__self__)

    @property
    def cache_key(self):
        return functools.partial(self._desc._key, self.__self__)

    @property
    def __func__(self):
        return self._desc.__wrapped__

    @property
    def __signature__(self):
        # a bound method's: without it inspect follows __wrapped__ and shows the instance's
        # parameter too.  AttributeError (not ValueError) lets inspect try its other ways.
        try:
            return inspect.signature(types.MethodType(self.__func__, self.__self__))
        except (TypeError, ValueError):
            raise AttributeError("__signature__") from None

    @property
    def __doc__(self):
        return self._desc.__doc__

    @property
    def __module__(self):
        return self._desc.__module__

    def __getattr__(self, name):
        # __name__, __doc__, __wrapped__ and friends, as for a bound method
        return getattr(self._desc, name)

    def __eq__(self, other):
        if not isinstance(other, _BoundCachedMethod):
            return NotImplemented
        return self.__self__ is other.__self__ and self._desc is other._desc

    def __hash__(self):
        return hash((id(self.__self__), self._desc))

    def __reduce__(self):
        # hit counts restart in a copy, as in cachetools
        return (_bind, (self._desc, self.__self__))

    def __repr__(self):
        return f"<cachedmethod {self._desc.__wrapped__!r} of {object.__repr__(self.__self__)}>"

    def cache_clear(self):
        obj = self.__self__
        desc = self._desc
        cache = desc._cache(obj)
        lock = desc._lock if desc._lock is not None else desc._cond
        if lock is None:
            cache.clear()
        else:
            with lock(obj):
                cache.clear()
                if desc._info:
                    self._state.hits = self._state.misses = 0
                return
        if desc._info:
            self._state.hits = self._state.misses = 0


class _BoundCachedMethodInfo(_BoundCachedMethod):
    __slots__ = ()
    # a class body without a docstring sets __doc__ = None, which would hide the method's
    __doc__ = _BoundCachedMethod.__dict__["__doc__"]

    def cache_info(self):
        obj = self.__self__
        desc = self._desc
        state = self._state
        lock = desc._lock if desc._lock is not None else desc._cond
        if lock is None:
            return _make_info(desc._cache(obj), state.hits, state.misses)
        with lock(obj):
            return _make_info(desc._cache(obj), state.hits, state.misses)


register_plain_methodkey(keys.methodkey)
install_fast_call(_BoundCachedMethod)
install_fast_call(_BoundCachedMethodInfo)


class _UnboundCachedMethod:
    """What class access to a `@cachedmethod` returns: call it with the instance first."""

    def __init__(self, desc):
        functools.update_wrapper(self, desc.__wrapped__)
        self._desc = desc
        self._receiver = None

    def __reduce__(self):
        # copy, deepcopy and pickle find it again through its class, as cachetools' does
        return (getattr, (self._desc._owner, self._desc._attrname))

    def __repr__(self):
        return f"<cachedmethod {self.__wrapped__!r}>"

    def __get__(self, obj, objtype=None):
        return self if obj is None else self._desc.__get__(obj)

    def __call__(self, /, *args, **kwargs):
        if args:
            obj, *args = args
        else:
            obj = self._pop_receiver(kwargs)
        return self._desc.__get__(obj)(*args, **kwargs)

    def _pop_receiver(self, kwargs):
        if self._receiver is None:
            self._receiver = ""
            try:
                param = next(iter(inspect.signature(self).parameters.values()))
            except (ValueError, StopIteration):
                pass
            else:
                if param.kind is param.POSITIONAL_OR_KEYWORD:
                    self._receiver = param.name
        try:
            return kwargs.pop(self._receiver)
        except KeyError:
            raise TypeError(
                "Cannot call @cachedmethod through the class without an instance"
            ) from None


class _CachedMethodDescriptor(CachedMethodDescriptorBase):
    # the fields and the plain call path are compiled: _memo.CachedMethodDescriptorBase
    def __init__(self, method, cache, key, lock, cond, info):
        CachedMethodDescriptorBase.__init__(self, type(self)._get_slow, type(self)._call)
        functools.update_wrapper(self, method)
        self._method = method
        self._cache = cache
        self._key = key
        self._lock = lock
        self._cond = cond
        self._info = info
        self._owner = None
        self._attrname = None
        self._unbound = None
        self._bound = _BoundCachedMethodInfo if info else _BoundCachedMethod
        self._plain = lock is None and cond is None and not info
        self._state_type = None if self._plain else _MethodState

    def __set_name__(self, owner, name):
        if self._attrname is None:
            self._owner = owner
            self._attrname = name
        elif name != self._attrname:
            raise TypeError(
                "Cannot assign the same descriptor to two different names "
                f"({self._attrname!r} and {name!r})."
            )

    def _get_slow(self, obj):
        # cachetools 8's __get__ (the compiled base takes its first branch's common case)
        attrname = self._attrname
        if attrname is None:
            if isinstance(obj, type):
                # Before 3.13, @classmethod calls __get__(cls, type(cls)).
                self.__call__()
            raise TypeError(
                "Cannot use descriptor instance without calling __set_name__ on it"
            )
        if obj is None:
            if self._unbound is None:
                self._unbound = _UnboundCachedMethod(self)
            return self._unbound
        for cls in type(obj).__mro__:
            if attrname in cls.__dict__:
                found = cls.__dict__[attrname]
                break
        else:
            found = None            # removed from the class after __set_name__
        if found is self:
            # setdefault: of two threads' first accesses, the first wrapper stored wins
            try:
                return obj.__dict__.setdefault(attrname, self._bind(obj))
            except (AttributeError, TypeError) as e:
                self._instance_dict_error(obj, e)
        # through super(), or shadowed: neither reuse nor replace what the name holds
        try:
            wrappers = obj.__dict__.setdefault(_WRAPPERS_ATTR, {})
        except (AttributeError, TypeError) as e:
            self._instance_dict_error(obj, e)
        wrapper = wrappers.get(self)
        if wrapper is None:
            wrapper = wrappers.setdefault(self, self._bind(obj))
        return wrapper

    def _instance_dict_error(self, obj, error):
        if isinstance(error, AttributeError):
            # no __dict__ (__slots__), or one without setdefault (a class's mapping proxy)
            msg = (f"No '__dict__' attribute on {type(obj).__name__!r} "
                   f"instance to cache {self._attrname!r}")
        else:
            msg = (f"The '__dict__' attribute on {type(obj).__name__!r} "
                   f"instance does not support item assignment for "
                   f"caching {self._attrname!r}")
        raise TypeError(msg) from None

    def __reduce__(self):
        return (_lookup_descriptor, (self._owner, self._attrname))

    def __call__(self, /, *args, **kwargs):
        raise TypeError(
            "Cannot call @cachedmethod descriptor directly: @cachedmethod must "
            "be the outermost decorator, and decorating class methods, static "
            "methods or properties is not supported"
        )

    def _call(self, bound, args, kwargs):
        obj = bound.__self__
        state = bound._state
        cache = self._cache(obj)
        key = self._key(obj, *args, **kwargs)
        method = self._method
        cond = self._cond
        if cond is not None:
            cond = cond(obj)
            lock = self._lock(obj) if self._lock is not None else cond
            pending = state.pending
            with lock:
                while key in pending:
                    cond.wait()
                try:
                    result = cache[key]
                    state.hits += 1
                    return result
                except KeyError:
                    pending.add(key)
                    state.misses += 1
            try:
                val = method(obj, *args, **kwargs)
                with lock:
                    try:
                        cache[key] = val
                    except ValueError:
                        pass
                    return val
            finally:
                with lock:
                    pending.remove(key)
                    cond.notify_all()
        if self._lock is not None:
            lock = self._lock(obj)
            with lock:
                try:
                    result = cache[key]
                    if self._info:
                        state.hits += 1
                    return result
                except KeyError:
                    if self._info:
                        state.misses += 1
            val = method(obj, *args, **kwargs)
            with lock:
                try:
                    return cache.setdefault(key, val)
                except ValueError:
                    return val
        try:
            result = cache[key]
            if self._info:
                state.hits += 1
            return result
        except KeyError:
            if self._info:
                state.misses += 1
        val = method(obj, *args, **kwargs)
        try:
            cache[key] = val
        except ValueError:
            pass
        return val


def _lookup_descriptor(owner, name):
    return owner.__dict__[name]


def cachedmethod(cache, key=keys.methodkey, lock=None, condition=None, info=False):
    """Decorate a method to memoize its results in the cache `cache(self)` returns.

    `cache`, `lock` and `condition` are callables taking the instance, so
    each instance may have its own cache.  As in cachetools 8, the first
    access stores the bound method in the instance's `__dict__` under the
    method's name (a class with `__slots__` and no `__dict__` raises
    TypeError); it refers back to the instance, a cycle the garbage
    collector frees.  `@cachedmethod` must be the outermost decorator of
    a method defined in a class body.
    """
    if not callable(cache):
        raise TypeError("cache must be callable")

    def decorator(method):
        return _CachedMethodDescriptor(method, cache, key, lock, condition, info)

    return decorator


# ---------------------------------------------------------------------------
# functools.lru_cache and cache (compiled call path in _memo.pyx)


def lru_cache(maxsize=128, typed=False):
    """Decorate a function with a bounded LRU memoizing wrapper, as functools does.

    `maxsize=None` caches without bound, `maxsize=0` (or negative) does not
    cache; `typed=True` keeps `f(1)` and `f(1.0)` apart.  The wrapper has
    `cache_info()`, `cache_clear()` and `cache_parameters()`.  Concurrent
    misses on one key each call the function, exactly as functools does.
    """
    if isinstance(maxsize, int):
        if maxsize < 0:
            maxsize = 0
    elif callable(maxsize) and isinstance(typed, bool):
        user_function, maxsize = maxsize, 128
        return _make_lru_wrapper(user_function, maxsize, typed)
    elif maxsize is not None:
        raise TypeError("Expected first argument to be an integer, a callable, or None")

    def decorating_function(user_function):
        return _make_lru_wrapper(user_function, maxsize, typed)

    return decorating_function


def _make_lru_wrapper(user_function, maxsize, typed):
    wrapper = lru_cache_wrapper(user_function, maxsize, typed, _CacheInfo)
    wrapper.cache_parameters = lambda: {"maxsize": maxsize, "typed": typed}
    return functools.update_wrapper(wrapper, user_function)


def cache(user_function, /):
    """Decorate a function with an unbounded memoizing wrapper (functools.cache)."""
    return lru_cache(maxsize=None)(user_function)


# ---------------------------------------------------------------------------
# cachetools.func: lfu_cache, fifo_cache, rr_cache


def _func_cache(cache, maxsize, typed):
    def decorator(func):
        # Thread-safe like functools; the condition also prevents stampedes.
        key = keys.typedkey if typed else keys.hashkey
        wrapper = cached(cache=cache, key=key, condition=threading.Condition(), info=True)(func)
        wrapper.cache_parameters = lambda: {"maxsize": maxsize, "typed": typed}
        return wrapper

    return decorator


def lfu_cache(maxsize=128, typed=False):
    """Decorate a function with an LFU memoizing wrapper, as cachetools.func does."""
    if maxsize is None:
        return _func_cache({}, None, typed)
    if callable(maxsize):
        return _func_cache(LFUCache(128), 128, typed)(maxsize)
    return _func_cache(LFUCache(maxsize), maxsize, typed)


def fifo_cache(maxsize=128, typed=False):
    """Decorate a function with a FIFO memoizing wrapper, as cachetools.func does."""
    if maxsize is None:
        return _func_cache({}, None, typed)
    if callable(maxsize):
        return _func_cache(FIFOCache(128), 128, typed)(maxsize)
    return _func_cache(FIFOCache(maxsize), maxsize, typed)


def rr_cache(maxsize=128, choice=random.choice, typed=False):
    """Decorate a function with a random-replacement memoizing wrapper, as cachetools.func does."""
    if maxsize is None:
        return _func_cache({}, None, typed)
    if callable(maxsize):
        return _func_cache(RRCache(128, choice), 128, typed)(maxsize)
    return _func_cache(RRCache(maxsize, choice), maxsize, typed)


class _UnboundTTLCache(TTLCache):
    """TTLCache without a size bound whose `maxsize` reads None (as cachetools.func's)."""

    def __init__(self, ttl, timer):
        TTLCache.__init__(self, math.inf, ttl, timer)

    @property
    def maxsize(self):
        return None


def ttl_cache(maxsize=128, ttl=600, timer=time.monotonic, typed=False):
    """Decorate a function with an LRU memoizing wrapper whose results expire after `ttl` seconds.

    As `cachetools.func.ttl_cache`: `maxsize=None` is unbounded, `@ttl_cache` alone uses the
    defaults; the wrapper has `cache_info()`, `cache_clear()` and `cache_parameters()`.
    """
    if maxsize is None:
        return _func_cache(_UnboundTTLCache(ttl, timer), None, typed)
    if callable(maxsize):
        return _func_cache(TTLCache(128, ttl, timer), 128, typed)(maxsize)
    return _func_cache(TTLCache(maxsize, ttl, timer), maxsize, typed)


# ---------------------------------------------------------------------------
# memoize: kvcache's decorator.  Calls of plain functions run entirely in the
# compiled MemoBase (hit path, and misses with single flight); this layer adds
# the policies, method binding, coroutines and introspection.

_POLICIES = {
    "lru": LRUCache,
    "lfu": LFUCache,
    "fifo": FIFOCache,
    "rr": RRCache,
    "tinylfu": TinyLFUCache,
}


def _with_ttl(make_cache, ttl):
    cache = make_cache()
    enable_default_ttl(cache, ttl)
    return cache


class _Memo(MemoBase):
    """A memoized function: call it; inspect or reset its cache."""

    _is_async = False

    def __init__(self, func, make_cache, maxsize, policy, typed, key, single_flight):
        MemoBase.__init__(self, func, make_cache(), typed, key, single_flight,
                          unbound=type(self)._unbound, instance_memo=type(self)._instance_memo,
                          async_invoke=type(self)._ainvoke if self._is_async else None)
        functools.update_wrapper(self, func)
        self._make_cache = make_cache
        self._params = {"maxsize": maxsize, "policy": policy, "typed": typed}
        self._single_flight = single_flight
        self._attrname = None
        self._instances = None  # method mode: per-instance memos (weak)
        self._key_function = key

    def _store_quietly(self, key, val):
        try:
            self._store(key, val)
        except ValueError:
            pass  # too large for the cache (maxsize=0): return it uncached

    # -- method mode ---------------------------------------------------------

    # __get__ is compiled (MemoBase.__get__): it finds the instance's memo and binds it

    def _unbound(self):
        return _MemoUnbound(self)

    def __set_name__(self, owner, name):
        # Defined in a class body: each instance gets its own cache, held
        # by the instance, so no cache keeps an instance alive.
        if self._attrname is None:
            self._attrname = name
            self._instances = weakref.WeakSet()

    def _instance_memo(self, obj):
        try:
            memos = obj.__dict__.setdefault(MEMO_ATTR, {})
        except AttributeError:
            raise TypeError(
                f"@memoize method {self._attrname!r} needs a '__dict__' on "
                f"{type(obj).__name__!r} instances to hold their caches"
            ) from None
        memo = memos.get(self)
        if memo is None:
            memo = type(self)(
                self.__wrapped__,
                self._make_cache,
                self._params["maxsize"],
                self._params["policy"],
                self._params["typed"],
                self._key_function,
                self._single_flight,
            )
            memo = memos.setdefault(self, memo)
            self._instances.add(memo)
        return memo

    # -- introspection -------------------------------------------------------

    def _memos(self):
        if self._instances is None:
            return [self]
        return [self, *list(self._instances)]

    def cache_info(self):
        """Return `CacheInfo(hits, misses, maxsize, currsize)` (summed over instances for methods)."""
        hits = misses = currsize = 0
        for memo in self._memos():
            hits += memo.hits
            misses += memo.misses
            currsize += len(memo.cache)
        return _CacheInfo(hits, misses, self._params["maxsize"], currsize)

    def cache_clear(self):
        """Empty the cache and reset the counts (of every instance, for methods).

        Computations in progress still return to their callers but are not stored.
        """
        for memo in self._memos():
            memo._forget_pending()
            memo.cache.clear()
            memo._reset_counts()

    def cache_invalidate(self, /, *args, **kwargs):
        """Drop the entry for these arguments; return whether there was one.

        A computation of them in progress still returns to its callers but is not stored,
        and a call made after the invalidation computes afresh.
        """
        key = self._make_key(args, kwargs)
        self._forget_pending(key)
        return self.cache.pop(key, _MISSING) is not _MISSING

    def cache_parameters(self):
        """Return the decorator's parameters as a dict."""
        return dict(self._params, single_flight=self._single_flight)

    def stats(self):
        """Return CacheStats(hits, misses, evictions, currsize, maxsize) (summed over instances for methods)."""
        hits = misses = evictions = currsize = 0
        for memo in self._memos():
            hits += memo.hits
            misses += memo.misses
            evictions += memo.cache.stats().evictions
            currsize += len(memo.cache)
        return CacheStats(hits, misses, evictions, currsize, self._params["maxsize"])

    def __reduce__(self):
        return self.__qualname__

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __repr__(self):
        return f"<memoize {self.__wrapped__!r}>"


# keep the compiled tp_call (a Python subclass would inherit the slower generic one)
install_fast_call(_Memo)


class _AsyncMemo(_Memo):
    """A memoized coroutine function: awaiting it gives the cached result."""

    _is_async = True

    def __init__(self, *args):
        _Memo.__init__(self, *args)
        self._tasks = {}
        _mark_coroutine_function(self)

    def __call__(self, /, *args, **kwargs):
        return self._ainvoke(None, args, kwargs)

    def _invoke(self, owner, args, kwargs):
        return self._ainvoke(owner, args, kwargs)

    async def _ainvoke(self, owner, args, kwargs):
        # counted as the compiled path counts threads: a miss runs the function, an awaiter
        # of another call's task is a hit
        key = self._make_key(args, kwargs)
        found, val = self._lookup(key)
        if found:
            return val
        if not self._single_flight:
            self._count(False)
            val = await self._call(owner, args, kwargs)
            self._store_quietly(key, val)
            return val
        loop = asyncio.get_running_loop()
        task_key = (loop, key)  # a task belongs to one event loop
        task = self._tasks.get(task_key)
        if task is None:
            self._count(False)
            task = loop.create_task(self._call(owner, args, kwargs))
            self._tasks[task_key] = task
            task.add_done_callback(functools.partial(self._task_done, task_key, key))
        elif task is asyncio.current_task():
            # A recursive call on the key this very task computes: awaiting
            # itself would never end, so compute directly.
            self._count(False)
            return await self._call(owner, args, kwargs)
        else:
            self._count(True)
        # shield: cancelling one awaiter must not cancel the shared call.
        return await asyncio.shield(task)

    def _task_done(self, task_key, key, task):
        # not registered any more: invalidated or cleared while running, so not stored
        registered = self._tasks.get(task_key) is task
        if registered:
            del self._tasks[task_key]  # finished tasks are not retained
        if task.cancelled():
            return
        exc = task.exception()  # also marks it retrieved when nobody awaits
        if exc is None and registered:
            self._store_quietly(key, task.result())

    def _forget_pending(self, key=_MISSING):
        # the tasks computing key (in any event loop) are no longer joined nor stored
        for task_key in list(self._tasks):
            if key is _MISSING or task_key[1] == key:
                self._tasks.pop(task_key, None)

    def __repr__(self):
        return f"<memoize async {self.__wrapped__!r}>"



class _MemoUnbound:
    """A `@memoize` method reached through its class: call it with the instance first."""

    __slots__ = ("_memo",)

    def __init__(self, memo):
        self._memo = memo

    def __call__(self, obj, /, *args, **kwargs):
        return self._memo.__get__(obj)(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._memo, name)

    @property
    def __doc__(self):
        return self._memo.__doc__

    def __repr__(self):
        return repr(self._memo)


def _mark_coroutine_function(obj):
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:  # Python >= 3.12
        mark(obj)
    else:
        # Before 3.12 inspect.iscoroutinefunction trusts an object that looks like a
        # function (inspect._signature_is_functionlike): lend it the coroutine's code.
        func = obj.__wrapped__
        if not hasattr(func, "__code__"):
            return
        obj.__code__ = func.__code__
        obj.__defaults__ = func.__defaults__
        obj.__kwdefaults__ = func.__kwdefaults__
    # asyncio.iscoroutinefunction looks for this marker.
    obj._is_coroutine = getattr(asyncio.coroutines, "_is_coroutine", None)


def memoize(maxsize=128, *, policy="lru", typed=False, key=None, single_flight=True, ttl=None):
    """Decorate a function, coroutine function or method to memoize its results.

    `policy` names the eviction policy ("lru", "lfu", "fifo", "rr", "tinylfu");
    `maxsize=None` caches without bound; `ttl` (seconds) makes results expire.  `key(*args, **kwargs)` replaces
    the default key (for methods it does not receive `self`).  With
    `single_flight` (the default), concurrent misses on one key run the
    function once and all callers get its result or its exception; an
    exception is never cached.  For coroutine functions the result is
    cached, and cancelling one awaiter does not cancel the shared call.
    `cache_info().misses` counts the calls that ran the function; every other
    call is a hit, including one that waited for a concurrent call's result
    (or exception), in threads and coroutines alike.  `f.cache` holds finished
    results only: a computation in progress is not visible there, and
    `cache_invalidate` or `cache_clear` keep it from being stored (its
    callers still get its outcome).
    Methods get one cache per instance, stored on the instance, so no
    instance is kept alive by the decorator.
    """
    if callable(maxsize) and not isinstance(maxsize, int):
        return memoize()(maxsize)
    if maxsize is not None:
        if not isinstance(maxsize, int) or isinstance(maxsize, bool):
            raise TypeError(f"maxsize must be an int or None, not {type(maxsize).__name__}")
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
    try:
        cls = _POLICIES[policy]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown policy {policy!r}; expected one of {', '.join(map(repr, _POLICIES))}"
        ) from None
    if key is not None and not callable(key):
        raise TypeError("key must be callable or None")

    if ttl is not None and not ttl > 0:
        raise ValueError("ttl must be > 0 or None")
    if maxsize is None:
        make_cache = functools.partial(Cache, math.inf)
    else:
        make_cache = functools.partial(cls, maxsize)
    if ttl is not None:
        make_cache = functools.partial(_with_ttl, make_cache, ttl)

    def decorator(func):
        if not callable(func):
            raise TypeError("memoize expects a callable")
        cls = _AsyncMemo if inspect.iscoroutinefunction(func) else _Memo
        return cls(func, make_cache, maxsize, policy, typed, key, single_flight)

    return decorator
