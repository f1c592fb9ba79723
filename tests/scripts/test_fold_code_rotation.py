"""scripts/fold_code_rotation.py: the folded hash head gives exactly the ITQ codes of the original's codes."""

import importlib.util
import os

import numpy as np
import pytest
import torch
from torch import nn

from dinov2.eval.baselines.methods import fit_baseline
from dinov2.layers.hash_head import HashHead

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def fold():
    spec = importlib.util.spec_from_file_location("fold_code_rotation", os.path.join(REPO, "scripts", "fold_code_rotation.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_folded_codes_are_the_itq_codes_of_the_original_codes(fold):
    torch.manual_seed(0)
    teacher = nn.ModuleDict({"hash_head": HashHead(embed_dim=8, hash_bit=6, num_patches_global=4, num_patches_local=1)})
    with torch.no_grad():
        for p in teacher.parameters():
            p.normal_(0, 0.5)
    cls, patches = torch.randn(200, 8), torch.randn(200, 4, 8)
    with torch.no_grad():
        codes = teacher["hash_head"](cls, patches)["codes"].double().numpy()
    rotation = fit_baseline("itq", codes, 6, seed=0)
    teacher.load_state_dict(fold.fold_rotation(teacher.state_dict(), rotation.mean, rotation.projection))
    with torch.no_grad():
        folded = teacher["hash_head"](cls, patches)["codes"].double().numpy()
    np.testing.assert_allclose(folded, rotation.project(codes), atol=1e-4)
    assert (np.where(folded >= 0, 1, -1) == rotation.encode(codes)).mean() > 0.999


def test_a_rotation_of_the_wrong_size_is_refused(fold):
    head = nn.ModuleDict({"hash_head": HashHead(embed_dim=8, hash_bit=6, num_patches_global=4, num_patches_local=1)})
    with pytest.raises(ValueError, match=r"\[6, 6\]"):
        fold.fold_rotation(head.state_dict(), np.zeros(6), np.eye(5))
