import torch

from dinov2.layers import DropPath


def test_identity_in_eval_mode():
    x = torch.randn(8, 3, 4)
    torch.testing.assert_close(DropPath(0.7).eval()(x), x)


def test_training_drops_whole_samples_and_rescales_kept_ones():
    torch.manual_seed(0)
    module = DropPath(0.5).train()
    x = torch.randn(256, 3, 4)
    out = module(x)
    dropped = (out == 0).flatten(1).all(dim=1)
    kept = ~dropped
    torch.testing.assert_close(out[kept], x[kept] / 0.5)
    # About half of 256 samples are dropped (binomial, std 8).
    assert 80 < int(dropped.sum()) < 176
