"""Binary codes: input checks, binarisation and bit packing.

Codes may be given as torch tensors (on any device) or numpy arrays, with values in {-1, +1} or
{0, 1} (bool included); a code bit is set where the value is positive. Arrays stay "native": numpy
for CPU data, torch tensors on other devices.
"""

from typing import Optional, Union

import numpy as np
import torch

from .backends import NUMPY_OPS

ArrayLike = Union[torch.Tensor, np.ndarray]


def _native(x: ArrayLike, name: str):
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.device.type != "cpu":
            return x
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _kind(x) -> str:
    """numpy dtype kind of a native array: b(ool), i(nt), u(nsigned), f(loat), c(omplex)."""
    if isinstance(x, np.ndarray):
        return x.dtype.kind
    if x.dtype == torch.bool:
        return "b"
    if x.dtype.is_floating_point:
        return "f"
    if x.dtype.is_complex:
        return "c"
    return "u" if x.dtype == torch.uint8 else "i"


def _found_values(x, limit: int = 8) -> str:
    values = np.unique(x) if isinstance(x, np.ndarray) else torch.unique(x).cpu().numpy()
    shown = ", ".join(repr(v.item()) for v in values[:limit])
    more = f", ... ({len(values)} distinct)" if len(values) > limit else ""
    return f"[{shown}{more}]"


def _code_bits(codes: ArrayLike, name: str):
    """Bits (native bool [N, K]) of binary codes, after checking shape and values."""
    x = _native(codes, name)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [num_codes, num_bits], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 codes); need at least one code")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has 0 bits per code; need at least one bit")
    if _kind(x) == "b":
        return x
    if not bool(((x == 1) | (x == -1)).all()) and not bool(((x == 0) | (x == 1)).all()):
        raise ValueError(
            f"{name} must be binary, with values in {{-1, +1}} or {{0, 1}}; found values {_found_values(x)}"
        )
    return x > 0


def _check_positive(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _pack_words(bits: np.ndarray) -> np.ndarray:
    """Bits [N, K] -> words [N, W], zero-padded (padding adds no distance): one word of the
    smallest unsigned type that holds K bits, or uint64 words for K > 64."""
    n, k = bits.shape
    packed = np.packbits(bits, axis=1, bitorder="little")  # [N, ceil(K/8)]
    word = next(t for t in (np.uint8, np.uint16, np.uint32) if k <= 8 * np.dtype(t).itemsize) if k <= 32 else np.uint64
    word_bytes = np.dtype(word).itemsize
    padded = np.zeros((n, -(-packed.shape[1] // word_bytes) * word_bytes), dtype=np.uint8)
    padded[:, : packed.shape[1]] = packed
    return padded.view(word)


def _words64(words: np.ndarray) -> np.ndarray:
    """Packed words of any unsigned width [N, W] -> uint64 words [N, W'] (zero padding)."""
    if words.dtype == np.uint64:
        return np.ascontiguousarray(words)
    raw = np.ascontiguousarray(words).view(np.uint8)
    padded = np.zeros((raw.shape[0], -(-raw.shape[1] // 8) * 8), dtype=np.uint8)
    padded[:, : raw.shape[1]] = raw
    return padded.view(np.uint64)


def binarize(u: ArrayLike) -> ArrayLike:
    """Binary codes from continuous ones: sign with sign(0) = +1.

    Args:
        u: real values [..., K], torch tensor (any device) or numpy array.
    Returns:
        int8 codes in {-1, +1} of the same shape and container (and device) as ``u``.
    """
    x = _native(u, "u")
    if _kind(x) == "c":
        raise ValueError(f"u must be real, got dtype {x.dtype}")
    if _kind(x) == "f" and bool((x != x).any()):
        raise ValueError("u contains NaN, whose sign is undefined")
    if isinstance(u, np.ndarray):
        return np.where(x >= 0, 1, -1).astype(np.int8)
    codes = torch.where(torch.as_tensor(x) >= 0, 1, -1).to(torch.int8)
    return codes if codes.device == u.device else codes.to(u.device)


def pack_codes(codes: ArrayLike) -> np.ndarray:
    """Pack binary codes into bytes, 8 bits per byte, first bit in the lowest bit (faiss layout).

    Args:
        codes: binary codes [N, K] in {-1,+1} or {0,1}; K must be a multiple of 8.
    Returns:
        uint8 numpy array [N, K/8].
    """
    bits = _code_bits(codes, "codes")
    if bits.shape[1] % 8 != 0:
        raise ValueError(f"pack_codes needs a code length K that is a multiple of 8, got K={bits.shape[1]}")
    return np.packbits(NUMPY_OPS.native(bits), axis=1, bitorder="little")


def unpack_codes(packed: ArrayLike, nbits: Optional[int] = None) -> np.ndarray:
    """Codes in {-1, +1} from ``pack_codes`` bytes.

    Args:
        packed: uint8 array [N, B].
        nbits: code length K <= 8B (default 8B).
    Returns:
        int8 numpy array [N, K] in {-1, +1}.
    """
    p = NUMPY_OPS.native(_native(packed, "packed"))
    if p.dtype != np.uint8 or p.ndim != 2:
        raise ValueError(f"packed must be a 2-D uint8 array [N, K/8], got dtype {p.dtype} and shape {p.shape}")
    total = 8 * p.shape[1]
    nbits = total if nbits is None else nbits
    if not 0 < nbits <= total:
        raise ValueError(f"nbits must be in [1, {total}] for {p.shape[1]} bytes per code, got {nbits}")
    bits = np.unpackbits(p, axis=1, count=nbits, bitorder="little")
    return (bits.astype(np.int8) * 2 - 1).astype(np.int8)


def pack_codes_padded(codes: np.ndarray) -> np.ndarray:
    """Pack +-1 codes [N, K] of any length K into bytes [N, ceil(K/8)].

    The last byte is padded with -1 (unset) bits, identical in every code, so padding adds no
    Hamming distance.
    """
    padding = -codes.shape[1] % 8
    if padding:
        codes = np.concatenate([codes, -np.ones((codes.shape[0], padding), dtype=codes.dtype)], axis=1)
    return pack_codes(codes)
