"""Best-model selection, eval-only mode and the summary of a run.

Every evaluation records a line, rewrites ``eval/last/teacher_checkpoint.pth`` and, when the
selection value (``dinov2.eval.metrics.selection_value``) improves, ``eval/best/``; with
``evaluation.holdout_ratio`` > 0, also ``eval/best_holdout/`` when the database-holdout mAP improves. The summary
scores the selected model once on the test queries (``select_on=val``) and gives the chance level.
"""

import json
import logging
import os
from typing import Any, Dict, List, NamedTuple, Optional

import torch

from dinov2 import distributed
from dinov2.checkpoint import FSDPCheckpointer, atomic_write_text, load_torch_file, save_teacher_checkpoint
from dinov2.eval.hashing.collapse import describe_collapse
from dinov2.eval.metrics import selection_value
from dinov2.eval.plots import draw_training_curves
from dinov2.models import build_hashing_network
from dinov2.train.evaluator import RetrievalEvaluator, teacher_encoder
from dinov2.train.monitor import UNIFORM_DINO_TARGETS

logger = logging.getLogger("dinov2")


class Evaluation(NamedTuple):
    """One training-time evaluation: the recorded line (rank 0; None elsewhere) and, on every rank,
    whether its codes were fully collapsed."""

    line: Optional[Dict[str, Any]]
    full_collapse: bool


def above_chance(metrics: Dict[str, Any], topk: Optional[int] = None) -> bool:
    """Whether an evaluation can count as progress: codes not fully collapsed, and both the selection
    value and the tie-aware mAP above those of random codes on the same split (``RetrievalEvaluator.evaluate``)."""
    return (
        metrics["collapse"] != "full"
        and selection_value(metrics, topk) > metrics["random_codes_selection_value"]
        and metrics["mAP_tie_aware"] > metrics["random_codes_mAP_tie_aware"]
    )


def report_collapse(metrics: Dict[str, Any], where: str) -> None:
    """Log ``CODE COLLAPSE`` (full) or a partial-collapse warning with the figures; nothing when ok."""
    verdict = metrics["collapse"]
    if verdict == "ok":
        return
    figures = (
        f"{describe_collapse(metrics, metrics['num_database'])}; mAP {metrics['mAP']:.4f}, tie-aware "
        f"{metrics['mAP_tie_aware']:.4f}, random codes {metrics['random_codes_mAP']:.4f} (tie-aware "
        f"{metrics['random_codes_mAP_tie_aware']:.4f})"
    )
    if verdict == "full":
        logger.warning(
            f"CODE COLLAPSE {where}: {figures}. The codes hardly separate the images: the ranking is mostly "
            "ties, and the stable mAP reflects the database order"
        )
    else:
        logger.warning(f"partial code collapse {where}: {figures}")


def evaluate_and_keep_best(cfg, model, setup_, evaluator: RetrievalEvaluator, iteration: int, best) -> Evaluation:
    """Evaluate the teacher, record the line, write the last and (if improved) best teacher checkpoints.

    Selection ranks evaluations above chance (``above_chance``) before all others, then by the
    selection value: a collapsed or chance-level teacher never replaces one that beat chance, and
    only an evaluation above chance is logged and recorded (``new_best``) as a new best. When no
    evaluation has beaten chance, ``eval/best`` still holds the highest-scoring teacher.

    Args:
        best: ``{"mAP", "iteration", "above_chance"}`` of the best evaluation so far, updated in place.
    """
    topk = cfg.evaluation.topk
    metrics = evaluator.evaluate(teacher_encoder(model, setup_.dtype))
    if metrics is not None:
        flags = [selection_value(metrics, topk), float(above_chance(metrics, topk)), float(metrics["collapse"] == "full"),
                 float(metrics.get("holdout_mAP", -1.0))]  # fmt: skip
    else:
        flags = [0.0, 0.0, 0.0, -1.0]
    decided = torch.tensor(flags, dtype=torch.float64)
    if distributed.is_enabled():
        # Rank 0 computed the metrics; every rank must agree on "improved" for the collective save.
        decided = decided.to(setup_.device)
        torch.distributed.broadcast(decided, src=0)
    mAP, qualifies, full = float(decided[0].item()), bool(decided[1].item()), bool(decided[2].item())
    improved = (qualifies, mAP) > (best["above_chance"], best["mAP"])
    holdout = float(decided[3].item())
    improved_holdout = holdout >= 0 and holdout > best.get("holdout_mAP", -1.0)
    line = None
    if metrics is not None:
        extra = {"new_best_holdout": improved_holdout} if holdout >= 0 else {}
        line = evaluator.record(metrics, iteration, new_best=improved and qualifies, **extra)
        logger.info(
            f"retrieval at iteration {iteration}: mAP {mAP:.4f} (tie-aware {metrics['mAP_tie_aware']:.4f}, random "
            f"codes {metrics['random_codes_mAP']:.4f}; {evaluator.select_on} queries, {metrics['bits']} bits, "
            f"{metrics['num_queries']} queries, {metrics['num_database']} database, {metrics['distinct_codes']} "
            f"distinct database codes)"
        )
        report_collapse(metrics, f"at iteration {iteration}")
    save_teacher_checkpoint(model, cfg, os.path.join(evaluator.eval_dir, "last", "teacher_checkpoint.pth"), mAP, iteration)
    if improved_holdout:
        # Selected on validation queries from the database side; its test-query mAP is reported, not used.
        best["holdout_mAP"], best["holdout_iteration"], best["holdout_test_mAP"] = holdout, iteration, mAP
        save_teacher_checkpoint(
            model, cfg, os.path.join(evaluator.eval_dir, "best_holdout", "teacher_checkpoint.pth"), mAP, iteration
        )
    if improved:
        best["mAP"], best["iteration"], best["above_chance"] = mAP, iteration, qualifies
        save_teacher_checkpoint(
            model, cfg, os.path.join(evaluator.eval_dir, "best", "teacher_checkpoint.pth"), mAP, iteration
        )
        if qualifies:
            logger.info(f"new best mAP {mAP:.4f} at iteration {iteration}")
        else:
            logger.warning(
                f"mAP {mAP:.4f} at iteration {iteration} is the highest so far but not progress (codes collapsed or "
                "not above the random-code level): kept in eval/best only until an evaluation beats chance"
            )
    return Evaluation(line, full)


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
        logger.info(
            f"--eval-only {source}: mAP {metrics['mAP']:.4f} (tie-aware {metrics['mAP_tie_aware']:.4f}, random codes "
            f"{metrics['random_codes_mAP']:.4f}; {evaluator.select_on} queries)"
        )
        report_collapse(metrics, f"in {source}")
    return {"eval": line, "weights": source}


def finish(cfg, evaluator: Optional[RetrievalEvaluator], summary: Dict[str, Any], device) -> Dict[str, Any]:
    """Test-query score of the selected model (select_on=val), chance level, and the printed summary."""
    if evaluator is None:
        return _finish_unlabeled(cfg, summary)
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
    collapses = summary.get("collapse", [])
    summary.update(
        {
            "random_codes_mAP": chance["mAP"],
            "random_codes_mAP_tie_aware": chance["mAP_tie_aware"],
            "test_query_mAP": test_line["mAP"] if test_line else None,
            "best_checkpoint": best_path if os.path.isfile(best_path) else "",
            "metrics_file": evaluator.metrics_file,
            "output_dir": cfg.train.output_dir,
        }
    )
    atomic_write_text(os.path.join(evaluator.eval_dir, "summary.json"), json.dumps(summary, indent=2) + "\n")
    summary["training_curves"] = draw_training_curves(cfg.train.output_dir, evaluator.metrics_file)
    last = summary.get("last_eval") or {}
    best_note = "" if summary.get("best_above_chance", True) else " (no evaluation beat the random-code level)"
    lines = [
        "summary",
        f"  iterations: {summary['start_iteration']} -> {summary['last_iteration']} (of {summary['max_iter']})",
        f"  best mAP ({evaluator.select_on} queries): {summary['best_mAP']:.4f} at iteration {summary['best_iteration']}"
        + best_note,
        f"  last mAP: {last['mAP']:.4f} (tie-aware {last['mAP_tie_aware']:.4f})"
        if last
        else "  last mAP: (no evaluation in this run)",
        f"  random {cfg.hash.hash_bit}-bit codes mAP (chance level, same split): {chance['mAP']:.4f} "
        f"(tie-aware {chance['mAP_tie_aware']:.4f})",
    ]
    if last:
        lines.append(f"  last database codes: {last['collapse']} ({describe_collapse(last, last['num_database'])})")
    for verdict, label in (("full", "CODE COLLAPSE"), ("partial", "partial code collapse")):
        iterations = [c["iteration"] for c in collapses if c["collapse"] == verdict]
        if iterations:
            lines.append(
                f"  {label} at {len(iterations)} of {len(collapses)} evaluations (iterations "
                f"{', '.join(map(str, iterations))})"
            )
    lines += dino_targets_lines(summary)
    if summary.get("stopped"):
        lines.append(f"  stopped: {summary['stopped']}")
    if test_line:
        lines.append(f"  test-query mAP of the model selected on val: {test_line['mAP']:.4f}")
    if summary.get("holdout_iteration", -1) >= 0:
        lines.append(
            f"  test-query mAP of the evaluation selected on the database holdout (evaluation.holdout_ratio="
            f"{cfg.evaluation.holdout_ratio}): {summary['holdout_test_mAP']:.4f} at iteration "
            f"{summary['holdout_iteration']} (holdout mAP {summary['holdout_mAP']:.4f}); the best mAP above is "
            "selected on the test queries (the reference protocol)"
        )
    lines += [
        f"  best teacher: {summary['best_checkpoint'] or '(none)'}",
        f"  last checkpoint: {summary['last_checkpoint'] or '(none)'}",
        f"  retrieval metrics: {evaluator.metrics_file}",
    ]
    if summary["training_curves"]:
        lines.append(f"  training curves: {summary['training_curves']}")
    logger.info("\n".join(lines))
    return summary


def dino_targets_lines(summary: Dict[str, Any]) -> List[str]:
    """Summary lines on the DINO targets: their last entropy, and the evaluations at which they were uniform."""
    checks = summary.get("dino_targets") or []
    if not checks:
        return []
    lines = [f"  DINO target entropy (of the maximum) at the last evaluation: {checks[-1]['entropy']:.4f}"]
    uniform = [c["iteration"] for c in checks if c["entropy"] >= UNIFORM_DINO_TARGETS]
    if uniform:
        lines.append(
            f"  DINO TARGETS UNIFORM at {len(uniform)} of {len(checks)} evaluations (iterations "
            f"{', '.join(map(str, uniform))}): the DINO term gave the codes no signal there"
        )
    return lines


def _finish_unlabeled(cfg, summary: Dict[str, Any]) -> Dict[str, Any]:
    """The summary of a run on unlabeled images: no retrieval metrics, the teacher to index."""
    if not distributed.is_main_process():
        return summary
    eval_dir = os.path.join(cfg.train.output_dir, "eval")
    last = os.path.join(eval_dir, "last", "teacher_checkpoint.pth")
    summary.update({"labeled": False, "last_teacher": last if os.path.isfile(last) else "", "output_dir": cfg.train.output_dir})
    os.makedirs(eval_dir, exist_ok=True)
    atomic_write_text(os.path.join(eval_dir, "summary.json"), json.dumps(summary, indent=2) + "\n")
    lines = [
        "summary",
        f"  iterations: {summary['start_iteration']} -> {summary['last_iteration']} (of {summary['max_iter']})",
        "  no retrieval evaluation: the images have no labels",
        *dino_targets_lines(summary),
        f"  last teacher: {summary['last_teacher'] or '(none)'}",
        f"  last checkpoint: {summary['last_checkpoint'] or '(none)'}",
    ]
    logger.info("\n".join(lines))
    return summary
