"""Soft-target cross-entropy -sum_k t_k log softmax(s / T)_k per row, in one autograd node.

The unfused form (``log_softmax`` of the logits divided by T, a product with the targets, a sum)
writes three full [R, K] tensors in the forward pass (four from bf16 logits), keeps the log-softmax for the backward pass
and writes three more there. With K = 65536 prototypes and the masked patches of a batch as rows,
those are the largest tensors of a training step on the CPU. Here the forward pass writes one and
keeps only per-row numbers, and the backward pass rebuilds the softmax in one buffer, in place
(m_r = max_k s_rk / T):

    loss_r = lse_r * sum_k t_rk - sum_k t_rk (s_rk / T - m_r),  lse_r = logsumexp_k(s_rk / T - m_r)
    dloss_r / ds_rk = (softmax(s_r / T)_k * sum_j t_rj - t_rk) / T

Values equal the unfused form to float32 rounding (``tests/loss/test_soft_cross_entropy.py``).
"""

import torch


class _SoftCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
        # float32 throughout, also under autocast (which would run the dot product in bf16)
        with torch.autocast(logits.device.type, enabled=False):
            scaled = logits.float() / temperature  # the one full-size temporary of the forward pass
            # shift each row by its maximum first: no cancellation between lse and the dot product
            row_max = scaled.amax(dim=-1, keepdim=True)
            scaled.sub_(row_max)
            lse = torch.logsumexp(scaled, dim=-1)
            targets = targets.float()
            target_mass = targets.sum(dim=-1)
            # the per-row dot product without a full-size product tensor
            rows_t = targets.unsqueeze(-2).flatten(0, -3)
            rows_s = scaled.unsqueeze(-1).flatten(0, -3)
            dot = torch.bmm(rows_t, rows_s).reshape(lse.shape)
            del scaled, rows_s
        ctx.save_for_backward(logits, targets, row_max, lse, target_mass)
        ctx.temperature = temperature
        return lse * target_mass - dot

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        logits, targets, row_max, lse, target_mass = ctx.saved_tensors
        temperature = ctx.temperature
        with torch.autocast(logits.device.type, enabled=False):
            grad = logits.float() / temperature  # a new buffer: the saved logits are never written
            grad.sub_(row_max).sub_(lse.unsqueeze(-1)).exp_().mul_(target_mass.unsqueeze(-1)).sub_(targets)
            grad.mul_((grad_output.float() / temperature).unsqueeze(-1))
        return grad.to(logits.dtype), None, None


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row cross-entropy between target distributions and softmax(logits / temperature).

    Args:
        logits: [..., K] student logits (any float dtype; computed in float32).
        targets: [..., K] target weights, usually probabilities (no gradient flows into them).
        temperature: the student temperature T > 0.

    Returns:
        [...] float32: -sum_k targets_k * log_softmax(logits / T)_k.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"soft_cross_entropy: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    if not temperature > 0:
        raise ValueError(f"soft_cross_entropy: temperature must be > 0, got {temperature}")
    if logits.ndim < 2:
        raise ValueError(f"soft_cross_entropy: logits need a row and a class dimension, got shape {tuple(logits.shape)}")
    return _SoftCrossEntropy.apply(logits, targets.detach(), float(temperature))
