import torch
from torch import nn

from dinov2.layers import Mlp


def test_mlp_matches_manual_computation():
    torch.manual_seed(0)
    mlp = Mlp(8, hidden_features=24, out_features=5).eval()
    x = torch.randn(2, 3, 8)
    hidden = nn.functional.gelu(x @ mlp.fc1.weight.T + mlp.fc1.bias)
    expected = hidden @ mlp.fc2.weight.T + mlp.fc2.bias
    torch.testing.assert_close(mlp(x), expected)
    assert mlp.fc1.weight.shape == (24, 8) and mlp.fc2.weight.shape == (5, 24)


def test_mlp_without_bias():
    assert sorted(Mlp(8, hidden_features=16, bias=False).state_dict()) == ["fc1.weight", "fc2.weight"]
