"""The training loop's state between evaluations: the best model so far, the collapse watch, the stop rule.

``do_train`` feeds it each evaluation's outcome; the class decides nothing about models or files, so its
rules are tested on hand-made metric lines (``tests/train/test_monitor.py``).
"""

import logging
from typing import Any, Dict, List, Mapping, Optional

logger = logging.getLogger("dinov2")

# Normalised entropy of the DINO teacher targets (dinov2.loss.normalized_entropy, mean over the last
# iterations) at or above which they count as uniform: the DINO term then gives the codes no signal.
UNIFORM_DINO_TARGETS = 0.99


class TrainingMonitor:
    """What the loop remembers between evaluations.

    Args:
        stop_on_collapse: stop the run after ``stop_after`` evaluations in a row with fully collapsed codes.
        stop_after: that number of evaluations (``train.stop_on_collapse_evals``).
        contrastive_weight: ``hash.loss_contrastive``, named in the uniform-targets warning.
        metrics_file: the evaluation lines' file, named in the stop message.

    Attributes:
        best: ``{"mAP", "iteration", "above_chance"}`` of the best evaluation so far; the selection code
            (``dinov2.train.selection.evaluate_and_keep_best``) updates it in place.
        last_eval: the last evaluation's metric line (None before one, or without labels).
        last_eval_iteration: the iteration of the last evaluation, -1 before one.
        collapses: ``{"iteration", "collapse"}`` of every evaluation line of this run.
        collapsed_in_a_row: evaluations in a row whose database codes collapsed fully.
        stopped: why the stop rule ended the run, "" while it runs.
        dino_checks: ``{"iteration", "entropy"}`` of the DINO targets at each evaluation.
    """

    def __init__(self, stop_on_collapse: bool, stop_after: int, contrastive_weight: float = 0.0, metrics_file: str = ""):
        self.stop_on_collapse = stop_on_collapse
        self.stop_after = stop_after
        self.contrastive_weight = contrastive_weight
        self.metrics_file = metrics_file
        self.best: Dict[str, Any] = {"mAP": -1.0, "iteration": -1, "above_chance": False}
        self.last_eval: Optional[Dict[str, Any]] = None
        self.last_eval_iteration = -1
        self.collapses: List[Dict[str, Any]] = []
        self.collapsed_in_a_row = 0
        self.stopped = ""
        self.dino_checks: List[Dict[str, Any]] = []

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take the best model's record from a resume checkpoint's extra state (nothing for a fresh run)."""
        self.best["mAP"] = float(state.get("best_mAP", -1.0))
        self.best["iteration"] = int(state.get("best_iteration", -1))
        # Checkpoints written before selection knew the chance level: their best counts as above it.
        self.best["above_chance"] = bool(state.get("best_above_chance", self.best["iteration"] >= 0))
        # The evaluation selected on the database holdout (evaluation.holdout_ratio), when there is one.
        self.best.update(state.get("best_holdout") or {})

    def checkpoint_state(self) -> Dict[str, Any]:
        """The extra state a resume checkpoint keeps, read back by ``restore``."""
        return {
            "best_mAP": self.best["mAP"],
            "best_iteration": self.best["iteration"],
            "best_above_chance": self.best["above_chance"],
            **({"best_holdout": self._holdout()} if self._holdout() else {}),
        }

    def check_dino_targets(self, iteration: int, entropy: Optional[float], window: int) -> bool:
        """Record the DINO targets' entropy and warn when they are uniform.

        Args:
            iteration: the evaluation's iteration.
            entropy: the mean fraction of the maximum entropy over the last ``window`` iterations, None
                when the DINO term is off (nothing is recorded).
            window: how many iterations the mean covers (named in the warning).
        Returns:
            Whether the targets are uniform.
        """
        if entropy is None:
            return False
        self.dino_checks.append({"iteration": iteration, "entropy": entropy})
        if entropy < UNIFORM_DINO_TARGETS:
            return False
        logger.warning(
            f"iteration {iteration}: DINO TARGETS UNIFORM: the teacher's DINO targets have {entropy:.4f} of the "
            f"maximum entropy (mean of the last {window} iterations), so the DINO term gives the "
            "codes no signal and what they learn comes from the other loss terms. This happens when the teacher "
            "maps every image to nearly one point (e.g. low-contrast images, trained from scratch); "
            f"hash.loss_contrastive (now {self.contrastive_weight}) ties the two views' codes without it"
        )
        return True

    def record_teacher_only(self, iteration: int) -> None:
        """An evaluation period without labels: only the teacher was written."""
        self.last_eval_iteration = iteration

    def record_evaluation(self, iteration: int, line: Optional[Dict[str, Any]], full_collapse: bool) -> None:
        """Take one evaluation's outcome and apply the stop rule.

        Args:
            iteration: the evaluation's iteration.
            line: its metric line (with ``collapse``), None on ranks other than 0.
            full_collapse: whether the database codes collapsed fully (the same on every rank).
        """
        self.last_eval, self.last_eval_iteration = line, iteration
        if line is not None:
            self.collapses.append({"iteration": iteration, "collapse": line["collapse"]})
        self.collapsed_in_a_row = self.collapsed_in_a_row + 1 if full_collapse else 0
        if self.stop_on_collapse and self.collapsed_in_a_row >= self.stop_after:
            self.stopped = (
                f"train.stop_on_collapse: the teacher's database codes collapsed at {self.collapsed_in_a_row} "
                f"evaluations in a row (last at iteration {iteration}, see {self.metrics_file}); the run stops here. "
                "Change the recipe (e.g. optim.base_lr, teacher temperatures, hash.loss_hash_reg, hash.loss_contrastive) "
                "and start again"
            )
            logger.error(self.stopped)

    def needs_final_evaluation(self, next_iteration: int, trained: bool) -> bool:
        """Whether the loop ended (at ``next_iteration``) after training steps not yet evaluated."""
        return trained and self.last_eval_iteration != next_iteration - 1

    def _holdout(self) -> Dict[str, Any]:
        """``holdout_mAP``, ``holdout_iteration``, ``holdout_test_mAP`` of the holdout-selected evaluation, if any."""
        return {k: v for k, v in self.best.items() if k.startswith("holdout")}

    def summary(self) -> Dict[str, Any]:
        """The run summary's keys that this state holds."""
        return {
            "best_mAP": self.best["mAP"],
            "best_iteration": self.best["iteration"],
            "best_above_chance": self.best["above_chance"],
            **self._holdout(),
            "last_eval": self.last_eval,
            "collapse": self.collapses,
            "dino_targets": self.dino_checks,
            "stopped": self.stopped,
        }
