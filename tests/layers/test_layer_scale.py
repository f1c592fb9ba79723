import torch

from dinov2.layers import LayerScale


def test_layer_scale_init_and_forward():
    scale = LayerScale(6, init_values=0.5)
    assert list(scale.state_dict()) == ["gamma"]
    torch.testing.assert_close(scale.gamma.detach(), torch.full((6,), 0.5))
    x = torch.randn(2, 3, 6)
    torch.testing.assert_close(scale(x), x * 0.5)


def test_inplace_layer_scale_modifies_input():
    scale = LayerScale(4, init_values=2.0, inplace=True)
    x = torch.ones(1, 4)
    with torch.no_grad():
        scale(x)
    torch.testing.assert_close(x, torch.full((1, 4), 2.0))
