"""DINO self-distillation loss on the image-level outputs (here: the DINO head applied to the hash codes).

Also holds the two teacher-side pieces that the iBOT patch loss shares with it: the EMA centre of the
teacher outputs and the Sinkhorn-Knopp normalisation, both correct with one process or several.
"""

import math
from typing import List, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dinov2.distributed import get_global_size, is_enabled
from dinov2.loss.soft_cross_entropy import soft_cross_entropy


@torch.no_grad()
def normalized_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the rows of ``probabilities`` [..., K] divided by ln K, in [0, 1].

    1 means every row is uniform: teacher targets like that give the student no signal, whatever the
    student outputs. Rows are the last dimension; every other dimension is averaged over.
    """
    p = probabilities.detach().float()
    n_classes = p.shape[-1]
    if n_classes < 2:
        raise ValueError(f"normalized_entropy needs at least 2 classes, got {n_classes}")
    # 0 * log 0 = 0: the clamp only guards the log.
    entropy = -(p * p.clamp_min(torch.finfo(torch.float32).tiny).log()).sum(-1)
    return entropy.mean() / math.log(n_classes)


@torch.no_grad()
def sinkhorn_knopp(
    teacher_output: torch.Tensor,
    teacher_temp: float,
    n_samples_total: Union[int, torch.Tensor],
    n_iterations: int = 3,
) -> torch.Tensor:
    """Sinkhorn-Knopp assignment of samples to prototypes, over the samples of all processes.

    Alternates "each prototype receives 1/K of the mass" and "each sample carries 1/B of the mass"; the
    prototype sums are all-reduced so every process normalises with the global marginals.

    Args:
        teacher_output: [B_local, K] teacher logits of this process.
        teacher_temp: teacher temperature.
        n_samples_total: B, the number of samples summed over all processes.
        n_iterations: number of (prototype, sample) normalisation rounds.

    Returns:
        [B_local, K] float32 assignments; each row sums to 1.
    """
    logits = teacher_output.float() / teacher_temp
    # Subtracting the global maximum keeps exp() finite; the first normalisation cancels the shift.
    if logits.numel() > 0:
        shift = logits.max()
    else:
        shift = torch.tensor(float("-inf"), device=logits.device)
    if is_enabled():
        dist.all_reduce(shift, op=dist.ReduceOp.MAX)
    q = torch.exp(logits - shift).t()  # [K, B_local]
    n_prototypes = q.shape[0]

    total = q.sum()
    if is_enabled():
        dist.all_reduce(total)
    q /= total
    for _ in range(n_iterations):
        prototype_mass = q.sum(dim=1, keepdim=True)  # [K, 1], over the samples of every process
        if is_enabled():
            dist.all_reduce(prototype_mass)
        q /= prototype_mass
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True)  # samples are local: no reduction needed
        q /= n_samples_total
    # Scale each sample's mass from 1/B to 1 so rows are probability distributions.
    q *= n_samples_total
    return q.t()


class CenteredTeacherLoss(nn.Module):
    """Shared teacher centring: an EMA `center` buffer updated from all-reduced batch means.

    The update is split in two as in DINOv2: `_start_center_update` launches the (asynchronous)
    all-reduce of the batch sum, and the next teacher softmax applies it, so communication overlaps
    with the student forward pass.

    Args:
        center_shape: shape of the `center` buffer (its last dimension is the number of prototypes).
        student_temp: student temperature.
        center_momentum: EMA momentum m in center <- m * center + (1 - m) * batch_mean.
    """

    def __init__(self, center_shape: Tuple[int, ...], student_temp: float, center_momentum: float) -> None:
        super().__init__()
        if center_shape[-1] <= 0:
            raise ValueError(f"Number of prototypes must be positive, got {center_shape[-1]}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(*center_shape))
        self._pending_sum = None
        self._pending_count = 0
        self._pending_handle = None

    @torch.no_grad()
    def _start_center_update(self, batch_sum: torch.Tensor, count: int) -> None:
        """Begin the centre update with this process's sum over `count` items ([K] or [1, K])."""
        # A second update before the first was applied must not silently drop the first.
        self.apply_center_update()
        self._pending_sum = batch_sum.float().reshape(self.center.shape[-1])
        self._pending_count = count
        self._pending_handle = dist.all_reduce(self._pending_sum, async_op=True) if is_enabled() else None

    @torch.no_grad()
    def apply_center_update(self) -> None:
        """Fold the pending batch mean (if any) into `center`."""
        if self._pending_sum is None:
            return
        if self._pending_handle is not None:
            self._pending_handle.wait()
        batch_mean = self._pending_sum / (self._pending_count * get_global_size())
        center = self.center.to(batch_mean.device)
        self.center = center * self.center_momentum + batch_mean.reshape(center.shape) * (1 - self.center_momentum)
        self._pending_sum = None
        self._pending_handle = None

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # A checkpoint taken between an update's start and its application must hold the updated
        # centre, or a resumed run would drop that batch from the EMA and diverge from an uninterrupted one.
        self.apply_center_update()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The loaded centre already includes every update of the run that saved it.
        self._pending_sum = None
        self._pending_handle = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_output: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Centred, sharpened teacher probabilities, after applying the pending centre update.

        Args:
            teacher_output: [..., K] teacher logits.
            teacher_temp: teacher temperature.

        Returns:
            [..., K] float32 softmax((teacher_output - center) / teacher_temp).
        """
        self.apply_center_update()
        center = self.center.to(teacher_output.device).reshape(-1)  # [K], broadcasts over any leading dims
        return F.softmax((teacher_output.float() - center) / teacher_temp, dim=-1)


class DINOLoss(CenteredTeacherLoss):
    """Cross-entropy between teacher probabilities and student log-probabilities, summed over crop pairs.

    Args:
        out_dim: number of prototypes K of the DINO head.
        student_temp: student temperature (0.1).
        center_momentum: EMA momentum of the teacher centre (0.9).
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__((1, out_dim), student_temp, center_momentum)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_output: torch.Tensor, teacher_temp: float, n_iterations: int = 3
    ) -> torch.Tensor:
        """Sinkhorn-Knopp teacher probabilities (alternative to centring).

        Args:
            teacher_output: [B_local, K] teacher logits; every process holds the same B_local.
            teacher_temp: teacher temperature.
            n_iterations: Sinkhorn-Knopp rounds.

        Returns:
            [B_local, K] float32, rows summing to 1.
        """
        n_samples_total = teacher_output.shape[0] * get_global_size()
        return sinkhorn_knopp(teacher_output, teacher_temp, n_samples_total, n_iterations)

    def forward(
        self, student_output_list: Sequence[torch.Tensor], teacher_out_softmaxed_centered_list: List[torch.Tensor]
    ) -> torch.Tensor:
        """Sum over (student chunk, teacher chunk) pairs of the batch-mean cross-entropy.

        The caller decides which pairs enter (e.g. swapping the teacher's two global crops so that no
        crop is matched with itself) and how the sum is normalised.

        Args:
            student_output_list: chunks [B, K] of student logits.
            teacher_out_softmaxed_centered_list: chunks [B, K] of teacher probabilities.

        Returns:
            Scalar float32 loss.
        """
        # The cross-entropy is linear in the targets: one term per student chunk against the sum of
        # the teacher chunks equals the sum over every pair.
        teachers = [t.float() for t in teacher_out_softmaxed_centered_list]
        if not teachers:
            return 0.0
        teacher_sum = teachers[0] if len(teachers) == 1 else torch.stack(teachers).sum(dim=0)
        total_loss = 0.0
        for student_output in student_output_list:
            total_loss = total_loss + soft_cross_entropy(student_output, teacher_sum, self.student_temp).mean()
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """Start the EMA update of the centre with the mean of `teacher_output` over all processes.

        Args:
            teacher_output: [B_local, K] teacher logits; applied at the next `softmax_center_teacher`.
        """
        self._start_center_update(teacher_output.float().sum(dim=0), teacher_output.shape[0])
