"""Best-model selection, eval-only mode and the summary of a run.

Every evaluation records a line, rewrites ``eval/last/teacher_checkpoint.pth`` and, when the
selection value (``dinov2.eval.metrics.selection_value``) improves, ``eval/best/``. The summary
scores the selected model once on the test queries (``select_on=val``) and gives the chance level.
"""

import json
import logging
import os
from typing import Any, Dict

import torch

from dinov2 import distributed
from dinov2.eval.evaluator import RetrievalEvaluator, save_teacher_checkpoint, teacher_encoder
from dinov2.eval.metrics import selection_value
from dinov2.eval.plots import draw_training_curves
from dinov2.fsdp.checkpointer import FSDPCheckpointer
from dinov2.models.hashing_network import build_hashing_network
from dinov2.utils.checkpoint import atomic_write_text, load_torch_file

logger = logging.getLogger("dinov2")


def evaluate_and_keep_best(cfg, model, setup_, evaluator: RetrievalEvaluator, iteration: int, best):
    """Evaluate the teacher, record the line, write the last and (if improved) best teacher checkpoints.

    Returns:
        The recorded line on rank 0, None elsewhere.
    """
    metrics = evaluator.evaluate(teacher_encoder(model, setup_.dtype))
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


def do_eval_only(cfg, setup_, evaluator: RetrievalEvaluator, device) -> Dict[str, Any]:
    """Evaluate MODEL.WEIGHTS, or the teacher of the last checkpoint in the output directory.

    Args:
        setup_: the training setup (``model``, ``dtype``) whose checkpoint is loaded; None with MODEL.WEIGHTS.
    """
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
        encoder = teacher_encoder(setup_.model, setup_.dtype)
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
