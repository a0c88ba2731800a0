from collections.abc import Callable
from functools import _CacheInfo
from typing import Any, Generic, final, ParamSpec, TypedDict, TypeVar, overload

from typing_extensions import Concatenate, Self, disjoint_base

from kvcache._core import LRUCache

_KT = TypeVar("_KT")
_VT = TypeVar("_VT")
_T = TypeVar("_T")
_S = TypeVar("_S")
_P = ParamSpec("_P")
_P2 = ParamSpec("_P2")

__all__ = [
    "LRU",
    "MEMO_ATTR",
    "CachedBase",
    "CachedMethodBound",
    "CachedMethodDescriptorBase",
    "MemoBase",
    "install_fast_call",
    "lru_cache_wrapper",
    "register_plain_keyfunc",
    "register_plain_methodkey",
]

class _CacheParameters(TypedDict):
    maxsize: int | None
    typed: bool

class LRU(LRUCache[_KT, _VT]):
    def __init__(self, size: int, callback: Callable[[_KT, _VT], object] | None = ...) -> None: ...
    def peek_first_item(self) -> tuple[_KT, _VT]: ...
    def peek_last_item(self) -> tuple[_KT, _VT]: ...
    def has_key(self, key: _KT) -> bool: ...
    def get_size(self) -> int: ...
    def set_size(self, size: int) -> None: ...
    def get_stats(self) -> tuple[int, int]: ...
    def popitem(self, least_recent: bool = True) -> tuple[_KT, _VT]: ...
    def set_callback(self, callback: Callable[[_KT, _VT], object] | None) -> None: ...

MEMO_ATTR: str

@disjoint_base
class MemoBase:
    func: Callable[..., Any]
    cache: Any
    hits: int
    misses: int
    def __init__(
        self,
        func: Callable[..., Any],
        cache: Any,
        typed: bool,
        key: Callable[..., Any] | None,
        single_flight: bool = ...,
        *,
        unbound: Callable[..., Any] | None = ...,
        instance_memo: Callable[..., Any] | None = ...,
        async_invoke: Callable[..., Any] | None = ...,
    ) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

@disjoint_base
class CachedBase:
    cache: Any
    cache_key: Callable[..., Any]
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

@disjoint_base
class CachedMethodDescriptorBase:
    def __init__(self, get_slow: Callable[..., Any], call_slow: Callable[..., Any]) -> None: ...
    def __get__(self, instance: Any, owner: Any = None, /) -> Any: ...
    def _bind(self, obj: Any) -> CachedMethodBound: ...

@disjoint_base
class CachedMethodBound:
    @property
    def __self__(self) -> Any: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

# functools.lru_cache's wrapper, generic in the wrapped function's parameters and return type
# (kvcache.decorators.lru_cache returns it); not generic at runtime.
@final
class _lru_cache_wrapper(Generic[_P, _T]):
    __wrapped__: Callable[_P, _T]
    def __init__(self, func: Callable[_P, _T], maxsize: int | None, typed: bool, cache_info_type: type[_CacheInfo]) -> None: ...
    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _T: ...
    def cache_info(self) -> _CacheInfo: ...
    def cache_clear(self) -> None: ...
    # an instance attribute, set by kvcache.decorators.lru_cache on each wrapper it makes
    cache_parameters: Callable[[], _CacheParameters]
    def __copy__(self) -> Self: ...
    def __deepcopy__(self, memo: Any, /) -> Self: ...
    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None, /) -> Self: ...
    @overload
    def __get__(
        self: _lru_cache_wrapper[Concatenate[_S, _P2], _T], obj: _S, owner: type[Any] | None = None, /
    ) -> _lru_cache_wrapper[_P2, _T]: ...

lru_cache_wrapper = _lru_cache_wrapper

def install_fast_call(cls: type) -> None: ...
def register_plain_keyfunc(fn: Callable[..., Any]) -> None: ...
def register_plain_methodkey(fn: Callable[..., Any]) -> None: ...
