"""Code collapse: how much of the code space a set of binary codes actually uses.

A hashing model can map most images to a few codes (or all of them to one), which makes every
distance a tie: the stable tie-break then ranks by database order and the mAP says little. These
statistics of the database codes show it directly:

- ``distinct_codes`` and ``distinct_codes_fraction``: distinct codes, and their count over N;
- ``largest_bucket_fraction``: the share of the database in the most frequent code;
- ``constant_bits_fraction``: the share of bits with ``|mean| > CONSTANT_BIT_MEAN`` over the
  database (in {-1,+1}), i.e. bits that (almost) never change;
- ``bit_entropy``: the mean over bits of the entropy (in bits, 0 to 1) of each bit's value;
- ``collapse``: the verdict, ``"full"``, ``"partial"`` or ``"ok"`` (see ``collapse_verdict``).
"""

from typing import Any, Dict, Optional

import numpy as np

from .backends import NUMPY_OPS
from .codes import ArrayLike, _code_bits, unpack_codes

CONSTANT_BIT_MEAN = 0.95
# Full collapse: fewer distinct codes than this share of the database, or more than this share of constant bits.
FULL_DISTINCT_FRACTION = 0.01
FULL_CONSTANT_BITS_FRACTION = 0.5
# Partial collapse (only judged from PARTIAL_MIN_BITS bits on, where distinct codes are expected for every
# image): fewer distinct codes than this share of the database, or one code holding more than this share.
PARTIAL_DISTINCT_FRACTION = 0.5
PARTIAL_BUCKET_FRACTION = 0.05
PARTIAL_MIN_BITS = 32

COLLAPSE_KEYS = (
    "distinct_codes",
    "distinct_codes_fraction",
    "largest_bucket_fraction",
    "constant_bits_fraction",
    "bit_entropy",
    "collapse",
)


def collapse_verdict(
    num_codes: int, bits: int, distinct_codes: int, largest_bucket: int, constant_bits_fraction: float
) -> str:
    """``"full"``, ``"partial"`` or ``"ok"`` for code statistics.

    Full: distinct codes < 1% of the codes, or more than half of the bits constant. Partial (32 bits
    or more): distinct codes < 50% of the codes, or one code shared by more than 5% of them (a bucket
    of one code is never a collision, which matters for very small sets). Otherwise ok.

    Args:
        num_codes: N, the number of codes.
        bits: K, bits per code.
        distinct_codes: distinct codes among the N.
        largest_bucket: how many of the N share the most frequent code.
        constant_bits_fraction: share of the K bits that are constant (see the module docstring).
    """
    if distinct_codes < FULL_DISTINCT_FRACTION * num_codes or constant_bits_fraction > FULL_CONSTANT_BITS_FRACTION:
        return "full"
    if bits >= PARTIAL_MIN_BITS and (
        distinct_codes < PARTIAL_DISTINCT_FRACTION * num_codes
        or (largest_bucket > 1 and largest_bucket > PARTIAL_BUCKET_FRACTION * num_codes)
    ):
        return "partial"
    return "ok"


def code_collapse_stats(codes: ArrayLike, nbits: Optional[int] = None) -> Dict[str, Any]:
    """Collapse statistics of a set of binary codes (normally the retrieval database).

    Args:
        codes: binary codes [N, K] in {-1,+1} or {0,1} (torch or numpy), or, with ``nbits``, the
            uint8 bytes [N, ceil(K/8)] of ``pack_codes``.
        nbits: K for packed codes; None for unpacked ones.
    Returns:
        ``{"distinct_codes", "distinct_codes_fraction", "largest_bucket_fraction",
        "constant_bits_fraction", "bit_entropy", "collapse"}`` as Python numbers and a string.
    """
    if nbits is not None:
        codes = unpack_codes(codes, nbits)
    bits = NUMPY_OPS.native(_code_bits(codes, "codes"))  # bool [N, K]
    n, k = bits.shape
    # Distinct rows of the packed bits: one byte string per code.
    packed = np.ascontiguousarray(np.packbits(bits, axis=1))
    _, counts = np.unique(packed.view(np.dtype((np.void, packed.shape[1]))).ravel(), return_counts=True)
    p = bits.mean(axis=0, dtype=np.float64)  # [K] share of +1 per bit
    constant = np.abs(2.0 * p - 1.0) > CONSTANT_BIT_MEAN
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -(np.where(p > 0, p * np.log2(p), 0.0) + np.where(p < 1, (1 - p) * np.log2(1 - p), 0.0))
    largest = int(counts.max())
    constant_fraction = float(constant.mean())
    return {
        "distinct_codes": int(counts.size),
        "distinct_codes_fraction": float(counts.size / n),
        "largest_bucket_fraction": float(largest / n),
        "constant_bits_fraction": constant_fraction,
        "bit_entropy": float(entropy.mean()),
        "collapse": collapse_verdict(n, k, int(counts.size), largest, constant_fraction),
    }


def describe_collapse(stats: Dict[str, Any], num_codes: int) -> str:
    """One line with the figures of ``code_collapse_stats``, for logs and summaries."""
    return (
        f"{stats['distinct_codes']} distinct codes for {num_codes} database images "
        f"({100 * stats['distinct_codes_fraction']:.1f}%), largest bucket {100 * stats['largest_bucket_fraction']:.1f}% "
        f"of the database, {100 * stats['constant_bits_fraction']:.0f}% constant bits, "
        f"mean bit entropy {stats['bit_entropy']:.3f}"
    )
