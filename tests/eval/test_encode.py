import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from dinov2.eval.encode import extract_codes
from dinov2.eval.hashing import binarize, mean_average_precision
from dinov2.eval.metrics import evaluate_codes


class ToyImages(Dataset):
    """Image i is filled with the value i; its label is i % 3."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((3, 4, 4), float(i)), i % 3


class MeanCoder(nn.Module):
    hash_bit = 8

    def forward(self, images):
        m = images.mean(dim=(1, 2, 3))  # [B]
        return torch.stack([m - j for j in range(self.hash_bit)], dim=1)


def test_extract_codes_returns_every_image_in_dataset_order():
    codes, labels = extract_codes(MeanCoder(), ToyImages(11), batch_size=4, num_workers=0, device="cpu", progress=False)
    assert codes.shape == (11, 8) and codes.dtype == torch.float32
    assert torch.equal(codes[:, 0], torch.arange(11, dtype=torch.float32))
    assert torch.equal(labels, torch.arange(11) % 3)


def test_extract_codes_restores_training_mode():
    model = MeanCoder().train()
    extract_codes(model, ToyImages(3), batch_size=2, num_workers=0, device="cpu", progress=False)
    assert model.training


def test_evaluate_codes_reports_the_library_metrics():
    g = torch.Generator().manual_seed(0)
    db, q = torch.randn(40, 16, generator=g), torch.randn(10, 16, generator=g)
    db_labels, q_labels = torch.randint(0, 4, (40,), generator=g), torch.randint(0, 4, (10,), generator=g)
    metrics = evaluate_codes(q, db, q_labels, db_labels)
    expected = mean_average_precision(binarize(q), binarize(db), q_labels, db_labels)
    assert metrics["mAP"] == pytest.approx(float(expected), abs=1e-12)
    assert metrics["topk"] == "all" and metrics["bits"] == 16
    assert metrics["num_queries"] == 10 and metrics["num_database"] == 40
    assert "P@10" in metrics and "P@100" not in metrics  # depth above the database size is skipped
    assert 0.0 <= metrics["mAP_tie_aware"] <= 1.0 and 0.0 <= metrics["precision_radius2"] <= 1.0
    assert evaluate_codes(q, db, q_labels, db_labels, topk=5)["topk"] == 5
