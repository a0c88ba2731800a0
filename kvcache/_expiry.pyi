from collections.abc import Callable
from typing import Any, TypeVar

from kvcache._core import Cache

_KT = TypeVar("_KT")
_VT = TypeVar("_VT")

__all__ = ["TTLCache", "TLRUCache"]

class TTLCache(Cache[_KT, _VT]):
    def __init__(
        self,
        maxsize: float,
        ttl: Any,
        timer: Callable[[], Any] = ...,
        getsizeof: Callable[[_VT], float] | None = ...,
        *,
        on_evict: Callable[[_KT, _VT], object] | None = ...,
        seed: int | None = ...,
        capacity: int | None = ...,
    ) -> None: ...
    @property
    def ttl(self) -> Any: ...

class TLRUCache(Cache[_KT, _VT]):
    def __init__(
        self,
        maxsize: float,
        ttu: Callable[[_KT, _VT, Any], Any],
        timer: Callable[[], Any] = ...,
        getsizeof: Callable[[_VT], float] | None = ...,
        *,
        on_evict: Callable[[_KT, _VT], object] | None = ...,
        seed: int | None = ...,
        capacity: int | None = ...,
    ) -> None: ...
    @property
    def ttu(self) -> Callable[[_KT, _VT, Any], Any]: ...

def enable_default_ttl(c: Cache[Any, Any], ttl: Any, timer: Callable[[], Any] = ...) -> None: ...
