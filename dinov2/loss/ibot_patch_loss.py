"""iBOT masked-patch self-distillation loss (on the iBOT head outputs of the SDSH patch projections)."""

from typing import Optional, Union

import torch
import torch.distributed as dist

from dinov2.distributed import is_enabled
from dinov2.loss.dino_clstoken_loss import CenteredTeacherLoss, sinkhorn_knopp
from dinov2.loss.soft_cross_entropy import soft_cross_entropy


def _patch_cross_entropy(teacher_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Per-token cross-entropy -sum_k t_k log softmax(s / temp)_k, in float32, over the last dim."""
    return soft_cross_entropy(student_logits, teacher_probs, student_temp)


class iBOTPatchLoss(CenteredTeacherLoss):
    """Cross-entropy between teacher and student patch distributions at the masked positions.

    Each image counts equally: its masked patches are weighted 1/(#masked in that image), and the sum is
    divided by the number of images.

    Args:
        patch_out_dim: number of prototypes K of the iBOT head.
        student_temp: student temperature (0.1).
        center_momentum: EMA momentum of the teacher centre (0.9).
    """

    def __init__(self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__((1, 1, patch_out_dim), student_temp, center_momentum)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self,
        teacher_output: torch.Tensor,
        teacher_temp: float,
        n_masked_patches_tensor: Union[int, torch.Tensor],
        n_iterations: int = 3,
    ) -> torch.Tensor:
        """Sinkhorn-Knopp teacher probabilities of the masked patch tokens.

        Args:
            teacher_output: [M_local, K] teacher logits of this process's masked tokens.
            teacher_temp: teacher temperature.
            n_masked_patches_tensor: M_local (int or one-element tensor); summed over processes here (the
                caller's tensor is left unchanged).
            n_iterations: Sinkhorn-Knopp rounds.

        Returns:
            [M_local, K] float32, rows summing to 1.
        """
        n_total = torch.as_tensor(n_masked_patches_tensor, device=teacher_output.device).clone().float()
        if is_enabled():
            dist.all_reduce(n_total)
        return sinkhorn_knopp(teacher_output, teacher_temp, n_total, n_iterations)

    def forward(
        self, student_patch_tokens: torch.Tensor, teacher_patch_tokens: torch.Tensor, student_masks_flat: torch.Tensor
    ) -> torch.Tensor:
        """Masked-patch loss on full token grids.

        Args:
            student_patch_tokens: [B, N, K] student logits.
            teacher_patch_tokens: [B, N, K] teacher probabilities.
            student_masks_flat: [B, N] bool, True at masked positions.

        Returns:
            Scalar float32: mean over images of the mean cross-entropy over that image's masked patches.
        """
        loss = _patch_cross_entropy(teacher_patch_tokens, student_patch_tokens, self.student_temp)  # [B, N]
        masks = student_masks_flat.float()
        per_image = (loss * masks).sum(dim=-1) / masks.sum(dim=-1).clamp(min=1.0)
        return per_image.mean()

    def forward_masked(
        self,
        student_patch_tokens_masked: torch.Tensor,
        teacher_patch_tokens_masked: torch.Tensor,
        student_masks_flat: torch.Tensor,
        n_masked_patches: Optional[int] = None,
        masks_weight: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Masked-patch loss on the masked tokens only (gathered in row-major order of the masks).

        Args:
            student_patch_tokens_masked: [M, K] student logits at the masked positions.
            teacher_patch_tokens_masked: [M, K] teacher probabilities at the same positions.
            student_masks_flat: [B, N] bool masks of all B images (including unmasked ones).
            n_masked_patches: if given, only the first n tokens are real (the rest is padding).
            masks_weight: [M] weight per token; defaults to 1/(#masked in its image).

        Returns:
            Scalar float32: sum of weighted token cross-entropies divided by B.
        """
        loss = _patch_cross_entropy(teacher_patch_tokens_masked, student_patch_tokens_masked, self.student_temp)
        if masks_weight is None:
            per_image = 1.0 / student_masks_flat.sum(dim=-1).clamp(min=1).float()  # [B]
            masks_weight = per_image.unsqueeze(-1).expand_as(student_masks_flat)[student_masks_flat.bool()]  # [M]
        if n_masked_patches is not None:
            loss = loss[:n_masked_patches]
        return (loss * masks_weight.to(loss.device)).sum() / student_masks_flat.shape[0]

    @torch.no_grad()
    def update_center(self, teacher_patch_tokens: torch.Tensor) -> None:
        """Start the EMA update of the centre with the mean teacher patch logits over all processes.

        Args:
            teacher_patch_tokens: [B, N, K] (mean over the N tokens of each of the B groups, then over
                groups and processes) or [M, K], treated as one group of M tokens, as DINOv2's training
                loop effectively does with the masked tokens of a process.
        """
        if teacher_patch_tokens.ndim == 2:
            teacher_patch_tokens = teacher_patch_tokens.unsqueeze(0)
        if teacher_patch_tokens.ndim != 3:
            raise ValueError(
                f"iBOTPatchLoss.update_center expects [B, N, K] or [M, K], got shape {tuple(teacher_patch_tokens.shape)}"
            )
        group_means = teacher_patch_tokens.float().mean(dim=1)  # [B, K]
        self._start_center_update(group_means.sum(dim=0), teacher_patch_tokens.shape[0])
