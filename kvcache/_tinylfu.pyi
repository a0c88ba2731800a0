from collections.abc import Callable
from typing import TypeVar

from typing_extensions import Self

from kvcache._core import Cache

_KT = TypeVar("_KT")
_VT = TypeVar("_VT")

__all__ = ["TinyLFUCache"]

class TinyLFUCache(Cache[_KT, _VT]):
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
    def __getitem__(self, key: _KT, /) -> _VT: ...
