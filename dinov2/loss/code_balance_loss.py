"""Bit balance and decorrelation of the hash codes (not in the reference SDSH; off by default).

Hamming ranking spends every bit alike, so a bit that is +1 for almost every image, or one that copies
another bit, is a bit lost. Hashing the frozen features with PCA and a rotation (ITQ) gets centred,
uncorrelated bits by construction; SDSH's terms ask for neither. This term asks for both, on the
batch's codes through ``tanh`` (a bounded stand-in for ``sign`` whose gradient does not vanish at the
quantization term's |u| = 1):

- balance: the mean over bits of the squared batch mean of each bit, 0 when each bit splits the batch
  in half;
- decorrelation: the mean squared off-diagonal entry of the bits' correlation matrix over the batch,
  0 for uncorrelated bits (the bit-independence constraint of the hashing literature, e.g. Spectral
  Hashing's, and the covariance term of VICReg, Bardes et al., ICLR 2022).

With several processes each process uses its own batch, like the per-process KoLeo term of DINOv2.
"""

from typing import Dict

import torch
from torch import nn


class CodeBalanceLoss(nn.Module):
    """``balance + decorrelation`` of a batch of continuous codes [N, K] (N >= 2); see the module docstring."""

    def parts(self, codes: torch.Tensor, eps: float = 1e-6) -> Dict[str, torch.Tensor]:
        """The two terms separately: ``{"balance", "decorrelation"}``, scalar float32 tensors."""
        if codes.ndim != 2 or codes.shape[0] < 2:
            raise ValueError(f"CodeBalanceLoss needs codes [N, K] with N >= 2, got shape {tuple(codes.shape)}")
        t = torch.tanh(codes.float())
        mean = t.mean(dim=0)
        balance = (mean**2).mean()
        centred = t - mean
        std = centred.pow(2).mean(dim=0).add(eps).sqrt()
        z = centred / std
        corr = z.t() @ z / t.shape[0]  # [K, K], ones on the diagonal
        k = corr.shape[0]
        if k < 2:
            decorrelation = corr.new_zeros(())
        else:
            off = corr - torch.diag(torch.diagonal(corr))
            decorrelation = off.pow(2).sum() / (k * (k - 1))
        return {"balance": balance, "decorrelation": decorrelation}

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        parts = self.parts(codes)
        return parts["balance"] + parts["decorrelation"]
