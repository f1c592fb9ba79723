"""Encoding a dataset into hash codes and scoring a database/query pair of code sets.

Shared by the periodic evaluation of the training loop and by the command-line retrieval tool.
With several processes, every rank encodes its own shard and the codes of all ranks are gathered
and put back in dataset order, so every image is counted exactly once.
"""

import logging
from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import Dataset

from dinov2.data import make_eval_data_loader
from dinov2.distributed import all_gather_variable, get_global_rank
from dinov2.eval.hashing import (
    binarize,
    mean_average_precision,
    precision_at_k,
    precision_within_radius,
    tie_aware_mean_average_precision,
)

logger = logging.getLogger("dinov2")


@torch.no_grad()
def extract_codes(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    progress: bool = True,
    desc: str = "encoding",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Continuous codes of every image of ``dataset``, in dataset order, on every rank.

    Args:
        model: maps images [B, 3, H, W] to continuous codes [B, K] (e.g. a HashingNetwork).
        dataset: map-style dataset of ``(image, label)``.
        batch_size: images per forward pass.
        num_workers: data loader workers.
        device: where the model runs; images are moved there.
        progress: show a progress bar on rank 0.
        desc: progress bar label.
    Returns:
        codes float32 [N, K] and labels [N] (or [N, C] multi-hot), both on the CPU.
    """
    loader = make_eval_data_loader(dataset, batch_size=batch_size, num_workers=num_workers)
    codes, labels, indices = [], [], []
    iterator = loader
    if progress and get_global_rank() == 0:
        from tqdm import tqdm

        iterator = tqdm(loader, desc=desc, unit="batch", leave=False)
    was_training = model.training
    model.eval()
    try:
        for images, batch_labels, batch_indices in iterator:
            out = model(images.to(device, non_blocking=True))
            codes.append(out.float())
            labels.append(torch.as_tensor(batch_labels).to(device))
            indices.append(torch.as_tensor(batch_indices).to(device))
    finally:
        model.train(was_training)
    if codes:
        local_codes, local_labels, local_indices = torch.cat(codes), torch.cat(labels), torch.cat(indices)
    else:
        # A rank whose shard is empty still joins the gathers.
        k = _code_length(model)
        local_codes = torch.empty(0, k, device=device)
        local_labels = torch.empty(0, dtype=torch.long, device=device)
        local_indices = torch.empty(0, dtype=torch.long, device=device)
    all_codes = all_gather_variable(local_codes)
    all_labels = all_gather_variable(local_labels)
    all_indices = all_gather_variable(local_indices)
    order = torch.argsort(all_indices)
    if all_indices.numel() != len(dataset) or not torch.equal(
        all_indices[order].cpu(), torch.arange(len(dataset))
    ):
        raise RuntimeError(
            f"gathered {all_indices.numel()} codes for a dataset of {len(dataset)} images: "
            "some image was encoded twice or not at all"
        )
    return all_codes[order].cpu(), all_labels[order].cpu()


def _code_length(model: nn.Module) -> int:
    for candidate in (model, getattr(model, "hash_head", None)):
        if candidate is not None and hasattr(candidate, "hash_bit"):
            return int(candidate.hash_bit)
    raise ValueError("cannot infer the code length of an empty shard: the model has no hash_bit attribute")


def evaluate_codes(
    query_codes: torch.Tensor,
    db_codes: torch.Tensor,
    query_labels: torch.Tensor,
    db_labels: torch.Tensor,
    topk: Optional[int] = None,
    precision_ks: Tuple[int, ...] = (10, 100),
    radius: int = 2,
) -> Dict[str, float]:
    """Retrieval metrics of binarised query codes against binarised database codes.

    Args:
        query_codes: continuous or binary codes [Q, K].
        db_codes: continuous or binary codes [N, K].
        query_labels: class indices [Q] or multi-hot [Q, C].
        db_labels: class indices [N] or multi-hot [N, C].
        topk: depth of the mAP (None: mAP@all, the paper's metric).
        precision_ks: depths of the reported precision@k (those above N are skipped).
        radius: Hamming radius of the reported precision within a radius.
    Returns:
        A dict with mAP, mAP_tie_aware, P@k, precision within the radius and the counts.
    """
    q = binarize(query_codes)
    d = binarize(db_codes)
    metrics = {
        "mAP": float(mean_average_precision(q, d, query_labels, db_labels, topk=topk)),
        "mAP_tie_aware": float(tie_aware_mean_average_precision(q, d, query_labels, db_labels, topk=topk)),
        "topk": topk if topk is not None else "all",
    }
    for k in precision_ks:
        if k <= d.shape[0]:
            metrics[f"P@{k}"] = float(precision_at_k(q, d, query_labels, db_labels, k=k))
    metrics[f"precision_radius{radius}"] = float(precision_within_radius(q, d, query_labels, db_labels, radius=radius))
    metrics.update({"num_queries": int(q.shape[0]), "num_database": int(d.shape[0]), "bits": int(q.shape[1])})
    return metrics
