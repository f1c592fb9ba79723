import pytest
import torch

from dinov2.layers import PatchEmbed


def test_patch_embedding_equals_per_patch_linear_map():
    torch.manual_seed(0)
    embed = PatchEmbed(img_size=28, patch_size=7, in_chans=3, embed_dim=16)
    assert embed.num_patches == 16 and embed.patches_resolution == (4, 4)
    x = torch.randn(2, 3, 28, 35)
    out = embed(x)
    assert out.shape == (2, 4 * 5, 16)
    # Patch at row 1, column 3 (row-major token index 1 * 5 + 3).
    patch = x[:, :, 7:14, 21:28].reshape(2, -1)
    expected = patch @ embed.proj.weight.reshape(16, -1).T + embed.proj.bias
    torch.testing.assert_close(out[:, 8], expected, atol=1e-5, rtol=1e-5)


def test_indivisible_input_names_the_sizes():
    embed = PatchEmbed(img_size=28, patch_size=7, embed_dim=8)
    with pytest.raises(ValueError, match="30x28.*7x7"):
        embed(torch.randn(1, 3, 30, 28))


def test_indivisible_img_size_is_refused():
    with pytest.raises(ValueError, match="img_size"):
        PatchEmbed(img_size=30, patch_size=7)
