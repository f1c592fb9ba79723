"""SDSH hash head: patch pooling, hash projection and iBOT patch projection on top of the backbone tokens.

It is a peer of `dino_head` and `ibot_head` in the student and teacher, not part of the backbone, so the
backbone keeps the public DINOv2 layout. Submodule names follow the reference SDSH checkpoint
(`patch_attn_*.attention_net.0/2`, `patch_attn_*.norm`, `hash_layer.0/2`, `ibot_layer_patch`), renamed
here to `pool_global`, `pool_local`, `hash_layer`, `patch_proj`.
"""

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from dinov2.configs import POOLINGS

# Cells per side of the "grid" pooling: the patch tokens averaged over a GRID_SIDE x GRID_SIDE grid.
GRID_SIDE = 2
VIEWS = ("global", "local")
# LayerNorm eps of the pooled descriptor, as in the DINOv2 backbone and the reference.
_NORM_EPS = 1e-6


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _check_num_patches(pool: nn.Module, patch_tokens: torch.Tensor) -> None:
    """A pooling with one parameter or cell per patch position must get the N it was built for."""
    n = patch_tokens.shape[1]
    if n != pool.num_patches:
        raise ValueError(
            f"{type(pool).__name__} built for num_patches={pool.num_patches} got {n} patch tokens "
            f"(patch_tokens shape {tuple(patch_tokens.shape)})"
        )


class AttentionWeightedPooling(nn.Module):
    """Attention-weighted pooling (AWP) of the patch tokens of one crop size.

    A gate computed from the CLS token and the mean patch token gives one weight per patch position,
    so the module is tied to a number of patches N.

    Args:
        embed_dim: backbone width D.
        num_patches: number of patch tokens N of the crops this pooling serves.
    """

    def __init__(self, embed_dim: int, num_patches: int) -> None:
        super().__init__()
        if embed_dim <= 0 or num_patches <= 0:
            raise ValueError(
                f"AttentionWeightedPooling needs embed_dim > 0 and num_patches > 0, got {embed_dim} and {num_patches}"
            )
        self.num_patches = num_patches
        self.attention_net = nn.Sequential(
            nn.Linear(2 * embed_dim, embed_dim),
            nn.GELU(),
            nn.Linear(embed_dim, num_patches),
        )
        self.norm = nn.LayerNorm(2 * embed_dim, eps=_NORM_EPS)

    def forward(self, cls_token: torch.Tensor, patch_tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            cls_token: [B, D] normalised CLS token.
            patch_tokens: [B, N, D] normalised patch tokens, N = num_patches.

        Returns:
            pooled: [B, 2D] LayerNorm(concat(cls, mean_n(w_n * P_n))).
            weights: [B, N] patch weights in (0, 1).
        """
        _check_num_patches(self, patch_tokens)
        gate_input = torch.cat([cls_token, patch_tokens.mean(dim=1)], dim=-1)  # [B, 2D]
        weights = torch.sigmoid(self.attention_net(gate_input))  # [B, N]
        weighted_mean = (patch_tokens * weights.unsqueeze(-1)).mean(dim=1)  # [B, D]
        pooled = self.norm(torch.cat([cls_token, weighted_mean], dim=-1))
        return pooled, weights


class MeanPooling(nn.Module):
    """Plain mean of the patch tokens next to the CLS token (the "w/o AWP" ablation).

    Args:
        embed_dim: backbone width D.
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        if embed_dim <= 0:
            raise ValueError(f"MeanPooling needs embed_dim > 0, got {embed_dim}")
        self.norm = nn.LayerNorm(2 * embed_dim, eps=_NORM_EPS)

    def forward(self, cls_token: torch.Tensor, patch_tokens: torch.Tensor) -> Tuple[torch.Tensor, None]:
        """
        Args:
            cls_token: [B, D] normalised CLS token.
            patch_tokens: [B, N, D] normalised patch tokens.

        Returns:
            pooled: [B, 2D] LayerNorm(concat(cls, mean_n P_n)).
            weights: None (no learned patch weights).
        """
        return self.norm(torch.cat([cls_token, patch_tokens.mean(dim=1)], dim=-1)), None


class GridPooling(nn.Module):
    """CLS token next to the patch tokens averaged over a coarse grid of the crop (keeps the layout).

    The patch grid (side s = sqrt(N)) is average-pooled to GRID_SIDE x GRID_SIDE cells; each cell is
    projected (one shared linear map) to D / GRID_SIDE^2 features and the cells are concatenated in
    raster order, so the descriptor keeps where in the crop the content lies, which a mean over the
    patches loses.

    Args:
        embed_dim: backbone width D, a multiple of GRID_SIDE^2.
        num_patches: number of patch tokens N, a square.
    """

    def __init__(self, embed_dim: int, num_patches: int) -> None:
        super().__init__()
        cells = GRID_SIDE * GRID_SIDE
        side = int(round(num_patches**0.5)) if num_patches > 0 else 0
        if embed_dim <= 0 or embed_dim % cells != 0:
            raise ValueError(f"GridPooling needs embed_dim a positive multiple of {cells}, got {embed_dim}")
        if side * side != num_patches or num_patches <= 0:
            raise ValueError(f"GridPooling needs a square number of patches, got {num_patches}")
        self.num_patches = num_patches
        self.side = side
        self.cell_proj = nn.Linear(embed_dim, embed_dim // cells)
        self.norm = nn.LayerNorm(2 * embed_dim, eps=_NORM_EPS)

    def forward(self, cls_token: torch.Tensor, patch_tokens: torch.Tensor) -> Tuple[torch.Tensor, None]:
        """
        Args:
            cls_token: [B, D] normalised CLS token.
            patch_tokens: [B, N, D] normalised patch tokens, N = num_patches.

        Returns:
            pooled: [B, 2D] LayerNorm(concat(cls, proj(cell_1), ..., proj(cell_G^2))).
            weights: None (no learned patch weights).
        """
        _check_num_patches(self, patch_tokens)
        b, _, d = patch_tokens.shape
        grid = patch_tokens.transpose(1, 2).reshape(b, d, self.side, self.side)
        cells = nn.functional.adaptive_avg_pool2d(grid, GRID_SIDE).flatten(2).transpose(1, 2)  # [B, G^2, D]
        layout = self.cell_proj(cells).flatten(1)  # [B, D]
        return self.norm(torch.cat([cls_token, layout], dim=-1)), None


def _make_pooling(pooling: str, embed_dim: int, num_patches: int) -> nn.Module:
    if pooling == "awp":
        return AttentionWeightedPooling(embed_dim, num_patches)
    if pooling == "mean":
        return MeanPooling(embed_dim)
    if pooling == "grid":
        return GridPooling(embed_dim, num_patches)
    raise ValueError(f"Unknown pooling {pooling!r}; expected one of {POOLINGS}")


class HashHead(nn.Module):
    """Hash head of SDSH: pooled descriptor -> continuous hash codes, plus the iBOT patch projection.

    Args:
        embed_dim: backbone width D.
        hash_bit: code length K (> 0).
        num_patches_global: patch tokens per global crop (e.g. (224/14)^2 = 256).
        num_patches_local: patch tokens per local crop (e.g. (98/14)^2 = 49).
        patch_proj_dim: width of the per-patch projection fed to the iBOT head.
        pooling: "awp" (attention-weighted pooling), "mean" (the "w/o AWP" ablation) or "grid"
            (GridPooling: the layout of the patch tokens on a coarse grid; not in the reference).
    """

    def __init__(
        self,
        embed_dim: int,
        hash_bit: int,
        num_patches_global: int,
        num_patches_local: int,
        patch_proj_dim: int = 256,
        pooling: str = "awp",
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.hash_bit = hash_bit
        self.pooling = pooling
        self.pool_global = _make_pooling(pooling, embed_dim, num_patches_global)
        self.pool_local = _make_pooling(pooling, embed_dim, num_patches_local)
        self.hash_layer = nn.Sequential(
            nn.Linear(2 * embed_dim, 2 * embed_dim),
            nn.GELU(),
            nn.Linear(2 * embed_dim, hash_bit),
        )
        self.patch_proj = nn.Linear(embed_dim, patch_proj_dim)
        self.apply(_init_weights)

    def project_patches(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """
        Args:
            patch_tokens: [..., D] patch tokens (e.g. [B, N, D] or the masked tokens [M, D]).

        Returns:
            [..., patch_proj_dim] the input of the iBOT head.
        """
        return self.patch_proj(patch_tokens)

    def forward(
        self, cls_token: torch.Tensor, patch_tokens: torch.Tensor, view: str = "global"
    ) -> Dict[str, Optional[torch.Tensor]]:
        """
        Args:
            cls_token: [B, D] normalised CLS token of one crop group.
            patch_tokens: [B, N, D] normalised patch tokens of the same crops.
            view: "global" or "local", which pooling (and so which N) to use.

        Returns:
            dict with
            - codes: [B, K] continuous hash codes u (b = sign(u) at evaluation),
            - pooled: [B, 2D] pooled descriptor v,
            - patch_proj: [B, N, patch_proj_dim] per-patch projection z,
            - patch_weights: [B, N] AWP weights, or None with mean pooling.
        """
        if view == "global":
            pool = self.pool_global
        elif view == "local":
            pool = self.pool_local
        else:
            raise ValueError(f"Unknown view {view!r}; expected one of {VIEWS}")
        pooled, weights = pool(cls_token, patch_tokens)
        return {
            "codes": self.hash_layer(pooled),
            "pooled": pooled,
            "patch_proj": self.project_patches(patch_tokens),
            "patch_weights": weights,
        }
