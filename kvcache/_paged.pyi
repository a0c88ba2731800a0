from typing import Any, NamedTuple

class PoolExhaustedError(RuntimeError): ...

class PrefixCacheStats(NamedTuple):
    queries: int
    hit_blocks: int
    hit_tokens: int
    committed: int
    evictions: int
    cached: int
    free: int
    evictable: int
    in_use: int
    num_blocks: int

class PagedBlocks:
    def __init__(self, num_blocks: int, block_size: int) -> None: ...
    def __getattr__(self, name: str) -> Any: ...
