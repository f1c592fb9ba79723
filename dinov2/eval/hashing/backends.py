"""Array backends of the Hamming-ranking metrics: numpy for CPU data, torch on other devices.

Every metric is written once on these primitives. The CPU set uses numpy, whose kernels are
single-threaded (query chunks run in parallel threads) and include popcount and radix sort; the
other set uses torch on the codes' device. Both give identical integers.
"""

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, List, Sequence, Tuple

import numpy as np
import torch

# Elements of one [queries, database] block of a full ranking, per thread: bounds memory while
# keeping blocks large enough for vectorised kernels.
_BLOCK_ELEMENTS = 1 << 18


class NumpyOps:
    parallel = True

    @staticmethod
    def native(x) -> np.ndarray:
        return x.cpu().numpy() if isinstance(x, torch.Tensor) else x

    @staticmethod
    def f32(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32)

    @staticmethod
    def narrow_ints(x: np.ndarray, low: int, high: int) -> np.ndarray:
        return x.astype(np.promote_types(np.min_scalar_type(low), np.min_scalar_type(high)))

    @staticmethod
    def numpy(x: np.ndarray) -> np.ndarray:
        return x

    @staticmethod
    def to_torch(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x))

    @staticmethod
    def argsort_stable(x: np.ndarray) -> np.ndarray:
        # numpy's stable sort of 8/16-bit integers is a radix sort: linear time
        return np.argsort(x if x.dtype == np.uint8 else x.astype(np.int16), axis=1, kind="stable")

    @staticmethod
    def nonzero(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        flat = np.flatnonzero(x)  # several times faster than the 2-D np.nonzero
        return flat // x.shape[1], flat % x.shape[1]

    @staticmethod
    def arange(n: int) -> np.ndarray:
        return np.arange(n)

    @staticmethod
    def array(values: Sequence[int]) -> np.ndarray:
        return np.asarray(values, dtype=np.int64)

    @staticmethod
    def full(shape: Tuple[int, ...], value: int) -> np.ndarray:
        return np.full(shape, value, dtype=np.int64)

    @staticmethod
    def bincount(x: np.ndarray, weights=None, minlength: int = 0) -> np.ndarray:
        return np.bincount(x, weights=weights, minlength=minlength)

    @staticmethod
    def f64(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64)

    @staticmethod
    def i64(x: np.ndarray) -> np.ndarray:
        return x.astype(np.int64)

    @staticmethod
    def cast(x: np.ndarray, like: np.ndarray) -> np.ndarray:
        return x.astype(like.dtype)

    @staticmethod
    def cumsum(x: np.ndarray, axis: int) -> np.ndarray:
        return np.cumsum(x, axis=axis)

    @staticmethod
    def sort_rows(x: np.ndarray) -> np.ndarray:
        return np.sort(x, axis=1)

    @staticmethod
    def searchsorted(a: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.searchsorted(a, v)

    @staticmethod
    def take_along(x: np.ndarray, index: np.ndarray) -> np.ndarray:
        return np.take_along_axis(x, index, axis=1)

    @staticmethod
    def cat(xs: List[np.ndarray]) -> np.ndarray:
        return np.concatenate(xs)

    @staticmethod
    def stack(xs: List[np.ndarray], axis: int) -> np.ndarray:
        return np.stack(xs, axis=axis)

    where = staticmethod(np.where)


class TorchOps:
    parallel = False

    def __init__(self, device: torch.device):
        self.device = device

    def native(self, x) -> torch.Tensor:
        return torch.as_tensor(x, device=self.device)

    @staticmethod
    def f32(x: torch.Tensor) -> torch.Tensor:
        return x.float()

    @staticmethod
    def narrow_ints(x: torch.Tensor, low: int, high: int) -> torch.Tensor:
        return x.long()

    @staticmethod
    def numpy(x: torch.Tensor) -> np.ndarray:
        return x.cpu().numpy()

    @staticmethod
    def to_torch(x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def argsort_stable(x: torch.Tensor) -> torch.Tensor:
        return torch.sort(x, dim=1, stable=True).indices

    @staticmethod
    def nonzero(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return x.nonzero(as_tuple=True)

    def arange(self, n: int) -> torch.Tensor:
        return torch.arange(n, device=self.device)

    def array(self, values: Sequence[int]) -> torch.Tensor:
        return torch.tensor(list(values), dtype=torch.int64, device=self.device)

    def full(self, shape: Tuple[int, ...], value: int) -> torch.Tensor:
        return torch.full(shape, value, dtype=torch.int64, device=self.device)

    @staticmethod
    def bincount(x: torch.Tensor, weights=None, minlength: int = 0) -> torch.Tensor:
        return torch.bincount(x, weights=weights, minlength=minlength)

    @staticmethod
    def f64(x: torch.Tensor) -> torch.Tensor:
        return x.double()

    @staticmethod
    def i64(x: torch.Tensor) -> torch.Tensor:
        return x.long()

    @staticmethod
    def cast(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.to(like.dtype)

    @staticmethod
    def cumsum(x: torch.Tensor, axis: int) -> torch.Tensor:
        return x.cumsum(axis)

    @staticmethod
    def sort_rows(x: torch.Tensor) -> torch.Tensor:
        return torch.sort(x, dim=1).values

    @staticmethod
    def searchsorted(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(a, v)

    @staticmethod
    def take_along(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.gather(x, 1, index)

    @staticmethod
    def cat(xs: List[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs)

    @staticmethod
    def stack(xs: List[torch.Tensor], axis: int) -> torch.Tensor:
        return torch.stack(xs, dim=axis)

    where = staticmethod(torch.where)


NUMPY_OPS = NumpyOps()


def _chunks(num_queries: int, per_chunk: int) -> List[slice]:
    per_chunk = max(1, per_chunk)
    return [slice(s, min(s + per_chunk, num_queries)) for s in range(0, num_queries, per_chunk)]


def _map_chunks(fn: Callable[[slice], Any], chunks: List[slice], ops) -> List[Any]:
    """``fn`` on every query chunk, in order; numpy chunks run in as many threads as torch uses."""
    workers = min(torch.get_num_threads(), len(chunks)) if ops.parallel else 1
    if workers <= 1:
        return [fn(c) for c in chunks]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, chunks))
