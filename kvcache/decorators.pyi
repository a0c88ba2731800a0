# Types of the memoizing decorators. Each wrapper is generic in the decorated function's
# parameters (ParamSpec) and return type, so `reveal_type(f(1))` is f's return type and `f("x")`
# is an error where f takes an int. typeshed types functools.lru_cache's wrapper in its return
# type only (`_lru_cache_wrapper[T]`, any hashable arguments); keeping the parameters too costs
# nothing here. The wrapper classes named with a leading underscore exist only in this stub: at
# runtime they are the classes of decorators.py and _memo.pyx, which are not generic.
import random
from collections.abc import Callable, Hashable, MutableMapping
from contextlib import AbstractContextManager
from functools import _CacheInfo
from threading import Condition
from typing import Any, Generic, Literal, ParamSpec, TypedDict, TypeVar, overload

from typing_extensions import Concatenate, Self

from kvcache._core import CacheStats
from kvcache._memo import LRU as LRU
from kvcache._memo import _CacheParameters
from kvcache._memo import _lru_cache_wrapper as lru_cache_wrapper

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

_P = ParamSpec("_P")
_P2 = ParamSpec("_P2")
_T = TypeVar("_T")
_S = TypeVar("_S")
_KT = TypeVar("_KT")

CacheInfo = _CacheInfo

class _MemoParameters(TypedDict):
    maxsize: int | None
    policy: str
    typed: bool
    single_flight: bool

# functools.lru_cache / functools.cache

@overload
def lru_cache(maxsize: int | None = 128, typed: bool = False) -> Callable[[Callable[_P, _T]], lru_cache_wrapper[_P, _T]]: ...
@overload
def lru_cache(maxsize: Callable[_P, _T], typed: bool = False) -> lru_cache_wrapper[_P, _T]: ...
def cache(user_function: Callable[_P, _T], /) -> lru_cache_wrapper[_P, _T]: ...

# cachetools.cached

class _cached_wrapper(Generic[_P, _T]):
    __wrapped__: Callable[_P, _T]
    cache: MutableMapping[Any, Any]
    cache_key: Callable[..., Hashable]
    cache_lock: AbstractContextManager[Any] | None
    cache_condition: Condition | None
    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _T: ...
    def cache_clear(self) -> None: ...
    def __copy__(self) -> Self: ...
    def __deepcopy__(self, memo: Any, /) -> Self: ...
    @overload
    def __get__(self, obj: None, objtype: type[Any] | None = None) -> Self: ...
    @overload
    def __get__(
        self: _cached_wrapper[Concatenate[_S, _P2], _T], obj: _S, objtype: type[Any] | None = None
    ) -> Callable[_P2, _T]: ...

class _cached_wrapper_info(_cached_wrapper[_P, _T]):
    def cache_info(self) -> _CacheInfo: ...

@overload
def cached(
    cache: MutableMapping[Any, Any],
    key: Callable[..., Hashable] = ...,
    lock: AbstractContextManager[Any] | None = None,
    condition: Condition | None = None,
    info: Literal[False] = False,
) -> Callable[[Callable[_P, _T]], _cached_wrapper[_P, _T]]: ...
@overload
def cached(
    cache: MutableMapping[Any, Any],
    key: Callable[..., Hashable] = ...,
    lock: AbstractContextManager[Any] | None = None,
    condition: Condition | None = None,
    *,
    info: Literal[True],
) -> Callable[[Callable[_P, _T]], _cached_wrapper_info[_P, _T]]: ...
@overload
def cached(
    cache: MutableMapping[Any, Any],
    key: Callable[..., Hashable],
    lock: AbstractContextManager[Any] | None,
    condition: Condition | None,
    info: Literal[True],
) -> Callable[[Callable[_P, _T]], _cached_wrapper_info[_P, _T]]: ...

# cachetools.func: a cached(..., info=True) wrapper that also has cache_parameters()

class _func_cache_wrapper(_cached_wrapper_info[_P, _T]):
    def cache_parameters(self) -> _CacheParameters: ...

def _func_cache(
    cache: MutableMapping[Any, Any], maxsize: int | None, typed: bool
) -> Callable[[Callable[_P, _T]], _func_cache_wrapper[_P, _T]]: ...

@overload
def lfu_cache(maxsize: int | None = 128, typed: bool = False) -> Callable[[Callable[_P, _T]], _func_cache_wrapper[_P, _T]]: ...
@overload
def lfu_cache(maxsize: Callable[_P, _T], typed: bool = False) -> _func_cache_wrapper[_P, _T]: ...
@overload
def fifo_cache(maxsize: int | None = 128, typed: bool = False) -> Callable[[Callable[_P, _T]], _func_cache_wrapper[_P, _T]]: ...
@overload
def fifo_cache(maxsize: Callable[_P, _T], typed: bool = False) -> _func_cache_wrapper[_P, _T]: ...
@overload
def rr_cache(
    maxsize: int | None = 128, choice: Callable[[list[Any]], Any] = random.choice, typed: bool = False
) -> Callable[[Callable[_P, _T]], _func_cache_wrapper[_P, _T]]: ...
@overload
def rr_cache(
    maxsize: Callable[_P, _T], choice: Callable[[list[Any]], Any] = random.choice, typed: bool = False
) -> _func_cache_wrapper[_P, _T]: ...
@overload
def ttl_cache(
    maxsize: int | None = 128, ttl: float = 600, timer: Callable[[], float] = ..., typed: bool = False
) -> Callable[[Callable[_P, _T]], _func_cache_wrapper[_P, _T]]: ...
@overload
def ttl_cache(
    maxsize: Callable[_P, _T], ttl: float = 600, timer: Callable[[], float] = ..., typed: bool = False
) -> _func_cache_wrapper[_P, _T]: ...

# cachetools.cachedmethod: `cache`, `lock` and `condition` take the instance (typed Any, as a
# lambda's parameter cannot be inferred from the method decorated later); _S is the method's self

class _cachedmethod_bound(Generic[_S, _P, _T]):
    __self__: _S
    __func__: Callable[Concatenate[_S, _P], _T]
    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _T: ...
    @property
    def cache(self) -> MutableMapping[Any, Any]: ...
    @property
    def cache_lock(self) -> AbstractContextManager[Any] | None: ...
    @property
    def cache_condition(self) -> Condition | None: ...
    @property
    def cache_key(self) -> Callable[..., Hashable]: ...
    def cache_clear(self) -> None: ...

class _cachedmethod_bound_info(_cachedmethod_bound[_S, _P, _T]):
    def cache_info(self) -> _CacheInfo: ...

class _cachedmethod(Generic[_S, _P, _T]):
    __wrapped__: Callable[Concatenate[_S, _P], _T]
    def __set_name__(self, owner: type[Any], name: str) -> None: ...
    # reached through the class: the unbound method, called with the instance first
    @overload
    def __get__(self, obj: None, objtype: type[Any] | None = None) -> Callable[Concatenate[_S, _P], _T]: ...
    @overload
    def __get__(self, obj: _S, objtype: type[Any] | None = None) -> _cachedmethod_bound[_S, _P, _T]: ...
    def __call__(self, obj: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _T: ...

class _cachedmethod_info(_cachedmethod[_S, _P, _T]):
    @overload
    def __get__(self, obj: None, objtype: type[Any] | None = None) -> Callable[Concatenate[_S, _P], _T]: ...
    @overload
    def __get__(self, obj: _S, objtype: type[Any] | None = None) -> _cachedmethod_bound_info[_S, _P, _T]: ...

@overload
def cachedmethod(
    cache: Callable[[Any], MutableMapping[Any, Any]],
    key: Callable[..., Hashable] = ...,
    lock: Callable[[Any], AbstractContextManager[Any]] | None = None,
    condition: Callable[[Any], Condition] | None = None,
    info: Literal[False] = False,
) -> Callable[[Callable[Concatenate[_S, _P], _T]], _cachedmethod[_S, _P, _T]]: ...
@overload
def cachedmethod(
    cache: Callable[[Any], MutableMapping[Any, Any]],
    key: Callable[..., Hashable] = ...,
    lock: Callable[[Any], AbstractContextManager[Any]] | None = None,
    condition: Callable[[Any], Condition] | None = None,
    *,
    info: Literal[True],
) -> Callable[[Callable[Concatenate[_S, _P], _T]], _cachedmethod_info[_S, _P, _T]]: ...

# memoize: a function's memo; in a class body, one memo per instance

class _memo(Generic[_P, _T]):
    __wrapped__: Callable[_P, _T]
    cache: MutableMapping[Any, Any]
    hits: int
    misses: int
    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _T: ...
    def cache_info(self) -> _CacheInfo: ...
    def cache_clear(self) -> None: ...
    def cache_invalidate(self, /, *args: _P.args, **kwargs: _P.kwargs) -> bool: ...
    def cache_parameters(self) -> _MemoParameters: ...
    def stats(self) -> CacheStats: ...
    def __copy__(self) -> Self: ...
    def __deepcopy__(self, memo: Any, /) -> Self: ...
    # reached through the class, a method's memo is called with the instance first
    @overload
    def __get__(self, obj: None, objtype: type[Any] | None = None) -> Self: ...
    @overload
    def __get__(self: _memo[Concatenate[_S, _P2], _T], obj: _S, objtype: type[Any] | None = None) -> _memo[_P2, _T]: ...

@overload
def memoize(maxsize: Callable[_P, _T]) -> _memo[_P, _T]: ...
@overload
def memoize(
    maxsize: int | None = 128,
    *,
    policy: Literal["lru", "lfu", "fifo", "rr", "tinylfu"] = "lru",
    typed: bool = False,
    key: Callable[..., Hashable] | None = None,
    single_flight: bool = True,
    ttl: float | None = None,
) -> Callable[[Callable[_P, _T]], _memo[_P, _T]]: ...
