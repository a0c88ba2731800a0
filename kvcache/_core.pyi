import os
from collections.abc import Callable, Iterable, Iterator, KeysView, ItemsView, MutableMapping, ValuesView
from types import GenericAlias
from typing import Any, Generic, NamedTuple, TypeVar, overload

from typing_extensions import Self, disjoint_base

import numpy as np

_KT = TypeVar("_KT")
_VT = TypeVar("_VT")
_T = TypeVar("_T")

__all__ = ["Cache", "FIFOCache", "LFUCache", "LRUCache", "RRCache", "CacheStats"]

class CacheStats(NamedTuple):
    hits: int
    misses: int
    evictions: int
    currsize: float
    maxsize: float

@disjoint_base
class Cache(MutableMapping[_KT, _VT], Generic[_KT, _VT]):
    def __init__(
        self,
        maxsize: float,
        getsizeof: Callable[[_VT], float] | None = ...,
        *,
        on_evict: Callable[[_KT, _VT], object] | None = ...,
        seed: int | None = ...,
        capacity: int | None = ...,
    ) -> None: ...
    def __class_getitem__(cls, item: Any) -> GenericAlias: ...
    def __getitem__(self, key: _KT, /) -> _VT: ...
    def __setitem__(self, key: _KT, value: _VT, /) -> None: ...
    def __delitem__(self, key: _KT, /) -> None: ...
    def __iter__(self) -> Iterator[_KT]: ...
    def __reversed__(self) -> Iterator[_KT]: ...
    def __copy__(self) -> Self: ...
    def __len__(self) -> int: ...
    def __missing__(self, key: _KT) -> _VT: ...
    @overload
    def get(self, key: _KT, default: None = None) -> _VT | None: ...
    @overload
    def get(self, key: _KT, default: _VT | _T) -> _VT | _T: ...
    def peek(self, key: _KT, default: _T | None = ...) -> _VT | _T | None: ...
    def popitem(self) -> tuple[_KT, _VT]: ...
    @overload
    def pop(self, key: _KT) -> _VT: ...
    @overload
    def pop(self, key: _KT, default: _VT | _T) -> _VT | _T: ...
    @overload
    def setdefault(self: Cache[_KT, _T | None], key: _KT, default: None = None) -> _T | None: ...
    @overload
    def setdefault(self, key: _KT, default: _VT) -> _VT: ...
    def keys(self) -> KeysView[_KT]: ...
    def values(self) -> ValuesView[_VT]: ...
    def items(self) -> ItemsView[_KT, _VT]: ...
    def stats(self) -> CacheStats: ...
    def resize(self, maxsize: float) -> None: ...
    def get_many(self, keys: Iterable[_KT] | np.ndarray, default: _T | None = ...) -> list[_VT | _T | None]: ...
    def set_many(self, keys: Iterable[_KT] | np.ndarray, values: Iterable[_VT] | np.ndarray) -> None: ...
    @property
    def maxsize(self) -> float: ...
    @property
    def currsize(self) -> float: ...
    @staticmethod
    def getsizeof(value: Any) -> float: ...
    def set(self, key: _KT, value: _VT, ttl: float | None = ...) -> None: ...
    def ttl_of(self, key: _KT) -> float | None: ...
    def expire(self, time: Any = ...) -> list[tuple[_KT, _VT]]: ...
    timer: Any
    def save(self, path: str | os.PathLike[str], *, pickle_key: bytes | None = ...) -> None: ...
    load: Any  # Class.load(path, **kwargs) -> a new cache; cache.load(path) -> fills this one

class FIFOCache(Cache[_KT, _VT]):
    # the compiled classes take their arguments in __new__ (Cython's __cinit__) as well
    def __new__(
        cls,
        maxsize: float,
        getsizeof: Callable[[_VT], float] | None = ...,
        *,
        on_evict: Callable[[_KT, _VT], object] | None = ...,
        seed: int | None = ...,
        capacity: int | None = ...,
    ) -> Self: ...
    def __init__(
        self,
        maxsize: float,
        getsizeof: Callable[[_VT], float] | None = ...,
        *,
        on_evict: Callable[[_KT, _VT], object] | None = ...,
        seed: int | None = ...,
        capacity: int | None = ...,
    ) -> None: ...
class LRUCache(Cache[_KT, _VT]):
    # the compiled classes take their arguments in __new__ (Cython's __cinit__) as well
    def __new__(
        cls,
        maxsize: float,
        getsizeof: Callable[[_VT], float] | None = ...,
        *,
        on_evict: Callable[[_KT, _VT], object] | None = ...,
        seed: int | None = ...,
        capacity: int | None = ...,
    ) -> Self: ...
    def __init__(
        self,
        maxsize: float,
        getsizeof: Callable[[_VT], float] | None = ...,
        *,
        on_evict: Callable[[_KT, _VT], object] | None = ...,
        seed: int | None = ...,
        capacity: int | None = ...,
    ) -> None: ...
class LFUCache(Cache[_KT, _VT]):
    # the compiled classes take their arguments in __new__ (Cython's __cinit__) as well
    def __new__(
        cls,
        maxsize: float,
        getsizeof: Callable[[_VT], float] | None = ...,
        *,
        on_evict: Callable[[_KT, _VT], object] | None = ...,
        seed: int | None = ...,
        capacity: int | None = ...,
    ) -> Self: ...
    def __init__(
        self,
        maxsize: float,
        getsizeof: Callable[[_VT], float] | None = ...,
        *,
        on_evict: Callable[[_KT, _VT], object] | None = ...,
        seed: int | None = ...,
        capacity: int | None = ...,
    ) -> None: ...

class RRCache(Cache[_KT, _VT]):
    def __init__(
        self,
        maxsize: float,
        choice: Callable[[list[_KT]], _KT] = ...,
        getsizeof: Callable[[_VT], float] | None = ...,
        *,
        on_evict: Callable[[_KT, _VT], object] | None = ...,
        seed: int | None = ...,
        capacity: int | None = ...,
    ) -> None: ...
    @property
    def choice(self) -> Callable[[list[_KT]], _KT]: ...

class InitSignature:
    def __init__(self, stub: Callable[..., object]) -> None: ...
    def __get__(self, obj: object, owner: type[Any] | None = None, /) -> Any: ...

def install_snapshots(module: Any) -> None: ...
