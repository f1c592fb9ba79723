"""Retrieval evaluation during training: the protocol's database and query sets, the teacher as an
encoder, the JSON-lines record of every evaluation and the teacher checkpoints."""

import json
import os
import sys
from typing import Any, Dict, Optional, Tuple

import torch

from dinov2 import distributed
from dinov2.checkpoint import has_fsdp_modules
from dinov2.data.builders import make_eval_dataset
from dinov2.eval.encode import extract_codes
from dinov2.eval.metrics import evaluate_codes, selection_value
from dinov2.models.hashing_network import HashingNetwork
from dinov2.utils.config import ConfigError


class _FSDPTeacherEncoder(torch.nn.Module):
    """HashingNetwork's computation through FSDP units' ``__call__`` (FSDP gathers parameters only there)."""

    def __init__(self, backbone, hash_head, dtype: torch.dtype):
        super().__init__()
        self.backbone = backbone
        self.hash_head = hash_head
        self.dtype = dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = self.backbone(images, is_training=True)
            return self.hash_head(out["x_norm_clstoken"], out["x_norm_patchtokens"], view="global")["codes"]


class RetrievalEvaluator:
    """Database and query sets of the protocol, and the JSON-lines record of every evaluation.

    Args:
        cfg: the configuration (``evaluation.*``, ``data.*``, ``crops.global_crops_size``).
        root: the dataset root.
        device: where the encoder runs.
    """

    def __init__(self, cfg, root: str, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.select_on = cfg.evaluation.select_on

        def dataset(split):
            return make_eval_dataset(cfg, root, split)

        self.db = dataset("train")
        self.holdout = holdout_split(self.db.targets, cfg.evaluation.holdout_ratio)
        self.queries = dataset(self.select_on)
        self.test_queries = dataset("query") if self.select_on == "val" else None
        self.eval_dir = os.path.join(cfg.train.output_dir, "eval")
        self.metrics_file = os.path.join(self.eval_dir, "retrieval_metrics.jsonl")
        self._chance: Dict[int, Dict[str, Any]] = {}
        if distributed.is_main_process():
            os.makedirs(self.eval_dir, exist_ok=True)

    def encode(self, encoder: torch.nn.Module, queries=None):
        """Codes of the database and of ``queries`` (the selection queries by default), on every rank."""
        queries = self.queries if queries is None else queries
        ev = self.cfg.evaluation
        # Progress bars only on a terminal: in log files they would interleave with the log lines.
        bar = sys.stderr.isatty()
        db = extract_codes(encoder, self.db, ev.batch_size, ev.num_workers, self.device, bar, "encoding database")
        q = extract_codes(encoder, queries, ev.batch_size, ev.num_workers, self.device, bar, "encoding queries")
        return db, q

    def evaluate(self, encoder: torch.nn.Module, queries=None) -> Optional[Dict[str, Any]]:
        """Retrieval metrics of ``encoder`` (collective); rank 0 gets the metrics, the others None.

        The metrics are those of the schema (collapse statistics of the database codes included) plus
        the chance level on the same split: ``random_codes_mAP`` and ``random_codes_mAP_tie_aware``.
        """
        (db_codes, db_labels), (q_codes, q_labels) = self.encode(encoder, queries)
        if not distributed.is_main_process():
            return None
        metrics = evaluate_codes(q_codes, db_codes, q_labels, db_labels, topk=self.cfg.evaluation.topk)
        metrics["bit_means"] = bit_means(db_codes)
        if self.holdout is not None and queries is None:
            val, rest = self.holdout
            held = evaluate_codes(db_codes[val], db_codes[rest], db_labels[val], db_labels[rest], self.cfg.evaluation.topk)
            metrics["holdout_mAP"] = selection_value(held, self.cfg.evaluation.topk)
        chance = self.random_code_metrics(queries)
        metrics["random_codes_mAP"] = chance["mAP"]
        metrics["random_codes_mAP_tie_aware"] = chance["mAP_tie_aware"]
        metrics["random_codes_selection_value"] = selection_value(chance, self.cfg.evaluation.topk)
        return metrics

    def random_code_metrics(self, queries=None) -> Dict[str, Any]:
        """Metrics of random +-1 codes (seeded by ``train.seed``) on the same split: the chance level.

        Computed once per query set: the split and the seed do not change during a run.
        """
        queries = self.queries if queries is None else queries
        key = id(queries)
        if key not in self._chance:
            generator = torch.Generator().manual_seed(self.cfg.train.seed)
            bits = self.cfg.hash.hash_bit
            db = torch.randint(0, 2, (len(self.db), bits), generator=generator).float() * 2 - 1
            q = torch.randint(0, 2, (len(queries), bits), generator=generator).float() * 2 - 1
            db_labels = torch.as_tensor(self.db.targets)
            q_labels = torch.as_tensor(queries.targets)
            self._chance[key] = evaluate_codes(q, db, q_labels, db_labels, topk=self.cfg.evaluation.topk)
        return self._chance[key]

    def record(self, metrics: Dict[str, Any], iteration: int, **extra: Any) -> Dict[str, Any]:
        """Append ``{"iteration", ...metrics, "select_on", ...extra}`` to the metrics file (rank 0)."""
        line = {"iteration": iteration, **metrics, "select_on": self.select_on, **extra}
        # One whole line per append, flushed and synced: a kill leaves complete lines (a cut-off last
        # line is dropped on resume by drop_records_from).
        with open(self.metrics_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return line


def holdout_split(labels, ratio: float) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """Database indices (validation queries, the rest): the last ``ratio`` of each class, at least one image
    on each side of a class with two or more; None when ``ratio`` is 0. Multi-hot labels use their first label."""
    if ratio <= 0:
        return None
    labels = torch.as_tensor(labels)
    if labels.ndim > 1:
        labels = labels.float().argmax(dim=1)
    val, rest = [], []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten().tolist()
        n_val = min(max(1, int(round(len(members) * ratio))), len(members) - 1)
        val += members[len(members) - n_val :]
        rest += members[: len(members) - n_val]
    if not val or not rest:
        raise ConfigError(f"evaluation.holdout_ratio={ratio} leaves no validation query or no database image")
    return torch.tensor(sorted(val)), torch.tensor(sorted(rest))


def bit_means(codes: torch.Tensor) -> list:
    """Mean of each bit of ``sign(codes)`` (sign(0) = +1) over the rows [K]: 0 for a bit that splits them in half."""
    signs = torch.where(codes >= 0, 1.0, -1.0)
    return [round(float(v), 4) for v in signs.mean(dim=0)]


def teacher_encoder(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A view of the teacher's backbone and hash head that maps images to codes (no copy).

    Args:
        model: the meta-architecture (``model.teacher.backbone`` and ``model.teacher.hash_head``).
        dtype: the compute dtype of FSDP units (autocast around them).
    """
    if has_fsdp_modules(model.teacher):
        encoder = _FSDPTeacherEncoder(model.teacher.backbone, model.teacher.hash_head, dtype)
    else:
        encoder = HashingNetwork(model.teacher.backbone, model.teacher.hash_head)
    # extract_codes restores the training flag it found: the teacher stays in eval mode.
    return encoder.eval()
