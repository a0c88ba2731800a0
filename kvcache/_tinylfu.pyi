from typing import TypeVar

from kvcache._core import Cache

_KT = TypeVar("_KT")
_VT = TypeVar("_VT")

class TinyLFUCache(Cache[_KT, _VT]): ...
