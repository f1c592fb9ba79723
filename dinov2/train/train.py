"""SDSH training entry point (the DINOv2 trainer with the hash head, losses and retrieval evaluation).

One process on the CPU::

    python dinov2/train/train.py --config-file configs/demo.yaml --output-dir outputs/demo

Several processes (torchrun or SLURM set the torch.distributed variables)::

    torchrun --nproc_per_node 8 dinov2/train/train.py --config-file configs/aid_64bit.yaml \\
        --output-dir runs/aid64 student.pretrained_weights=/weights/dinov2_vits14_pretrain.pth train.data_path=/data/AID

What a run writes to ``--output-dir``: ``config.yaml`` (the merged configuration), ``log.txt``,
``training_metrics.json`` (one JSON object per logged iteration), ``split_manifest.csv`` (the
database/query split of every file), ``model_<iter>.pth`` / ``model_final.pth`` and the
``last_checkpoint`` tag (resume state), ``eval/retrieval_metrics.jsonl`` (one JSON object per
evaluation) and ``eval/{best,last}/teacher_checkpoint.pth`` (the teacher with the best / latest mAP).

Precision and distribution: CUDA with torch.distributed wraps every student/teacher module in FSDP
(``compute_precision.*``) with a sharded grad scaler for fp16; one CUDA process trains plain modules
under ``torch.autocast`` (GradScaler for fp16); the CPU trains in fp32, or with
``compute_precision.cpu_mixed_precision=true`` through the same autocast and grad-scaler path. Several
CPU processes (gloo) train plain replicas whose student gradients are averaged with all-reduce after
each backward pass (the weights are broadcast from rank 0 first), which keeps the replicas, and so
the EMA teachers, identical.
"""

import argparse
import logging
import math
import os
import sys
from typing import Any, Dict, Optional

import torch
from omegaconf import OmegaConf

from dinov2 import distributed
from dinov2.checkpoint import AtomicPeriodicCheckpointer, CheckpointError, FSDPCheckpointer, save_teacher_checkpoint
from dinov2.data import ImageLoadError
from dinov2.data.builders import build_train_loader, is_labeled, resolve_data_root
from dinov2.distributed.devices import select_device, use_fsdp
from dinov2.logging import MetricLogger, SmoothedValue, drop_records_from, setup_logging
from dinov2.train.evaluator import RetrievalEvaluator
from dinov2.train.optim import apply_optim_scheduler, build_optimizer, build_schedulers
from dinov2.train.selection import UNIFORM_DINO_TARGETS, do_eval_only, evaluate_and_keep_best, finish
from dinov2.train.setup import NonFiniteGradientError, TrainingSetup
from dinov2.train.ssl_meta_arch import NonFiniteLossError
from dinov2.utils.config import ConfigError, check_resume_config, get_cfg_from_args, has_resume_state, setup
from dinov2.utils.validation import check_run_inputs

logger = logging.getLogger("dinov2")

_EXAMPLES = """examples:
  # the demo: a generated dataset and a tiny ViT trained from scratch on the CPU (a few minutes)
  python dinov2/train/train.py --config-file configs/demo.yaml --output-dir outputs/demo

  # AID, 64 bits, from the public DINOv2 ViT-S/14 weights, on 8 GPUs
  torchrun --nproc_per_node 8 dinov2/train/train.py --config-file configs/aid_64bit.yaml \\
      --output-dir runs/aid64 train.data_path=/data/AID student.pretrained_weights=/w/dinov2_vits14_pretrain.pth

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


class CodeCollapseError(RuntimeError):
    """Training stopped by ``train.stop_on_collapse``; the summary and the checkpoints are written."""


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


def _reduce_losses(loss_dict: Dict[str, torch.Tensor]) -> Dict[str, float]:
    names = sorted(loss_dict)
    values = distributed.all_reduce_mean(torch.stack([loss_dict[k].float() for k in names]))
    return dict(zip(names, values.tolist()))


def do_train(cfg, setup_: TrainingSetup, evaluator: Optional[RetrievalEvaluator], root: str, resume: bool) -> Dict[str, Any]:
    """The training loop with periodic checkpoints and retrieval evaluations of the teacher.

    Without an evaluator (unlabeled images), every evaluation period only writes the teacher to
    ``eval/last/teacher_checkpoint.pth``.

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
    # Checkpoints written before selection knew the chance level: their best counts as above it.
    best["above_chance"] = bool(state.get("best_above_chance", best["iteration"] >= 0))
    best.update(state.get("best_holdout") or {})
    if start_iter > 0:
        logger.info(f"resumed at iteration {start_iter}; best mAP so far {best['mAP']:.4f} (iteration {best['iteration']})")
        if distributed.is_main_process():
            # Records past the checkpoint belong to an interrupted run; this run writes them again.
            drop_records_from(os.path.join(output_dir, "training_metrics.json"), start_iter)
            drop_records_from(os.path.join(output_dir, "eval", "retrieval_metrics.jsonl"), start_iter)
    periodic_checkpointer = AtomicPeriodicCheckpointer(
        checkpointer, period=cfg.train.saveckp_freq * epoch_length, max_iter=max_iter, max_to_keep=3
    )

    data_loader = build_train_loader(cfg, root, setup_.input_dtype, start_iter, setup_.device)
    metric_logger = MetricLogger(delimiter="  ", output_file=os.path.join(output_dir, "training_metrics.json"))
    scaler_meters = ("loss_scale", "step_skipped") if setup_.scaler is not None else ()
    for name in ("lr", "wd", "mom", "teacher_temp", "last_layer_lr", *scaler_meters):
        # These change every iteration: show the current value, in a format that keeps small lrs readable.
        metric_logger.add_meter(name, SmoothedValue(window_size=1, fmt="{value:.4g}"))
    eval_period = cfg.evaluation.eval_period_iterations
    clip = cfg.optim.clip_grad
    last_eval = None
    last_eval_iteration = -1
    iteration = start_iter
    collapses = []  # {"iteration", "collapse"} of this run's evaluations (rank 0)
    collapsed_in_a_row = 0
    stopped = ""
    dino_checks = []  # {"iteration", "entropy"} of the DINO targets at each evaluation

    def check_dino_targets(it: int) -> None:
        # The mean over the meter's window (the last 20 iterations), the same on every rank.
        meter = metric_logger.meters.get("dino_target_entropy")
        if meter is None or not meter.deque:
            return
        entropy = meter.avg
        dino_checks.append({"iteration": it, "entropy": entropy})
        if entropy >= UNIFORM_DINO_TARGETS:
            logger.warning(
                f"iteration {it}: DINO TARGETS UNIFORM: the teacher's DINO targets have {entropy:.4f} of the "
                f"maximum entropy (mean of the last {len(meter.deque)} iterations), so the DINO term gives the "
                "codes no signal and what they learn comes from the other loss terms. This happens when the teacher "
                "maps every image to nearly one point (e.g. low-contrast images, trained from scratch); "
                f"hash.loss_contrastive (now {cfg.hash.loss_contrastive}) ties the two views' codes without it"
            )

    def evaluate(it: int) -> None:
        nonlocal last_eval, last_eval_iteration, collapsed_in_a_row, stopped
        check_dino_targets(it)
        if evaluator is None:
            # Unlabeled images: no retrieval metrics, but the teacher is kept for indexing.
            last = os.path.join(output_dir, "eval", "last", "teacher_checkpoint.pth")
            save_teacher_checkpoint(model, cfg, last, float("nan"), it)
            last_eval_iteration = it
            return
        result = evaluate_and_keep_best(cfg, model, setup_, evaluator, it, best)
        last_eval, last_eval_iteration = result.line, it
        if result.line is not None:
            collapses.append({"iteration": it, "collapse": result.line["collapse"]})
        collapsed_in_a_row = collapsed_in_a_row + 1 if result.full_collapse else 0
        if cfg.train.stop_on_collapse and collapsed_in_a_row >= cfg.train.stop_on_collapse_evals:
            stopped = (
                f"train.stop_on_collapse: the teacher's database codes collapsed at {collapsed_in_a_row} evaluations in "
                f"a row (last at iteration {it}, see {evaluator.metrics_file}); the run stops here. "
                "Change the recipe (e.g. optim.base_lr, teacher temperatures, hash.loss_hash_reg, hash.loss_contrastive) "
                "and start again"
            )
            logger.error(stopped)

    def checkpoint(it: int) -> None:
        # After log_every has written iteration it's record: a kill after this checkpoint keeps that record.
        periodic_checkpointer.step(
            it, best_mAP=best["mAP"], best_iteration=best["iteration"], best_above_chance=best["above_chance"],
            best_holdout={k: v for k, v in best.items() if k.startswith("holdout")},
        )

    logger.info(f"starting training at iteration {start_iter} of {max_iter}")
    steps = metric_logger.log_every(data_loader, cfg.train.log_period, "Training", max_iter, start_iter, checkpoint)
    for data in steps:
        if stopped:
            # Here, not right after the evaluation: log_every writes the previous iteration's record first.
            break
        lr = schedules["lr"][iteration]
        wd = schedules["wd"][iteration]
        momentum = schedules["momentum"][iteration]
        teacher_temp = schedules["teacher_temp"][iteration]
        last_layer_lr = schedules["last_layer_lr"][iteration]
        apply_optim_scheduler(optimizer, lr, wd, last_layer_lr)

        try:
            # Every rank raises together: forward_backward agrees on finite losses before backward.
            result = setup_.train_step(optimizer, data, teacher_temp, momentum, clip)
        except NonFiniteLossError as exc:
            raise NonFiniteTrainingError(exc.term, iteration, exc.value, _last_checkpoint(checkpointer)) from exc
        except NonFiniteGradientError as exc:
            raise NonFiniteTrainingError(
                f"gradient of student.{exc.module}", iteration, exc.norm, _last_checkpoint(checkpointer)
            ) from exc
        loss_dict = result.losses
        if not result.stepped:
            logger.warning(
                f"iteration {iteration}: inf/NaN gradients; the grad scaler skipped the step and lowered its "
                f"scale to {setup_.scaler.get_scale():g} (student and teacher unchanged)"
            )
        losses = _reduce_losses(loss_dict)
        for term, value in losses.items():
            # Another rank's loss can be non-finite while this one's is fine.
            if not math.isfinite(value):
                raise NonFiniteTrainingError(term, iteration, value, _last_checkpoint(checkpointer))
        scaler_state = {}
        if setup_.scaler is not None:
            scaler_state = {"loss_scale": setup_.scaler.get_scale(), "step_skipped": int(not result.stepped)}
        metric_logger.update(
            lr=lr,
            wd=wd,
            mom=momentum,
            teacher_temp=teacher_temp,
            last_layer_lr=last_layer_lr,
            current_batch_size=data["collated_global_crops"].shape[0] // 2,
            **scaler_state,
            **losses,
        )

        if eval_period > 0 and (iteration + 1) % eval_period == 0:
            evaluate(iteration)
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
        "best_above_chance": best["above_chance"],
        **{k: v for k, v in best.items() if k.startswith("holdout")},
        "last_eval": last_eval,
        "collapse": collapses,
        "dino_targets": dino_checks,
        "stopped": stopped,
        "last_checkpoint": _last_checkpoint(checkpointer),
    }


def _last_checkpoint(checkpointer: FSDPCheckpointer) -> str:
    return checkpointer.get_checkpoint_file() if checkpointer.has_checkpoint() else ""


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
    # Before anything is written: the config's values and every file it names.
    check_run_inputs(preview, need_pretrained=not (args.eval_only and preview.MODEL.WEIGHTS))
    if not args.no_resume or args.eval_only:
        check_resume_config(preview, output_dir)
    elif has_resume_state(output_dir):
        logger.warning(f"--no-resume: the checkpoints in {output_dir} are ignored and will be overwritten as training goes")
    if distributed.is_enabled():
        # Nobody rewrites config.yaml before every rank has compared it.
        torch.distributed.barrier()
    cfg = setup(args, world_size=distributed.get_global_size(), rank=distributed.get_global_rank())
    logger.info("config:\n" + OmegaConf.to_yaml(cfg))

    device = select_device(cfg)
    logger.info(f"device: {device}, {distributed.get_global_size()} process(es)")
    root = resolve_data_root(cfg)
    if is_labeled(cfg, root):
        evaluator = RetrievalEvaluator(cfg, root, device)
    elif args.eval_only:
        raise ConfigError(
            f"--eval-only needs labelled images, but train.data_path={cfg.train.data_path} (data.source="
            f"{cfg.data.source}) has no labels"
        )
    else:
        evaluator = None
        logger.warning(
            f"train.data_path={cfg.train.data_path} (data.source={cfg.data.source}) has no labels: training without "
            "retrieval evaluation; the teacher is written to eval/last/teacher_checkpoint.pth at every "
            "evaluation.eval_period_iterations and at the end (index it with dinov2/search)"
        )

    if args.eval_only:
        setup_ = None if cfg.MODEL.WEIGHTS else TrainingSetup(cfg, device, fsdp=use_fsdp(device))
        return do_eval_only(cfg, setup_, evaluator, device)

    setup_ = TrainingSetup(cfg, device, fsdp=use_fsdp(device))
    summary = do_train(cfg, setup_, evaluator, root, resume=not args.no_resume)
    summary = finish(cfg, evaluator, summary, device)
    if summary["stopped"]:
        raise CodeCollapseError(summary["stopped"])
    return summary


if __name__ == "__main__":
    try:
        main(get_args_parser(add_help=True).parse_args())
    except (
        ConfigError, CheckpointError, ImageLoadError, FileNotFoundError, NonFiniteTrainingError, CodeCollapseError
    ) as error:
        # Expected failures (bad config, data or checkpoint, diverged loss) get their message, not a traceback.
        logger.error(str(error))
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
