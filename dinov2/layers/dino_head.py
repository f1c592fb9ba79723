"""DINO / iBOT projection head: MLP, L2 normalisation, weight-normalised prototypes."""

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import trunc_normal_


def _build_mlp(nlayers: int, in_dim: int, bottleneck_dim: int, hidden_dim: int, use_bn: bool, bias: bool) -> nn.Module:
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim, bias=bias)
    layers = []
    widths = [in_dim] + [hidden_dim] * (nlayers - 1)
    for layer_in, layer_out in zip(widths[:-1], widths[1:]):
        layers.append(nn.Linear(layer_in, layer_out, bias=bias))
        if use_bn:
            layers.append(nn.BatchNorm1d(layer_out))
        layers.append(nn.GELU())
    layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=bias))
    return nn.Sequential(*layers)


def _weight_norm(linear: nn.Linear) -> nn.Linear:
    # The hook-based weight_norm stores `weight_g` / `weight_v`, the names in DINOv2 and SDSH
    # checkpoints; the parametrization version would name them differently.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        return nn.utils.weight_norm(linear)


def _detach_computed_weight(module: nn.Module, inputs, output) -> None:
    # weight_norm keeps the last computed weight as a plain non-leaf attribute, which makes
    # copy.deepcopy fail; keep a detached copy between forwards (each forward recomputes it).
    module.weight = module.weight.detach()


class DINOHead(nn.Module):
    """``mlp`` -> L2 normalise -> ``last_layer`` (weight-normalised Linear, no bias, ``weight_g`` fixed at 1).

    Args:
        in_dim: input width.
        out_dim: number of prototypes.
        use_bn: BatchNorm after each hidden Linear.
        nlayers: Linear layers in ``mlp`` (at least 1).
        hidden_dim: hidden width of ``mlp``.
        bottleneck_dim: output width of ``mlp``.
        mlp_bias: biases in ``mlp``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        use_bn: bool = False,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        mlp_bias: bool = True,
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        self.mlp = _build_mlp(nlayers, in_dim, bottleneck_dim, hidden_dim, use_bn, mlp_bias)
        self.apply(self._init_weights)
        # As in DINOv2, the prototypes keep PyTorch's default Linear init (only their direction matters).
        self.last_layer = _weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1)
        self.last_layer.weight_g.requires_grad = False
        with torch.no_grad():
            self.last_layer.weight = torch._weight_norm(self.last_layer.weight_v, self.last_layer.weight_g, 0)
        self.last_layer.register_forward_hook(_detach_computed_weight)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x [..., in_dim]. Returns: prototype scores [..., out_dim]."""
        x = self.mlp(x)
        # In fp32 whatever the compute dtype: the backward of the norm divides by |x|^3, which
        # underflows to 0 in fp16 for |x| < 4e-3 and turns every gradient into NaN.
        x = F.normalize(x.float(), dim=-1, p=2, eps=1e-12).to(x.dtype)
        return self.last_layer(x)
