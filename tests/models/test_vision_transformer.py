import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dinov2.models.vision_transformer import DinoVisionTransformer, vit_small

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DEVICE = torch.device(os.environ.get("SDSH_TEST_DEVICE", "cpu"))
PATCH = 7


def tiny_vit(**kwargs) -> DinoVisionTransformer:
    torch.manual_seed(0)
    options = dict(img_size=28, patch_size=PATCH, embed_dim=32, depth=2, num_heads=2, init_values=1e-5, block_chunks=0)
    options.update(kwargs)
    return DinoVisionTransformer(**options).to(DEVICE)


def random_masks(batch: int, tokens: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    masks = torch.rand(batch, tokens, generator=generator) < 0.4
    masks[:, 0] = True  # at least one masked patch per image
    return masks.to(DEVICE)


def images(batch: int, height: int, width: int = None, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, height, width or height, generator=generator).to(DEVICE)


@pytest.mark.parametrize("num_register_tokens, block_chunks", [(0, 0), (2, 2)])
def test_output_shapes_tensor_and_list(num_register_tokens, block_chunks):
    model = tiny_vit(num_register_tokens=num_register_tokens, block_chunks=block_chunks).eval()
    out = model.forward_features(images(3, 28), masks=random_masks(3, 16))
    assert out["x_norm_clstoken"].shape == (3, 32)
    assert out["x_norm_regtokens"].shape == (3, num_register_tokens, 32)
    assert out["x_norm_patchtokens"].shape == (3, 16, 32)
    assert out["x_prenorm"].shape == (3, 1 + num_register_tokens + 16, 32)
    assert out["masks"].shape == (3, 16)

    global_crops, local_crops = images(4, 28), images(6, 14, seed=1)
    for masks_list in (None, [random_masks(4, 16), None]):
        outs = model.forward_features([global_crops, local_crops], masks_list)
        assert [o["x_norm_patchtokens"].shape for o in outs] == [(4, 16, 32), (6, 4, 32)]
        assert [o["x_norm_clstoken"].shape for o in outs] == [(4, 32), (6, 32)]
        # Each group gives what it gives alone: the groups do not interact.
        for group, group_masks, group_out in zip([global_crops, local_crops], masks_list or [None, None], outs):
            alone = model.forward_features(group, group_masks)
            torch.testing.assert_close(group_out["x_prenorm"], alone["x_prenorm"])
    assert model(global_crops).shape == (4, 32)  # eval forward: head(CLS) with head = Identity


def test_masked_patches_are_replaced_by_mask_token():
    model = tiny_vit(num_register_tokens=1).eval()
    with torch.no_grad():
        model.mask_token.normal_()
    x, masks = images(2, 28), random_masks(2, 16)
    out = model.forward_features(x, masks)

    patches = model.patch_embed(x)
    patches[masks] = model.mask_token[0]
    tokens = torch.cat([model.cls_token.expand(2, -1, -1), patches], dim=1) + model.pos_embed
    tokens = torch.cat([tokens[:, :1], model.register_tokens.expand(2, -1, -1), tokens[:, 1:]], dim=1)
    for block in model.blocks:
        tokens = block(tokens)
    torch.testing.assert_close(out["x_prenorm"], tokens)
    unmasked = model.forward_features(x)
    assert not torch.allclose(out["x_norm_clstoken"], unmasked["x_norm_clstoken"])


@pytest.mark.parametrize("block_chunks", [0, 2])
def test_every_parameter_gets_a_finite_gradient(block_chunks):
    model = tiny_vit(num_register_tokens=2, block_chunks=block_chunks, drop_path_rate=0.05).train()
    outs = model([images(2, 28), images(3, 14, seed=1)], [random_masks(2, 16), None], is_training=True)
    generator = torch.Generator().manual_seed(1)
    loss = sum(
        (o[name] * torch.randn(o[name].shape, generator=generator).to(DEVICE)).sum()
        for o in outs
        for name in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens")
    )
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def test_mask_token_gets_no_gradient_without_masks():
    model = tiny_vit().train()
    model(images(2, 28), is_training=True)["x_norm_clstoken"].sum().backward()
    assert model.mask_token.grad is None
    assert model.cls_token.grad is not None


def test_chunked_blocks_keep_global_indices_and_outputs():
    flat, chunked = tiny_vit(depth=2, block_chunks=0).eval(), tiny_vit(depth=2, block_chunks=2).eval()
    assert chunked.chunked_blocks and not flat.chunked_blocks
    names = set(chunked.state_dict())
    assert "blocks.0.0.attn.qkv.weight" in names and "blocks.1.1.attn.qkv.weight" in names
    assert not any(name.startswith("blocks.1.0.") for name in names)  # Identity padding has no weights
    remapped = {}
    for key, value in chunked.state_dict().items():
        parts = key.split(".")
        remapped[".".join(parts[:1] + parts[2:]) if parts[0] == "blocks" else key] = value
    flat.load_state_dict(remapped, strict=True)
    x = images(2, 28)
    torch.testing.assert_close(chunked(x), flat(x))
    for a, b in zip(chunked.get_intermediate_layers(x, n=2), flat.get_intermediate_layers(x, n=2)):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not (FIXTURES / "dinov2_vits14_keys.json").is_file(), reason="shared fixtures not present")
def test_vit_small_state_dict_equals_public_checkpoint_layout():
    expected = json.loads((FIXTURES / "dinov2_vits14_keys.json").read_text())
    model = vit_small(patch_size=14, img_size=518, init_values=1e-5, block_chunks=0)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected
    assert (model.embed_dim, model.num_features, model.patch_size, model.n_blocks) == (384, 384, 14, 12)


@pytest.mark.parametrize("offset, height, width", [(0.1, 42, 42), (0.0, 42, 42), (0.1, 28, 42)])
def test_forward_time_pos_embed_interpolation(offset, height, width):
    model = tiny_vit(interpolate_offset=offset).eval()
    x = images(2, height, width)
    grid = (height // PATCH, width // PATCH)
    dim = model.embed_dim
    patch_pos = model.pos_embed[:, 1:].reshape(1, 4, 4, dim).permute(0, 3, 1, 2)
    if offset:
        scale = ((grid[0] + offset) / 4, (grid[1] + offset) / 4)
        patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", align_corners=False)
    else:
        patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
    expected_pos = torch.cat([model.pos_embed[:, :1], patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)

    tokens = model.prepare_tokens_with_masks(x)
    cls_and_patches = torch.cat([model.cls_token.expand(2, -1, -1), model.patch_embed(x)], dim=1)
    torch.testing.assert_close(tokens, cls_and_patches + expected_pos)
    assert model.forward_features(x)["x_norm_patchtokens"].shape == (2, grid[0] * grid[1], dim)


def test_indivisible_input_size_is_an_error():
    with pytest.raises(ValueError, match="30x28"):
        tiny_vit().forward_features(images(1, 30, 28))


def test_get_intermediate_layers_reshape_and_class_tokens():
    model = tiny_vit(num_register_tokens=1).eval()
    x = images(2, 28, 42)
    layers = model.get_intermediate_layers(x, n=[0, 1], reshape=True, return_class_token=True)
    assert len(layers) == 2
    patches, cls = layers[-1]
    assert patches.shape == (2, 32, 4, 6) and cls.shape == (2, 32)
    out = model.forward_features(x)
    torch.testing.assert_close(cls, out["x_norm_clstoken"])
    torch.testing.assert_close(patches.flatten(2).transpose(1, 2), out["x_norm_patchtokens"])


def test_init_weights():
    model = tiny_vit(num_register_tokens=2)
    assert model.cls_token.abs().max() < 1e-4 and model.register_tokens.abs().max() < 1e-4
    assert torch.equal(model.mask_token, torch.zeros(1, 32))
    assert torch.equal(model.blocks[0].attn.qkv.bias, torch.zeros(96))
    assert 0.015 < model.blocks[0].mlp.fc1.weight.std().item() < 0.025
