from typing import Any, final

import numpy as np

__all__ = ["Replayer", "opt_hits"]

@final
class Replayer:
    hits: int
    accesses: int
    def __init__(self, cache: Any) -> None: ...
    def feed(self, keys: np.ndarray) -> int: ...

def opt_hits(ids: np.ndarray, ndistinct: int, maxsize: int) -> int: ...
