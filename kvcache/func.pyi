# cachetools.func's decorators (kvcache/func.py): typed as kvcache.decorators types lfu_cache.
from collections.abc import Callable
from typing import ParamSpec, TypeVar, overload

from kvcache.decorators import _func_cache_wrapper
from kvcache.decorators import fifo_cache as fifo_cache
from kvcache.decorators import lfu_cache as lfu_cache
from kvcache.decorators import rr_cache as rr_cache
from kvcache.decorators import ttl_cache as ttl_cache

__all__ = ("fifo_cache", "lfu_cache", "lru_cache", "rr_cache", "ttl_cache")

_P = ParamSpec("_P")
_T = TypeVar("_T")

@overload
def lru_cache(maxsize: int | None = 128, typed: bool = False) -> Callable[[Callable[_P, _T]], _func_cache_wrapper[_P, _T]]: ...
@overload
def lru_cache(maxsize: Callable[_P, _T], typed: bool = False) -> _func_cache_wrapper[_P, _T]: ...
