"""SDSH training entry point (the DINOv2 trainer with the hash head, losses and retrieval evaluation).

One process on the CPU::

    python dinov2/train/train.py --config-file configs/demo.yaml --output-dir outputs/demo

Several processes (torchrun or SLURM set the torch.distributed variables)::

    torchrun --nproc_per_node 8 dinov2/train/train.py --config-file configs/aid_64bit.yaml \\
        --output-dir runs/aid64 student.pretrained_weights=/weights/dinov2_vits14_pretrain.pth data.root=/data/AID

What a run writes to ``--output-dir``: ``config.yaml`` (the merged configuration), ``log.txt``,
``training_metrics.json`` (one JSON object per logged iteration), ``split_manifest.csv`` (the
database/query split of every file), ``model_<iter>.pth`` / ``model_final.pth`` and the
``last_checkpoint`` tag (resume state), ``eval/retrieval_metrics.jsonl`` (one JSON object per
evaluation) and ``eval/{best,last}/teacher_checkpoint.pth`` (the teacher with the best / latest mAP).

Precision and distribution: CUDA with torch.distributed wraps every student/teacher module in FSDP
(``compute_precision.*``) with a sharded grad scaler for fp16; one CUDA process trains plain modules
under ``torch.autocast`` (GradScaler for fp16); the CPU trains in fp32. Several CPU processes (gloo)
train plain replicas whose student gradients are averaged with all-reduce after each backward pass
(the weights are broadcast from rank 0 first), which keeps the replicas, and so the EMA teachers,
identical.
"""

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from functools import partial
from typing import Any, Dict, List, Optional

import torch
from omegaconf import OmegaConf

from dinov2 import distributed
from dinov2.data import (
    ClassFolderDataset,
    DataAugmentationDINO,
    ImageLoadError,
    MaskingGenerator,
    collate_data_and_cast,
    generate_demo_dataset,
    make_classification_eval_transform,
    make_data_loader,
)
from dinov2.eval.encode import extract_codes
from dinov2.eval.metrics import evaluate_codes, selection_value
from dinov2.fsdp import is_fsdp
from dinov2.fsdp.checkpointer import AtomicPeriodicCheckpointer, FSDPCheckpointer, full_state_dict, has_fsdp_modules
from dinov2.logging import MetricLogger, SmoothedValue, read_jsonl, setup_logging
from dinov2.models.hashing_network import HashingNetwork, build_hashing_network
from dinov2.train.ssl_meta_arch import NonFiniteLossError, SSLMetaArch
from dinov2.utils.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    atomic_write_text,
    drop_records_from,
    load_torch_file,
)
from dinov2.utils.config import ConfigError, get_cfg_from_args, setup
from dinov2.utils.utils import CosineScheduler

logger = logging.getLogger("dinov2")

DEMO_ROOT = "demo"
# Config sections whose values shape the model: a checkpoint is only resumed under the same values.
MODEL_CONFIG_PREFIXES = ("student.", "hash.", "crops.", "dino.head_", "ibot.head_")
# Keys of those sections that do not change a resumed model (the pretrained weights only initialise it).
MODEL_CONFIG_EXEMPT = ("student.pretrained_weights",)
_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_EXAMPLES = """examples:
  # the demo: a generated dataset and a tiny ViT trained from scratch on the CPU (a few minutes)
  python dinov2/train/train.py --config-file configs/demo.yaml --output-dir outputs/demo

  # AID, 64 bits, from the public DINOv2 ViT-S/14 weights, on 8 GPUs
  torchrun --nproc_per_node 8 dinov2/train/train.py --config-file configs/aid_64bit.yaml \\
      --output-dir runs/aid64 data.root=/data/AID student.pretrained_weights=/w/dinov2_vits14_pretrain.pth

  # evaluate the teacher of the last checkpoint of a run (or any checkpoint with MODEL.WEIGHTS=...)
  python dinov2/train/train.py --config-file configs/aid_64bit.yaml --output-dir runs/aid64 --eval-only

Every key=value option must name a key of dinov2/configs/ssl_default_config.yaml.
"""


class NonFiniteTrainingError(RuntimeError):
    """Training stopped because a loss term (or a gradient) became NaN or infinite; nothing of this state was saved.

    Attributes:
        term: the loss term, or ``gradient of student.<module>``.
        iteration: the iteration at which it happened.
    """

    def __init__(self, term: str, iteration: int, value: float, last_checkpoint: str):
        kept = f"the last checkpoint {last_checkpoint} is unchanged" if last_checkpoint else "no checkpoint was written"
        super().__init__(
            f"{term if term.startswith('gradient') else f'loss term {term!r}'} is not finite ({value}) at iteration {iteration}; training stopped without "
            f"saving this state ({kept}). Lower optim.base_lr or optim.clip_grad, or check the data"
        )
        self.term = term
        self.iteration = iteration


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line options of the training entry point.

    Args:
        add_help: add ``-h/--help`` (False when used as a parent parser, e.g. by the SLURM launcher).
    Returns:
        The parser: --config-file, --output-dir, --no-resume, --eval-only and ``key=value`` options.
    """
    parser = argparse.ArgumentParser(
        "SDSH training",
        description="Train SDSH (self-distilled self-supervised hashing) with the DINOv2 trainer, evaluating "
        "the teacher's binary codes by Hamming-ranking retrieval mAP.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=add_help,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML overrides of the default config")
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="start from the initial weights instead of the last checkpoint in --output-dir",
    )
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="only evaluate: the teacher of the last checkpoint in --output-dir, or MODEL.WEIGHTS when set",
    )
    parser.add_argument(
        "--output-dir",
        "--output_dir",
        default="",
        type=str,
        help="directory of the config, logs, checkpoints and evaluation results",
    )
    parser.add_argument(
        "opts",
        help="config overrides as key=value (e.g. hash.hash_bit=32 train.batch_size_per_gpu=32)",
        default=None,
        nargs=argparse.REMAINDER,
    )
    return parser


# ---------------------------------------------------------------------------------------------------
# Schedules and optimizer
# ---------------------------------------------------------------------------------------------------


def build_optimizer(cfg, params_groups: List[Dict]) -> torch.optim.Optimizer:
    """AdamW over the parameter groups (lr and weight decay are set every iteration)."""
    return torch.optim.AdamW(params_groups, betas=(cfg.optim.adamw_beta1, cfg.optim.adamw_beta2))


def build_schedulers(cfg) -> Dict[str, CosineScheduler]:
    """Per-iteration schedules over ``optim.epochs * train.OFFICIAL_EPOCH_LENGTH`` iterations (DINOv2).

    Returns:
        ``lr`` (linear warm-up over ``optim.warmup_epochs`` then cosine to ``optim.min_lr``), ``wd``
        (cosine ``weight_decay`` -> ``weight_decay_end``), ``momentum`` (cosine ``momentum_teacher`` ->
        ``final_momentum_teacher``), ``teacher_temp`` (linear ``warmup_teacher_temp`` -> ``teacher_temp``
        over ``warmup_teacher_temp_epochs``, then constant) and ``last_layer_lr`` (``lr`` but 0 for
        ``freeze_last_layer_epochs``).
    """
    # Ranges (epochs > 0, warm-up and freeze within the epochs) are checked by validate_config.
    epoch_length = cfg.train.OFFICIAL_EPOCH_LENGTH
    total = cfg.optim.epochs * epoch_length
    lr = dict(
        base_value=cfg.optim.lr,
        final_value=cfg.optim.min_lr,
        total_iters=total,
        warmup_iters=cfg.optim.warmup_epochs * epoch_length,
        start_warmup_value=0,
    )
    schedules = {
        "lr": CosineScheduler(**lr),
        "wd": CosineScheduler(cfg.optim.weight_decay, cfg.optim.weight_decay_end, total),
        "momentum": CosineScheduler(cfg.teacher.momentum_teacher, cfg.teacher.final_momentum_teacher, total),
        "teacher_temp": CosineScheduler(
            base_value=cfg.teacher.teacher_temp,
            final_value=cfg.teacher.teacher_temp,
            total_iters=cfg.teacher.warmup_teacher_temp_epochs * epoch_length,
            warmup_iters=cfg.teacher.warmup_teacher_temp_epochs * epoch_length,
            start_warmup_value=cfg.teacher.warmup_teacher_temp,
        ),
        "last_layer_lr": CosineScheduler(**lr),
    }
    schedules["last_layer_lr"].schedule[: cfg.optim.freeze_last_layer_epochs * epoch_length] = 0
    return schedules


def apply_optim_scheduler(optimizer: torch.optim.Optimizer, lr: float, wd: float, last_layer_lr: float) -> None:
    """Set each group's lr and weight decay from its ``lr_multiplier``, ``wd_multiplier`` and ``is_last_layer``."""
    for group in optimizer.param_groups:
        group["weight_decay"] = wd * group["wd_multiplier"]
        group["lr"] = (last_layer_lr if group["is_last_layer"] else lr) * group["lr_multiplier"]


# ---------------------------------------------------------------------------------------------------
# Set-up helpers
# ---------------------------------------------------------------------------------------------------


def select_device(cfg) -> torch.device:
    """The device of ``train.device`` (auto: this process's GPU when CUDA is available, else the CPU)."""
    choice = cfg.train.device
    if choice not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device: unknown value '{choice}' (expected auto, cpu or cuda)")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but CUDA is not available (use train.device=cpu or auto)")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", distributed.get_local_rank() % torch.cuda.device_count())


def _flatten(cfg_dict: Dict, prefix: str = "") -> Dict[str, Any]:
    flat = {}
    for key, value in cfg_dict.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def model_config_differences(old_cfg, new_cfg) -> List[str]:
    """Model-shaping keys (``MODEL_CONFIG_PREFIXES``) whose values differ, as ``key: old -> new``."""
    old = _flatten(OmegaConf.to_container(old_cfg, resolve=True))
    new = _flatten(OmegaConf.to_container(new_cfg, resolve=True))
    keys = sorted(k for k in set(old) | set(new) if k.startswith(MODEL_CONFIG_PREFIXES) and k not in MODEL_CONFIG_EXEMPT)
    return [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in keys if old.get(k) != new.get(k)]


def _has_resume_state(output_dir: str) -> bool:
    return any(name.startswith("last_checkpoint") for name in os.listdir(output_dir)) if os.path.isdir(output_dir) else False


def check_resume_config(new_cfg, output_dir: str) -> None:
    """Refuse to resume the checkpoints of ``output_dir`` under a config that changes the model.

    Raises:
        ConfigError: naming the differing keys, when ``<output_dir>/config.yaml`` and a checkpoint exist.
    """
    saved = os.path.join(output_dir, "config.yaml")
    if not (os.path.isfile(saved) and _has_resume_state(output_dir)):
        return
    try:
        old_cfg = OmegaConf.load(saved)
    except Exception as exc:
        raise ConfigError(f"cannot read {saved}, the config of the checkpoints in {output_dir}: {exc}") from exc
    differences = model_config_differences(old_cfg, new_cfg)
    if differences:
        raise ConfigError(
            f"the checkpoints in {output_dir} were trained with {saved}, which differs in keys that change the model: "
            + "; ".join(differences)
            + ". Resuming would load a checkpoint from another config: use another --output-dir, or keep these values"
        )


def resolve_data_root(cfg) -> str:
    """``data.root``, or the demo dataset generated once under ``<output-dir>/demo_data`` for ``demo``."""
    root = cfg.data.root
    if not root:
        raise ConfigError("data.root is empty: set it to a folder of class folders (or 'demo')")
    if root != DEMO_ROOT:
        return root
    demo_root = os.path.join(cfg.train.output_dir, "demo_data")
    if distributed.is_main_process():
        generate_demo_dataset(
            demo_root,
            num_classes=cfg.data.demo_classes,
            images_per_class=cfg.data.demo_images_per_class,
            image_size=cfg.data.demo_image_size,
        )
    if distributed.is_enabled():
        torch.distributed.barrier()
    return demo_root


def _mixed_precision_dtype(cfg) -> torch.dtype:
    name = cfg.compute_precision.student.backbone.mixed_precision.param_dtype
    if name not in _PRECISIONS:
        raise ConfigError(
            f"compute_precision.student.backbone.mixed_precision.param_dtype: unknown value '{name}' "
            f"(expected one of {', '.join(_PRECISIONS)})"
        )
    return _PRECISIONS[name]


def use_fsdp(device: torch.device) -> bool:
    """FSDP for several CUDA processes; CPU processes train plain replicas (tests may switch FSDP on)."""
    return device.type == "cuda" and distributed.is_enabled()


class TrainingSetup:
    """The model on its device with its precision handling: FSDP, autocast, grad scaler."""

    def __init__(self, cfg, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.fsdp = use_fsdp(device)
        self.dtype = _mixed_precision_dtype(cfg) if self.cuda else torch.float32
        model = SSLMetaArch(cfg).to(device)
        self.scaler = None
        use_scaler = self.cuda and cfg.compute_precision.grad_scaler and self.dtype == torch.float16
        if self.fsdp:
            if not self.cuda:
                broadcast_model(model)
            model.prepare_for_distributed_training()
            if use_scaler:
                from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

                self.scaler = ShardedGradScaler()
        else:
            if distributed.is_enabled():
                broadcast_model(model)
            if use_scaler:
                self.scaler = torch.amp.GradScaler("cuda")
        model.fp16_scaler = self.scaler
        self.model = model
        self.input_dtype = self.dtype

    def autocast(self):
        """Autocast for one CUDA process with plain modules; FSDP casts itself and the CPU runs in fp32."""
        if self.cuda and not self.fsdp and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()


@torch.no_grad()
def broadcast_model(model: torch.nn.Module) -> None:
    """Make every rank's parameters and buffers equal to rank 0's (plain modules, several processes)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        torch.distributed.broadcast(tensor.data, src=0)


@torch.no_grad()
def average_gradients(modules) -> None:
    """Average the gradients of plain (not FSDP) modules over processes with one all-reduce.

    A parameter without a gradient on some rank counts as zero there; it gets the averaged gradient
    on every rank when any rank had one, so the optimizer steps stay identical across ranks.
    """
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    if not params:
        return
    ref = params[0]
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=ref.dtype, device=ref.device)
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(ref.dtype) for p in params] + [has_grad]
    )
    torch.distributed.all_reduce(flat)
    flat[: -len(params)] /= distributed.get_global_size()
    offset = 0
    for p, any_grad in zip(params, flat[-len(params) :].tolist()):
        value = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
        offset += p.numel()
        if any_grad > 0:
            p.grad = value.clone()


def clip_gradients(model: SSLMetaArch, max_norm: float) -> Dict[str, float]:
    """Clip the gradient norm of each student sub-module to ``max_norm`` (FSDP units clip themselves).

    Returns:
        Each sub-module's gradient norm before clipping.
    """
    norms = {}
    for name, module in model.student.items():
        if is_fsdp(module):
            norms[name] = float(module.clip_grad_norm_(max_norm))
        else:
            norms[name] = float(torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm))
    return norms


# ---------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------


class _FSDPTeacherEncoder(torch.nn.Module):
    """HashingNetwork's computation through FSDP units' ``__call__`` (FSDP gathers parameters only there)."""

    def __init__(self, backbone, hash_head, dtype: torch.dtype):
        super().__init__()
        self.backbone = backbone
        self.hash_head = hash_head
        self.dtype = dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=self.dtype, enabled=self.dtype != torch.float32):
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
        if self.select_on not in ("query", "val"):
            raise ConfigError(f"evaluation.select_on: unknown value '{self.select_on}' (expected query or val)")
        if self.select_on == "val" and cfg.data.val_ratio <= 0:
            raise ConfigError("evaluation.select_on=val needs data.val_ratio > 0 (a validation query split)")
        crop = cfg.crops.global_crops_size
        transform = make_classification_eval_transform(crop_size=crop)
        # The evaluation transform first resizes the shorter side to this size: caching at it changes nothing.
        cache_size = transform.transforms[0].size

        def dataset(split):
            return ClassFolderDataset(
                root,
                split,
                cfg.data.train_ratio,
                cfg.data.val_ratio,
                transform=transform,
                cache=cfg.train.cache_dataset,
                cache_size=cache_size,
            )

        self.db = dataset("train")
        self.queries = dataset(self.select_on)
        self.test_queries = dataset("query") if self.select_on == "val" else None
        self.eval_dir = os.path.join(cfg.train.output_dir, "eval")
        self.metrics_file = os.path.join(self.eval_dir, "retrieval_metrics.jsonl")
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
        """Retrieval metrics of ``encoder`` (collective); rank 0 gets the metrics, the others None."""
        (db_codes, db_labels), (q_codes, q_labels) = self.encode(encoder, queries)
        if not distributed.is_main_process():
            return None
        return evaluate_codes(q_codes, db_codes, q_labels, db_labels, topk=self.cfg.evaluation.topk)

    def random_code_metrics(self, queries=None) -> Dict[str, Any]:
        """Metrics of random +-1 codes (seeded by ``train.seed``) on the same split: the chance level."""
        queries = self.queries if queries is None else queries
        generator = torch.Generator().manual_seed(self.cfg.train.seed)
        bits = self.cfg.hash.hash_bit
        db = torch.randint(0, 2, (len(self.db), bits), generator=generator).float() * 2 - 1
        q = torch.randint(0, 2, (len(queries), bits), generator=generator).float() * 2 - 1
        db_labels = torch.as_tensor(self.db.targets)
        q_labels = torch.as_tensor(queries.targets)
        return evaluate_codes(q, db, q_labels, db_labels, topk=self.cfg.evaluation.topk)

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


def teacher_encoder(model: SSLMetaArch, setup_: TrainingSetup) -> torch.nn.Module:
    """A view of the teacher's backbone and hash head that maps images to codes (no copy)."""
    if has_fsdp_modules(model.teacher):
        encoder = _FSDPTeacherEncoder(model.teacher.backbone, model.teacher.hash_head, setup_.dtype)
    else:
        encoder = HashingNetwork(model.teacher.backbone, model.teacher.hash_head)
    # extract_codes restores the training flag it found: the teacher stays in eval mode.
    return encoder.eval()


def save_teacher_checkpoint(model: SSLMetaArch, cfg, path: str, mAP: float, iteration: int) -> None:
    """Write ``{"teacher", "mAP", "iteration", "config"}`` atomically (collective with FSDP; rank 0 writes)."""
    state = full_state_dict(model.teacher)
    if not distributed.is_main_process():
        return
    payload = {"teacher": state, "mAP": float(mAP), "iteration": int(iteration), "config": OmegaConf.to_yaml(cfg)}
    atomic_torch_save(payload, path)


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------


def build_train_loader(cfg, root: str, input_dtype: torch.dtype, start_iter: int):
    """The multi-crop training loader over the ``train`` split; also writes the split manifest (rank 0)."""
    crops = cfg.crops
    augmentation = DataAugmentationDINO(
        crops.global_crops_scale,
        crops.local_crops_scale,
        crops.local_crops_number,
        global_crops_size=crops.global_crops_size,
        local_crops_size=crops.local_crops_size,
    )
    dataset = ClassFolderDataset(
        root,
        "train",
        cfg.data.train_ratio,
        cfg.data.val_ratio,
        transform=augmentation,
        cache=cfg.train.cache_dataset,
        cache_size=cfg.data.cache_size,
    )
    if distributed.is_main_process():
        manifest = dataset.write_manifest(os.path.join(cfg.train.output_dir, "split_manifest.csv"))
        logger.info(f"split manifest: {manifest}")
    patch = cfg.student.patch_size
    if crops.global_crops_size % patch or crops.local_crops_size % patch:
        raise ConfigError(
            f"crops.global_crops_size={crops.global_crops_size} and crops.local_crops_size={crops.local_crops_size} "
            f"must be multiples of student.patch_size={patch}"
        )
    grid = crops.global_crops_size // patch
    mask_generator = MaskingGenerator(input_size=(grid, grid), max_num_patches=0.5 * grid * grid)
    collate_fn = partial(
        collate_data_and_cast,
        mask_ratio_tuple=tuple(cfg.ibot.mask_ratio_min_max),
        mask_probability=cfg.ibot.mask_sample_probability,
        n_tokens=grid * grid,
        mask_generator=mask_generator,
        dtype=input_dtype,
    )
    batch_size = cfg.train.batch_size_per_gpu
    return make_data_loader(
        dataset,
        batch_size=batch_size,
        num_workers=cfg.train.num_workers,
        shuffle=True,
        seed=cfg.train.seed,
        sampler_advance=start_iter * batch_size,
        drop_last=True,
        collate_fn=collate_fn,
    )


def _reduce_losses(loss_dict: Dict[str, torch.Tensor]) -> Dict[str, float]:
    names = sorted(loss_dict)
    values = distributed.all_reduce_mean(torch.stack([loss_dict[k].float() for k in names]))
    return dict(zip(names, values.tolist()))


def do_train(cfg, setup_: TrainingSetup, evaluator: RetrievalEvaluator, root: str, resume: bool) -> Dict[str, Any]:
    """The training loop with periodic checkpoints and retrieval evaluations of the teacher.

    Returns:
        A summary: best mAP and its iteration, last iteration, last evaluation, paths.
    """
    model = setup_.model
    model.train()
    optimizer = build_optimizer(cfg, model.get_params_groups())
    schedules = build_schedulers(cfg)
    epoch_length = cfg.train.OFFICIAL_EPOCH_LENGTH
    max_iter = cfg.optim.epochs * epoch_length
    output_dir = cfg.train.output_dir

    checkpointables = {"optimizer": optimizer}
    if setup_.scaler is not None:
        checkpointables["scaler"] = setup_.scaler
    checkpointer = FSDPCheckpointer(model, output_dir, **checkpointables)
    state = checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
    start_iter = state.get("iteration", -1) + 1
    best = {"mAP": float(state.get("best_mAP", -1.0)), "iteration": int(state.get("best_iteration", -1))}
    if start_iter > 0:
        logger.info(f"resumed at iteration {start_iter}; best mAP so far {best['mAP']:.4f} (iteration {best['iteration']})")
        if distributed.is_main_process():
            # Records past the checkpoint belong to an interrupted run; this run writes them again.
            drop_records_from(os.path.join(output_dir, "training_metrics.json"), start_iter)
            drop_records_from(os.path.join(output_dir, "eval", "retrieval_metrics.jsonl"), start_iter)
    periodic_checkpointer = AtomicPeriodicCheckpointer(
        checkpointer, period=cfg.train.saveckp_freq * epoch_length, max_iter=max_iter, max_to_keep=3
    )

    data_loader = build_train_loader(cfg, root, setup_.input_dtype, start_iter)
    metric_logger = MetricLogger(delimiter="  ", output_file=os.path.join(output_dir, "training_metrics.json"))
    for name in ("lr", "wd", "mom", "teacher_temp", "last_layer_lr"):
        # Schedules change every iteration: show the current value, in a format that keeps small lrs readable.
        metric_logger.add_meter(name, SmoothedValue(window_size=1, fmt="{value:.4g}"))
    eval_period = cfg.evaluation.eval_period_iterations
    clip = cfg.optim.clip_grad
    plain_multiprocess = distributed.is_enabled() and not setup_.fsdp
    last_eval = None
    last_eval_iteration = -1
    iteration = start_iter

    def evaluate(it: int) -> None:
        nonlocal last_eval, last_eval_iteration
        last_eval = evaluate_and_keep_best(cfg, model, setup_, evaluator, it, best)
        last_eval_iteration = it

    logger.info(f"starting training at iteration {start_iter} of {max_iter}")
    for data in metric_logger.log_every(data_loader, cfg.train.log_period, "Training", max_iter, start_iter):
        lr = schedules["lr"][iteration]
        wd = schedules["wd"][iteration]
        momentum = schedules["momentum"][iteration]
        teacher_temp = schedules["teacher_temp"][iteration]
        last_layer_lr = schedules["last_layer_lr"][iteration]
        apply_optim_scheduler(optimizer, lr, wd, last_layer_lr)

        optimizer.zero_grad(set_to_none=True)
        try:
            # Every rank raises together: forward_backward agrees on finite losses before backward.
            with setup_.autocast():
                loss_dict = model.forward_backward(data, teacher_temp=teacher_temp)
        except NonFiniteLossError as exc:
            raise NonFiniteTrainingError(exc.term, iteration, exc.value, _last_checkpoint(checkpointer)) from exc
        if plain_multiprocess:
            average_gradients(model.student.values())
        if setup_.scaler is not None:
            if clip:
                setup_.scaler.unscale_(optimizer)
                clip_gradients(model, clip)
            setup_.scaler.step(optimizer)
            setup_.scaler.update()
        else:
            if clip:
                for name, norm in clip_gradients(model, clip).items():
                    # Without a grad scaler (which skips such steps itself), stepping would spread NaNs into the weights.
                    if not math.isfinite(norm):
                        raise NonFiniteTrainingError(
                            f"gradient of student.{name}", iteration, norm, _last_checkpoint(checkpointer)
                        )
            optimizer.step()
        model.update_teacher(momentum)

        losses = _reduce_losses(loss_dict)
        for term, value in losses.items():
            # Another rank's loss can be non-finite while this one's is fine.
            if not math.isfinite(value):
                raise NonFiniteTrainingError(term, iteration, value, _last_checkpoint(checkpointer))
        metric_logger.update(
            lr=lr,
            wd=wd,
            mom=momentum,
            teacher_temp=teacher_temp,
            last_layer_lr=last_layer_lr,
            current_batch_size=data["collated_global_crops"].shape[0] // 2,
            **losses,
        )

        if eval_period > 0 and (iteration + 1) % eval_period == 0:
            evaluate(iteration)
        periodic_checkpointer.step(iteration, best_mAP=best["mAP"], best_iteration=best["iteration"])
        iteration += 1

    trained = iteration > start_iter
    if trained and last_eval_iteration != iteration - 1:
        evaluate(iteration - 1)
    metric_logger.synchronize_between_processes()
    return {
        "start_iteration": start_iter,
        "last_iteration": iteration - 1,
        "max_iter": max_iter,
        "best_mAP": best["mAP"],
        "best_iteration": best["iteration"],
        "last_eval": last_eval,
        "last_checkpoint": _last_checkpoint(checkpointer),
    }


def draw_training_curves(output_dir: str, eval_metrics_file: str) -> str:
    """Draw ``<output_dir>/training_curves.png`` from the metric files; "" without records or matplotlib."""
    training = read_jsonl(os.path.join(output_dir, "training_metrics.json"))
    if not training:
        return ""
    path = os.path.join(output_dir, "training_curves.png")
    try:
        from dinov2.eval.plots import plot_training_curves

        return plot_training_curves(training, read_jsonl(eval_metrics_file), path, os.path.basename(output_dir))
    except ImportError:
        logger.warning("matplotlib is not installed: no training_curves.png (pip install -e '.[eval]')")
        return ""


def _last_checkpoint(checkpointer: FSDPCheckpointer) -> str:
    return checkpointer.get_checkpoint_file() if checkpointer.has_checkpoint() else ""


def evaluate_and_keep_best(cfg, model, setup_: TrainingSetup, evaluator: RetrievalEvaluator, iteration: int, best):
    """Evaluate the teacher, record the line, write the last and (if improved) best teacher checkpoints.

    Returns:
        The recorded line on rank 0, None elsewhere.
    """
    metrics = evaluator.evaluate(teacher_encoder(model, setup_))
    selected = selection_value(metrics, cfg.evaluation.topk) if metrics is not None else 0.0
    mAP = torch.tensor([selected], dtype=torch.float64)
    if distributed.is_enabled():
        # Rank 0 computed the metrics; every rank must agree on "improved" for the collective save.
        mAP = mAP.to(setup_.device)
        torch.distributed.broadcast(mAP, src=0)
    mAP = float(mAP.item())
    line = None
    if metrics is not None:
        line = evaluator.record(metrics, iteration)
        logger.info(
            f"retrieval at iteration {iteration}: mAP {mAP:.4f} ({evaluator.select_on} queries, "
            f"{metrics['bits']} bits, {metrics['num_queries']} queries, {metrics['num_database']} database)"
        )
    save_teacher_checkpoint(model, cfg, os.path.join(evaluator.eval_dir, "last", "teacher_checkpoint.pth"), mAP, iteration)
    if mAP > best["mAP"]:
        best["mAP"], best["iteration"] = mAP, iteration
        save_teacher_checkpoint(
            model, cfg, os.path.join(evaluator.eval_dir, "best", "teacher_checkpoint.pth"), mAP, iteration
        )
        logger.info(f"new best mAP {mAP:.4f} at iteration {iteration}")
    return line


def do_eval_only(cfg, setup_: Optional[TrainingSetup], evaluator: RetrievalEvaluator, device) -> Dict[str, Any]:
    """Evaluate MODEL.WEIGHTS, or the teacher of the last checkpoint in the output directory."""
    if cfg.MODEL.WEIGHTS:
        encoder = build_hashing_network(cfg, cfg.MODEL.WEIGHTS).to(device)
        source = cfg.MODEL.WEIGHTS
        # build_hashing_network has read this file already; only the recorded iteration is wanted here.
        iteration = int(load_torch_file(source).get("iteration", -1))
    else:
        checkpointer = FSDPCheckpointer(setup_.model, cfg.train.output_dir)
        if not checkpointer.has_checkpoint():
            raise FileNotFoundError(
                f"--eval-only: no checkpoint in {cfg.train.output_dir} (no last_checkpoint tag) and MODEL.WEIGHTS is empty"
            )
        source = checkpointer.get_checkpoint_file()
        state = checkpointer.load(source, checkpointables=[])
        iteration = int(state.get("iteration", -1))
        encoder = teacher_encoder(setup_.model, setup_)
    metrics = evaluator.evaluate(encoder)
    line = None
    if metrics is not None:
        line = evaluator.record(metrics, iteration, eval_only=True, weights=source)
        logger.info(f"--eval-only {source}: mAP {metrics['mAP']:.4f} ({evaluator.select_on} queries)")
    return {"eval": line, "weights": source}


def finish(cfg, evaluator: RetrievalEvaluator, summary: Dict[str, Any], device) -> Dict[str, Any]:
    """Test-query score of the selected model (select_on=val), chance level, and the printed summary."""
    best_path = os.path.join(evaluator.eval_dir, "best", "teacher_checkpoint.pth")
    test_line = None
    if evaluator.test_queries is not None and os.path.isfile(best_path):
        # Model selection used the validation queries; the test queries are scored once, here.
        network = build_hashing_network(cfg, best_path).to(device)
        metrics = evaluator.evaluate(network, evaluator.test_queries)
        if metrics is not None:
            test_line = evaluator.record(metrics, summary["best_iteration"], split="query", selected_on="val")
    if not distributed.is_main_process():
        return summary
    chance = evaluator.random_code_metrics()
    summary.update(
        {
            "random_codes_mAP": chance["mAP"],
            "test_query_mAP": test_line["mAP"] if test_line else None,
            "best_checkpoint": best_path if os.path.isfile(best_path) else "",
            "metrics_file": evaluator.metrics_file,
            "output_dir": cfg.train.output_dir,
        }
    )
    atomic_write_text(os.path.join(evaluator.eval_dir, "summary.json"), json.dumps(summary, indent=2) + "\n")
    summary["training_curves"] = draw_training_curves(cfg.train.output_dir, evaluator.metrics_file)
    last = summary.get("last_eval") or {}
    lines = [
        "summary",
        f"  iterations: {summary['start_iteration']} -> {summary['last_iteration']} (of {summary['max_iter']})",
        f"  best mAP ({evaluator.select_on} queries): {summary['best_mAP']:.4f} at iteration {summary['best_iteration']}",
        f"  last mAP: {last['mAP']:.4f}" if last else "  last mAP: (no evaluation in this run)",
        f"  random {cfg.hash.hash_bit}-bit codes mAP (chance level, same split): {chance['mAP']:.4f}",
    ]
    if test_line:
        lines.append(f"  test-query mAP of the model selected on val: {test_line['mAP']:.4f}")
    lines += [
        f"  best teacher: {summary['best_checkpoint'] or '(none)'}",
        f"  last checkpoint: {summary['last_checkpoint'] or '(none)'}",
        f"  retrieval metrics: {evaluator.metrics_file}",
    ]
    if summary["training_curves"]:
        lines.append(f"  training curves: {summary['training_curves']}")
    logger.info("\n".join(lines))
    return summary


def main(args) -> Dict[str, Any]:
    """Train (or with ``--eval-only`` evaluate) as described by parsed ``args``.

    Args:
        args: from ``get_args_parser()``: config_file, output_dir, no_resume, eval_only, opts.
    Returns:
        A summary dict (best mAP, iterations, paths; on rank 0 also the chance-level mAP).
    """
    if not args.output_dir:
        raise ConfigError("--output-dir is required")
    if not distributed.is_enabled():
        distributed.enable(overwrite=True)
    output_dir = os.path.abspath(args.output_dir)
    os.makedirs(output_dir, exist_ok=True)
    setup_logging(output=output_dir, level=logging.INFO)

    preview = get_cfg_from_args(args)
    if not args.no_resume or args.eval_only:
        check_resume_config(preview, output_dir)
    elif _has_resume_state(output_dir):
        logger.warning(f"--no-resume: the checkpoints in {output_dir} are ignored and will be overwritten as training goes")
    if distributed.is_enabled():
        # Nobody rewrites config.yaml before every rank has compared it.
        torch.distributed.barrier()
    cfg = setup(args, world_size=distributed.get_global_size(), rank=distributed.get_global_rank())
    logger.info("config:\n" + OmegaConf.to_yaml(cfg))

    device = select_device(cfg)
    logger.info(f"device: {device}, {distributed.get_global_size()} process(es)")
    root = resolve_data_root(cfg)
    evaluator = RetrievalEvaluator(cfg, root, device)

    if args.eval_only:
        setup_ = None if cfg.MODEL.WEIGHTS else TrainingSetup(cfg, device)
        return do_eval_only(cfg, setup_, evaluator, device)

    setup_ = TrainingSetup(cfg, device)
    summary = do_train(cfg, setup_, evaluator, root, resume=not args.no_resume)
    return finish(cfg, evaluator, summary, device)


if __name__ == "__main__":
    try:
        main(get_args_parser(add_help=True).parse_args())
    except (ConfigError, CheckpointError, ImageLoadError, FileNotFoundError, NonFiniteTrainingError) as error:
        # Expected failures (bad config, data or checkpoint, diverged loss) get their message, not a traceback.
        logger.error(str(error))
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
