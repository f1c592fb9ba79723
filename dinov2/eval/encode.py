"""Encoding a dataset into hash codes (the metrics of the codes are in ``dinov2.eval.metrics``).

Shared by the periodic evaluation of the training loop and by the command-line retrieval tool.
With several processes, every rank encodes its own shard and the codes of all ranks are gathered
and put back in dataset order, so every image is counted exactly once.
"""

import logging
from typing import Tuple

import torch
from torch import nn
from torch.utils.data import Dataset

from dinov2.data import make_eval_data_loader
from dinov2.distributed import all_gather_variable, get_global_rank

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
    shard: bool = True,
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
        shard: share the dataset among the ranks and gather the codes; False encodes all of it in this
            process, without any collective call (each rank may then encode a dataset of its own).
    Returns:
        codes float32 [N, K] and labels [N] (or [N, C] multi-hot), both on the CPU.
    """
    loader = make_eval_data_loader(dataset, batch_size=batch_size, num_workers=num_workers, shard=shard)
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
    if not shard:
        if not codes:
            return torch.empty(0, _code_length(model)), torch.empty(0, dtype=torch.long)
        return torch.cat(codes).cpu(), torch.cat(labels).cpu()
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
