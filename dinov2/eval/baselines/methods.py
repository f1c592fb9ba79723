"""Classical unsupervised hashing baselines: LSH, PCAH, ITQ and Spectral Hashing.

Each method is fitted on real-valued features of the retrieval database (never on the queries) and
maps features to binary codes in {-1, +1} (sign(0) = +1, as for SDSH codes):

- ``lsh``: random Gaussian projections of the centred features (Charikar 2002; the sign-random-
  projection LSH of the hashing literature). Any number of bits.
- ``pcah``: the top ``bits`` principal directions, sign of the projection.
- ``itq``: PCA to ``bits`` dimensions, then the rotation R minimising the quantization loss
  ``||B - V R||_F^2`` by alternating B = sign(V R) and the orthogonal Procrustes solution for R,
  50 iterations from a random rotation (Gong & Lazebnik, CVPR 2011 / TPAMI 2013).
- ``sh``: Spectral Hashing (Weiss, Torralba & Fergus, NIPS 2008): PCA to ``min(bits, dim)``
  dimensions, each assumed uniform on its observed range [a_k, b_k]; the one-dimensional Laplacian
  eigenfunctions ``cos(m pi (x_k - a_k) / (b_k - a_k))`` (m >= 1) are ranked by their analytical
  eigenvalue, which grows with ``(m / (b_k - a_k))^2``, and the ``bits`` smallest are thresholded at 0.

Fitting is deterministic for a fixed ``seed`` (only LSH and ITQ draw random numbers) and uses numpy
in float64. The command-line tool ``dinov2/eval/baselines`` evaluates the four methods on the
split and metric of the training-time evaluation.
"""

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]

METHODS = ("lsh", "pcah", "itq", "sh")
ITQ_ITERATIONS = 50

__all__ = ["METHODS", "BaselineError", "HashingBaseline", "fit_baseline"]


class BaselineError(ValueError):
    """Features, bit length or method name a baseline cannot be fitted with (or encode with)."""


def _as_features(features: ArrayLike, name: str = "features") -> np.ndarray:
    """float64 numpy [N, D] after checking shape, emptiness and finiteness."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().float().numpy()
    if not isinstance(features, np.ndarray):
        raise BaselineError(f"{name} must be a numpy array or torch tensor, got {type(features).__name__}")
    if features.ndim != 2:
        raise BaselineError(f"{name} must be a 2-D array [num_items, dim], got shape {tuple(features.shape)}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise BaselineError(f"{name} is empty (shape {tuple(features.shape)}); need at least one item of one dimension")
    if features.dtype.kind not in "biuf":
        raise BaselineError(f"{name} must be real numbers, got dtype {features.dtype}")
    x = features.astype(np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        shown = ", ".join(str(r) for r in rows[:8]) + (", ..." if len(rows) > 8 else "")
        raise BaselineError(f"{name} contains NaN or inf values, in {len(rows)} row(s): {shown}")
    return x


def _sign(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1, -1).astype(np.int8)


def _principal_directions(centred: np.ndarray, count: int) -> Tuple[np.ndarray, np.ndarray]:
    """The ``count`` leading eigenvectors [D, count] of the covariance and their eigenvalues.

    Each direction's sign is fixed (its largest-magnitude component positive), so the result does not
    depend on the eigen-solver's arbitrary choice of sign.
    """
    covariance = centred.T @ centred / centred.shape[0]  # [D, D]
    values, vectors = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(-values, kind="stable")[:count]
    values, vectors = values[order], vectors[:, order]
    pivot = np.argmax(np.abs(vectors), axis=0)
    signs = np.where(vectors[pivot, np.arange(count)] < 0, -1.0, 1.0)
    return vectors * signs, values


class HashingBaseline:
    """A fitted baseline: ``encode(features)`` gives int8 codes in {-1, +1} of shape [N, bits].

    Attributes:
        method: the method name (one of METHODS).
        bits: code length.
        dim: feature dimension it was fitted on.
        mean: the database mean [dim], removed before projecting.
        projection: the linear map [dim, p] applied to centred features (p = bits, except SH: min(bits, dim)).
    """

    def __init__(self, method: str, bits: int, mean: np.ndarray, projection: np.ndarray):
        self.method = method
        self.bits = bits
        self.dim = mean.shape[0]
        self.mean = mean
        self.projection = projection

    def project(self, features: ArrayLike) -> np.ndarray:
        """Real values [N, bits] whose signs are the codes."""
        x = _as_features(features)
        if x.shape[1] != self.dim:
            raise BaselineError(
                f"features have dimension {x.shape[1]} but the {self.method} baseline was fitted on dimension {self.dim}"
            )
        return (x - self.mean) @ self.projection

    def encode(self, features: ArrayLike) -> np.ndarray:
        """Binary codes of ``features`` [N, dim]: int8 [N, bits] in {-1, +1}."""
        return _sign(self.project(features))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(method={self.method!r}, bits={self.bits}, dim={self.dim})"


class SpectralHashing(HashingBaseline):
    """Spectral Hashing: bit i is the sign of ``cos(m_i pi (v_{k_i} - a_{k_i}) / (b_{k_i} - a_{k_i}))``.

    Attributes (beyond HashingBaseline's):
        low, high: the range [a_k, b_k] of each PCA coordinate v_k on the database [p].
        modes: int array [bits, 2]: (PCA coordinate k, frequency m >= 1) of each bit, smallest
            eigenvalue first.
        eigenvalues: ``(m pi / (b_k - a_k))^2`` of each bit (the order of the analytical eigenvalues).
    """

    def __init__(self, bits, mean, projection, low, high, modes, eigenvalues):
        super().__init__("sh", bits, mean, projection)
        self.low, self.high = low, high
        self.modes, self.eigenvalues = modes, eigenvalues

    def project(self, features: ArrayLike) -> np.ndarray:
        v = super().project(features)  # [N, p]
        k, m = self.modes[:, 0], self.modes[:, 1]
        width = (self.high - self.low)[k]
        return np.cos(m * math.pi * (v[:, k] - self.low[k]) / width)  # [N, bits]


def spectral_modes(widths: Sequence[float], bits: int) -> Tuple[np.ndarray, np.ndarray]:
    """The ``bits`` one-dimensional modes of smallest analytical eigenvalue for uniform ranges ``widths``.

    Mode (k, m) along a coordinate uniform on a range of width w_k has eigenvalue increasing in
    ``(m pi / w_k)^2`` (Weiss et al. 2008, eq. 5); m = 0 is the constant function and never a bit.
    Ties are broken by coordinate, then frequency.

    Returns:
        (modes int64 [bits, 2] of (k, m), their ``(m pi / w_k)^2`` [bits]).
    """
    widths = np.asarray(widths, dtype=np.float64)
    # Along any coordinate, frequencies above ``bits`` are never among the ``bits`` smallest.
    k, m = np.meshgrid(np.arange(len(widths)), np.arange(1, bits + 1), indexing="ij")
    k, m = k.ravel(), m.ravel()
    omega2 = (m * math.pi / widths[k]) ** 2
    order = np.lexsort((m, k, omega2))[:bits]
    return np.stack([k[order], m[order]], axis=1), omega2[order]


def _check_bits(bits, dim: int, method: str) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits <= 0:
        raise BaselineError(f"bits must be a positive integer, got {bits!r}")
    if method in ("pcah", "itq") and bits > dim:
        raise BaselineError(
            f"bits={bits} is larger than the feature dimension {dim}: {method} takes {bits} principal "
            f"directions of {dim}-dimensional features (use at most {dim} bits, or lsh/sh)"
        )


def _random_rotation(rng: np.random.Generator, size: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((size, size)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)  # Haar-distributed orthogonal matrix


def itq_rotation(
    v: np.ndarray, iterations: int = ITQ_ITERATIONS, rng: Optional[np.random.Generator] = None
) -> Tuple[np.ndarray, List[float]]:
    """Iterative quantization of PCA-projected data ``v`` [N, c].

    Alternates B = sign(V R) and R = argmin_{R orthogonal} ||B - V R||_F (orthogonal Procrustes:
    with V^T B = U S W^T, R = U W^T). Neither step can increase the loss.

    Returns:
        (R [c, c], quantization loss ``||B - V R||_F^2`` at the start and after each iteration).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    rotation = _random_rotation(rng, v.shape[1])
    b = _sign(v @ rotation).astype(np.float64)
    losses = [float(np.sum((b - v @ rotation) ** 2))]
    for _ in range(iterations):
        u, _, wt = np.linalg.svd(v.T @ b)
        rotation = u @ wt
        projected = v @ rotation
        b = _sign(projected).astype(np.float64)
        losses.append(float(np.sum((b - projected) ** 2)))
    return rotation, losses


def fit_baseline(name: str, features: ArrayLike, bits: int, seed: int = 0) -> HashingBaseline:
    """Fit one classical hashing method on database features.

    Args:
        name: ``lsh``, ``pcah``, ``itq`` or ``sh``.
        features: real features of the database [N, D] (numpy or torch); finite, N >= 1.
        bits: code length K (at most D for pcah and itq).
        seed: seed of the random projections (lsh) and of ITQ's initial rotation.
    Returns:
        A HashingBaseline whose ``encode`` maps [M, D] features to int8 codes [M, K] in {-1, +1}.
        ITQ's has ``quantization_losses`` (start and each of the 50 iterations).
    Raises:
        BaselineError: unknown name, a non-positive or too large bit length, or empty, non-2-D or
            non-finite features (the message names the value).
    """
    if name not in METHODS:
        raise BaselineError(f"unknown baseline method {name!r} (expected one of {', '.join(METHODS)})")
    x = _as_features(features)
    _check_bits(bits, x.shape[1], name)
    bits = int(bits)
    mean = x.mean(axis=0)
    centred = x - mean
    rng = np.random.default_rng(seed)
    if name == "lsh":
        return HashingBaseline(name, bits, mean, rng.standard_normal((x.shape[1], bits)))
    if name == "pcah":
        directions, _ = _principal_directions(centred, bits)
        return HashingBaseline(name, bits, mean, directions)
    if name == "itq":
        directions, _ = _principal_directions(centred, bits)
        rotation, losses = itq_rotation(centred @ directions, ITQ_ITERATIONS, rng)
        model = HashingBaseline(name, bits, mean, directions @ rotation)
        model.quantization_losses = losses
        return model
    directions, _ = _principal_directions(centred, min(bits, x.shape[1]))
    v = centred @ directions
    low, high = v.min(axis=0), v.max(axis=0)
    width = high - low
    # A coordinate with no spread (constant, or beyond the data's rank) carries no information.
    width = np.where(width > 0, width, np.finfo(np.float64).tiny)
    modes, eigenvalues = spectral_modes(width, bits)
    return SpectralHashing(bits, mean, directions, low, low + width, modes, eigenvalues)


def describe(model: HashingBaseline) -> Dict[str, Any]:
    """Method-specific facts of a fitted baseline for a results row (ITQ: its quantization loss)."""
    info: Dict[str, Any] = {}
    if hasattr(model, "quantization_losses"):
        info["itq_loss_start"] = model.quantization_losses[0]
        info["itq_loss_end"] = model.quantization_losses[-1]
    return info
