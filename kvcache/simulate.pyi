from typing import Callable, Iterable, Mapping

import numpy as np
import numpy.typing as npt

from kvcache._core import Cache

__all__ = ["POLICIES", "opt", "replay", "load_trace", "main"]

POLICIES: dict[str, type[Cache]]

def replay(
    keys: npt.ArrayLike,
    policy: str | type[Cache],
    maxsize: int,
    *,
    seed: int | None = ...,
    progress: Callable[[int, int], object] | None = ...,
) -> int: ...
def opt(keys: npt.ArrayLike, maxsize: int) -> int: ...
def load_trace(path: str) -> np.ndarray: ...
def run(
    traces: Iterable[str],
    sizes: Iterable[int],
    policies: Iterable[str],
    *,
    seed: int | None = ...,
    stream: object = ...,
    progress: bool = ...,
) -> dict[str, dict[int, dict[str, float]]]: ...
def plot(results: Mapping[str, Mapping[int, Mapping[str, float]]], path: str) -> None: ...
def main(argv: list[str] | None = ...) -> int: ...
