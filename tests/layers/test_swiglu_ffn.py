import torch
import torch.nn.functional as F

from dinov2.layers import SwiGLUFFN, SwiGLUFFNFused


def test_swiglu_matches_manual_computation():
    torch.manual_seed(0)
    ffn = SwiGLUFFN(8, hidden_features=12)
    x = torch.randn(4, 8)
    x12 = x @ ffn.w12.weight.T + ffn.w12.bias
    expected = (F.silu(x12[:, :12]) * x12[:, 12:]) @ ffn.w3.weight.T + ffn.w3.bias
    torch.testing.assert_close(ffn(x), expected)


def test_fused_hidden_width_is_two_thirds_rounded_to_eight():
    # vit_giant2: 1536 * 4 = 6144 -> 6144 * 2 / 3 = 4096 (already a multiple of 8).
    ffn = SwiGLUFFNFused(1536, hidden_features=6144)
    assert ffn.w12.weight.shape == (2 * 4096, 1536)
    assert ffn.w3.weight.shape == (1536, 4096)
    # 100 * 2 / 3 = 66.67 -> 66 -> rounded up to 72.
    assert SwiGLUFFNFused(10, hidden_features=100).w3.weight.shape == (10, 72)
