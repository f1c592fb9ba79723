import pytest
import torch
import torch.nn.functional as F

from dinov2.layers.hash_head import POOLINGS, AttentionWeightedPooling, GridPooling, HashHead, MeanPooling
from dinov2.utils.config import merge_config, validate_config

EMBED_DIM = 32
HASH_BIT = 16
N_GLOBAL = 16  # a 4x4 patch grid
N_LOCAL = 4  # a 2x2 patch grid
PROJ_DIM = 24


def _tokens(batch, n_patches, seed=0):
    generator = torch.Generator().manual_seed(seed)
    cls_token = torch.randn(batch, EMBED_DIM, generator=generator)
    patch_tokens = torch.randn(batch, n_patches, EMBED_DIM, generator=generator)
    return cls_token, patch_tokens


def _randomise(module):
    # Freshly initialised biases and norms are 0/1; random values make the formula checks meaningful.
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.3)


def _awp_reference(pool, cls_token, patch_tokens):
    linear1, linear2 = pool.attention_net[0], pool.attention_net[2]
    gate_input = torch.cat([cls_token, patch_tokens.sum(dim=1) / patch_tokens.shape[1]], dim=1)
    hidden = F.gelu(F.linear(gate_input, linear1.weight, linear1.bias))
    weights = torch.sigmoid(F.linear(hidden, linear2.weight, linear2.bias))
    weighted = torch.einsum("bn,bnd->bd", weights, patch_tokens) / patch_tokens.shape[1]
    pooled = F.layer_norm(
        torch.cat([cls_token, weighted], dim=1), (2 * EMBED_DIM,), pool.norm.weight, pool.norm.bias, eps=1e-6
    )
    return pooled, weights


@pytest.mark.parametrize("view, n_patches", [("global", N_GLOBAL), ("local", N_LOCAL)])
def test_output_shapes(view, n_patches):
    head = HashHead(EMBED_DIM, HASH_BIT, N_GLOBAL, N_LOCAL, patch_proj_dim=PROJ_DIM)
    out = head(*_tokens(3, n_patches), view=view)
    assert out["codes"].shape == (3, HASH_BIT)
    assert out["pooled"].shape == (3, 2 * EMBED_DIM)
    assert out["patch_proj"].shape == (3, n_patches, PROJ_DIM)
    assert out["patch_weights"].shape == (3, n_patches)
    assert head.project_patches(torch.randn(7, EMBED_DIM)).shape == (7, PROJ_DIM)


def test_state_dict_layout_matches_reference_names():
    head = HashHead(EMBED_DIM, HASH_BIT, N_GLOBAL, N_LOCAL, patch_proj_dim=PROJ_DIM)
    shapes = {name: tuple(t.shape) for name, t in head.state_dict().items()}
    d2 = 2 * EMBED_DIM
    assert shapes == {
        "pool_global.attention_net.0.weight": (EMBED_DIM, d2),
        "pool_global.attention_net.0.bias": (EMBED_DIM,),
        "pool_global.attention_net.2.weight": (N_GLOBAL, EMBED_DIM),
        "pool_global.attention_net.2.bias": (N_GLOBAL,),
        "pool_global.norm.weight": (d2,),
        "pool_global.norm.bias": (d2,),
        "pool_local.attention_net.0.weight": (EMBED_DIM, d2),
        "pool_local.attention_net.0.bias": (EMBED_DIM,),
        "pool_local.attention_net.2.weight": (N_LOCAL, EMBED_DIM),
        "pool_local.attention_net.2.bias": (N_LOCAL,),
        "pool_local.norm.weight": (d2,),
        "pool_local.norm.bias": (d2,),
        "hash_layer.0.weight": (d2, d2),
        "hash_layer.0.bias": (d2,),
        "hash_layer.2.weight": (HASH_BIT, d2),
        "hash_layer.2.bias": (HASH_BIT,),
        "patch_proj.weight": (PROJ_DIM, EMBED_DIM),
        "patch_proj.bias": (PROJ_DIM,),
    }


def test_initialisation():
    torch.manual_seed(0)
    head = HashHead(64, 64, 256, 49)
    for name, parameter in head.named_parameters():
        if "norm.weight" in name:
            assert torch.all(parameter == 1), name
        elif name.endswith("bias"):
            assert torch.all(parameter == 0), name
        else:
            # trunc_normal(std 0.02) clipped at +-2: the sample std is close to 0.02 and values are bounded.
            assert parameter.abs().max() <= 2.0, name
            assert abs(parameter.std().item() - 0.02) < 0.004, name


def test_awp_matches_formula():
    pool = AttentionWeightedPooling(EMBED_DIM, N_GLOBAL)
    _randomise(pool)
    cls_token, patch_tokens = _tokens(4, N_GLOBAL)
    pooled, weights = pool(cls_token, patch_tokens)
    expected_pooled, expected_weights = _awp_reference(pool, cls_token, patch_tokens)
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(pooled, expected_pooled)
    assert torch.all((weights > 0) & (weights < 1))


def test_head_codes_match_formula():
    head = HashHead(EMBED_DIM, HASH_BIT, N_GLOBAL, N_LOCAL, patch_proj_dim=PROJ_DIM)
    _randomise(head)
    cls_token, patch_tokens = _tokens(3, N_LOCAL, seed=5)
    out = head(cls_token, patch_tokens, view="local")
    pooled, weights = _awp_reference(head.pool_local, cls_token, patch_tokens)
    first, second = head.hash_layer[0], head.hash_layer[2]
    codes = F.linear(F.gelu(F.linear(pooled, first.weight, first.bias)), second.weight, second.bias)
    projection = patch_tokens @ head.patch_proj.weight.t() + head.patch_proj.bias
    torch.testing.assert_close(out["codes"], codes)
    torch.testing.assert_close(out["pooled"], pooled)
    torch.testing.assert_close(out["patch_weights"], weights)
    torch.testing.assert_close(out["patch_proj"], projection)
    # Codes are continuous (no tanh): random weights give entries outside [-1, 1].
    assert out["codes"].abs().max() > 1


def test_mean_pooling_matches_formula():
    pool = MeanPooling(EMBED_DIM)
    _randomise(pool)
    cls_token, patch_tokens = _tokens(4, 9)
    pooled, weights = pool(cls_token, patch_tokens)
    concat = torch.cat([cls_token, patch_tokens.sum(dim=1) / 9], dim=1)
    mean = concat.mean(dim=1, keepdim=True)
    var = ((concat - mean) ** 2).mean(dim=1, keepdim=True)
    expected = (concat - mean) / torch.sqrt(var + 1e-6) * pool.norm.weight + pool.norm.bias
    torch.testing.assert_close(pooled, expected)
    assert weights is None
    assert [name for name, _ in pool.named_parameters()] == ["norm.weight", "norm.bias"]


def test_mean_pooling_head():
    head = HashHead(EMBED_DIM, HASH_BIT, N_GLOBAL, N_LOCAL, pooling="mean")
    assert isinstance(head.pool_global, MeanPooling) and isinstance(head.pool_local, MeanPooling)
    out = head(*_tokens(2, N_GLOBAL), view="global")
    assert out["patch_weights"] is None
    assert out["codes"].shape == (2, HASH_BIT)


def test_grid_pooling_matches_formula():
    pool = GridPooling(EMBED_DIM, N_GLOBAL)
    _randomise(pool)
    cls_token, patch_tokens = _tokens(3, N_GLOBAL, seed=4)
    pooled, weights = pool(cls_token, patch_tokens)
    assert weights is None and pooled.shape == (3, 2 * EMBED_DIM)
    # The 4x4 patch grid in raster order; cell (i, j) of the 2x2 grid averages rows 2i, 2i+1 and columns 2j, 2j+1.
    grid = patch_tokens.reshape(3, 4, 4, EMBED_DIM)
    cells = [grid[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(dim=(1, 2)) for i in range(2) for j in range(2)]
    layout = torch.cat([F.linear(c, pool.cell_proj.weight, pool.cell_proj.bias) for c in cells], dim=1)
    expected = F.layer_norm(
        torch.cat([cls_token, layout], dim=1), (2 * EMBED_DIM,), pool.norm.weight, pool.norm.bias, eps=1e-6
    )
    torch.testing.assert_close(pooled, expected)


def test_grid_pooling_keeps_the_layout_that_mean_pooling_loses():
    cls_token, patch_tokens = _tokens(2, N_GLOBAL, seed=5)
    flipped = patch_tokens.reshape(2, 4, 4, EMBED_DIM).flip(2).reshape(2, N_GLOBAL, EMBED_DIM)  # mirror left-right
    grid, mean = GridPooling(EMBED_DIM, N_GLOBAL), MeanPooling(EMBED_DIM)
    _randomise(grid)
    _randomise(mean)
    torch.testing.assert_close(mean(cls_token, flipped)[0], mean(cls_token, patch_tokens)[0])
    assert (grid(cls_token, flipped)[0] - grid(cls_token, patch_tokens)[0]).abs().max() > 1e-2


def test_grid_pooling_head_on_both_crop_sizes():
    head = HashHead(EMBED_DIM, HASH_BIT, N_GLOBAL, N_LOCAL, pooling="grid")
    assert isinstance(head.pool_global, GridPooling) and isinstance(head.pool_local, GridPooling)
    for view, n in (("global", N_GLOBAL), ("local", N_LOCAL)):
        out = head(*_tokens(2, n), view=view)
        assert out["codes"].shape == (2, HASH_BIT) and out["patch_weights"] is None


def test_grid_pooling_on_an_odd_patch_grid():
    # ViT-S/14 local crops of 98 px: a 7x7 patch grid, split into overlapping cells by adaptive pooling.
    pool = GridPooling(EMBED_DIM, 49)
    cls_token, patch_tokens = _tokens(2, 49, seed=6)
    pooled, _ = pool(cls_token, patch_tokens)
    assert pooled.shape == (2, 2 * EMBED_DIM) and torch.isfinite(pooled).all()


def test_grid_pooling_errors():
    with pytest.raises(ValueError, match="multiple of 4, got 30"):
        GridPooling(30, N_GLOBAL)
    with pytest.raises(ValueError, match="square number of patches, got 12"):
        GridPooling(EMBED_DIM, 12)
    with pytest.raises(ValueError, match=rf"num_patches={N_GLOBAL}.*got {N_LOCAL}"):
        GridPooling(EMBED_DIM, N_GLOBAL)(*_tokens(2, N_LOCAL))


@pytest.mark.parametrize("pooling", POOLINGS)
def test_config_accepts_every_pooling(pooling):
    # Through validation, not by comparing lists: a choice the head builds must pass the config check.
    assert validate_config(merge_config(None, [f"hash.pooling={pooling}"])).hash.pooling == pooling


@pytest.mark.parametrize("pooling", ["awp", "mean", "grid"])
@pytest.mark.parametrize("view, n_patches", [("global", N_GLOBAL), ("local", N_LOCAL)])
def test_gradients_reach_every_used_parameter(pooling, view, n_patches):
    head = HashHead(EMBED_DIM, HASH_BIT, N_GLOBAL, N_LOCAL, patch_proj_dim=PROJ_DIM, pooling=pooling)
    out = head(*_tokens(3, n_patches), view=view)
    (out["codes"].square().sum() + out["patch_proj"].square().sum()).backward()
    unused = "pool_local" if view == "global" else "pool_global"
    for name, parameter in head.named_parameters():
        if name.startswith(unused):
            assert parameter.grad is None, name
        else:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
            assert parameter.grad.abs().sum() > 0, name


def test_errors():
    with pytest.raises(ValueError, match="'max'"):
        HashHead(EMBED_DIM, HASH_BIT, N_GLOBAL, N_LOCAL, pooling="max")
    head = HashHead(EMBED_DIM, HASH_BIT, N_GLOBAL, N_LOCAL)
    with pytest.raises(ValueError, match=rf"num_patches={N_GLOBAL}.*got {N_LOCAL}"):
        head(*_tokens(2, N_LOCAL), view="global")
    with pytest.raises(ValueError, match="'middle'"):
        head(*_tokens(2, N_GLOBAL), view="middle")
