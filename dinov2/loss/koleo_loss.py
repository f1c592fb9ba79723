"""KoLeo regulariser: spreads L2-normalised outputs by pushing each one away from its nearest neighbour.

Sablayrolles et al., "Spreading vectors for similarity search" (ICLR 2019), as used by DINOv2; here on
the student's global-crop hash codes.
"""

import torch
import torch.nn.functional as F
from torch import nn

# Below every cosine similarity (>= -1), so a sample can never be chosen as its own neighbour.
_SELF_SIMILARITY = -2.0


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy estimator turned into a loss: -mean_i log(min_j != i ||x_i - x_j||)."""

    @staticmethod
    def nearest_neighbor_indices(x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: [B, D] L2-normalised rows.

        Returns:
            [B] index of each row's nearest other row (largest inner product).
        """
        similarities = x @ x.t()  # [B, B]
        similarities.fill_diagonal_(_SELF_SIMILARITY)
        return similarities.argmax(dim=1)

    def forward(self, student_output: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """
        Args:
            student_output: [B, D] outputs of one crop chunk, B >= 2.
            eps: guards the normalisation, the distance and the logarithm.

        Returns:
            Scalar float32 loss.
        """
        if student_output.ndim != 2 or student_output.shape[0] < 2:
            raise ValueError(
                f"KoLeoLoss needs a [B, D] batch with B >= 2 to find neighbours, got shape {tuple(student_output.shape)}"
            )
        x = F.normalize(student_output.float(), p=2, dim=-1, eps=eps)
        with torch.no_grad():
            neighbors = self.nearest_neighbor_indices(x)
        distances = F.pairwise_distance(x, x[neighbors], p=2, eps=eps)  # [B]
        return -torch.log(distances + eps).mean()
