import pytest
import torch

from dinov2.layers import Attention, MemEffAttention


def naive_attention(module: Attention, x: torch.Tensor) -> torch.Tensor:
    batch, tokens, dim = x.shape
    heads = module.num_heads
    qkv = x @ module.qkv.weight.T + module.qkv.bias
    q, k, v = qkv.reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-2, -1) / (dim // heads) ** 0.5, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
    return out @ module.proj.weight.T + module.proj.bias


@pytest.mark.parametrize("attn_class", [Attention, MemEffAttention])
def test_attention_matches_explicit_softmax(attn_class):
    torch.manual_seed(0)
    module = attn_class(32, num_heads=4, qkv_bias=True).eval()
    x = torch.randn(3, 7, 32)
    torch.testing.assert_close(module(x), naive_attention(module, x), atol=1e-5, rtol=1e-5)


def test_state_dict_names():
    assert sorted(Attention(16, num_heads=2, qkv_bias=True).state_dict()) == [
        "proj.bias",
        "proj.weight",
        "qkv.bias",
        "qkv.weight",
    ]
    assert "qkv.bias" not in Attention(16, num_heads=2, qkv_bias=False).state_dict()


def test_attn_bias_without_xformers_is_refused():
    module = MemEffAttention(16, num_heads=2)
    with pytest.raises(RuntimeError, match="attn_bias"):
        module(torch.randn(1, 3, 16), attn_bias=object())


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="30.*4"):
        Attention(30, num_heads=4)
