import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dinov2.layers import DINOHead

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_forward_is_normalised_mlp_times_normalised_prototypes():
    torch.manual_seed(0)
    head = DINOHead(16, 40, nlayers=3, hidden_dim=32, bottleneck_dim=8)
    x = torch.randn(5, 16)
    m = head.mlp
    hidden = F.gelu(F.gelu(x @ m[0].weight.T + m[0].bias) @ m[2].weight.T + m[2].bias)
    z = F.normalize(hidden @ m[4].weight.T + m[4].bias, dim=-1)
    prototypes = head.last_layer.weight_v / head.last_layer.weight_v.norm(dim=1, keepdim=True)
    torch.testing.assert_close(head(x), z @ prototypes.T)


def test_init_and_frozen_weight_g():
    torch.manual_seed(0)
    head = DINOHead(16, 40, hidden_dim=64, bottleneck_dim=8)
    assert torch.equal(head.last_layer.weight_g, torch.ones(40, 1))
    assert not head.last_layer.weight_g.requires_grad
    for index in (0, 2, 4):
        assert torch.equal(head.mlp[index].bias, torch.zeros_like(head.mlp[index].bias))
    # 64 x 64 samples of N(0, 0.02^2): the empirical std is within a few percent.
    assert 0.018 < head.mlp[2].weight.std().item() < 0.022
    head(torch.randn(3, 16)).sum().backward()
    assert head.last_layer.weight_g.grad is None and head.last_layer.weight_v.grad is not None


def test_construction_is_silent_and_copies_after_forward():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        head = DINOHead(8, 10, hidden_dim=16, bottleneck_dim=4)
    head(torch.randn(2, 8)).sum().backward()
    clone = copy.deepcopy(head)
    x = torch.randn(2, 8)
    torch.testing.assert_close(clone(x), head(x))


@pytest.mark.skipif(not (FIXTURES / "sdsh_teacher_keys.json").is_file(), reason="shared fixtures not present")
def test_keys_match_reference_sdsh_checkpoint():
    reference = json.loads((FIXTURES / "sdsh_teacher_keys.json").read_text())
    for prefix, in_dim in (("dino_head.", 64), ("ibot_head.", 256)):
        expected = {k[len(prefix) :]: v for k, v in reference.items() if k.startswith(prefix)}
        head = DINOHead(in_dim, 65536, nlayers=3, hidden_dim=2048, bottleneck_dim=256)
        assert {k: list(v.shape) for k, v in head.state_dict().items()} == expected
