"""Cross-view contrastive loss on the hash codes (not in the reference SDSH).

The DINO term is SDSH's only term that ties the codes of two views of one image together, and it does
so through the teacher's prototype targets. When those targets are uniform (the teacher's DINO head
maps every image to nearly one point, as on low-contrast images trained from scratch), nothing asks
two views of an image for the same code. This term asks for it directly: a symmetric InfoNCE between
the L2-normalised codes of the two global crops of a batch, where the other images of the batch are the
negatives, as in the contrastive deep hashing literature (e.g. CIBHash, Qiu et al., IJCAI 2021) and
CLIP's symmetric loss. It also spreads the codes of different images, like KoLeo, but only along what
the two views of an image share.

With several processes each process contrasts its own batch (its images are the negatives), like the
per-process KoLeo term of DINOv2.
"""

import torch
import torch.nn.functional as F
from torch import nn


class CodeContrastiveLoss(nn.Module):
    """Symmetric cross-view InfoNCE: row i of view A must pick row i of view B among all rows of B, and back.

    Args:
        temperature: softmax temperature of the cosine similarities, > 0.
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"CodeContrastiveLoss needs a temperature > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, codes_a: torch.Tensor, codes_b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """
        Args:
            codes_a: [B, K] continuous codes of the first view, B >= 2.
            codes_b: [B, K] codes of the second view of the same images, in the same order.
            eps: guards the normalisation.

        Returns:
            Scalar float32 loss: the mean of the A->B and B->A cross-entropies (ln B for codes that carry
            no information about the image, 0 at best).
        """
        if codes_a.ndim != 2 or codes_a.shape != codes_b.shape or codes_a.shape[0] < 2:
            raise ValueError(
                "CodeContrastiveLoss needs two [B, K] views of the same B >= 2 images, got shapes "
                f"{tuple(codes_a.shape)} and {tuple(codes_b.shape)}"
            )
        a = F.normalize(codes_a.float(), p=2, dim=-1, eps=eps)
        b = F.normalize(codes_b.float(), p=2, dim=-1, eps=eps)
        logits = a @ b.t() / self.temperature  # [B, B]; the diagonal holds the matching views
        labels = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
