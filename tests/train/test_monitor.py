"""The training loop's state between evaluations, on hand-made metric lines."""

import logging

from dinov2.train.monitor import UNIFORM_DINO_TARGETS, TrainingMonitor


def _line(collapse="ok"):
    return {"mAP": 0.5, "collapse": collapse}


def _monitor(stop_on_collapse=True, stop_after=2):
    return TrainingMonitor(stop_on_collapse, stop_after, contrastive_weight=0.25, metrics_file="run/eval/m.jsonl")


def test_a_fresh_run_has_no_best_and_does_not_stop():
    monitor = _monitor()
    assert monitor.best == {"mAP": -1.0, "iteration": -1, "above_chance": False}
    assert monitor.summary() == {
        "best_mAP": -1.0,
        "best_iteration": -1,
        "best_above_chance": False,
        "last_eval": None,
        "collapse": [],
        "dino_targets": [],
        "stopped": "",
    }


def test_the_stop_rule_counts_full_collapses_in_a_row_only():
    monitor = _monitor(stop_after=2)
    monitor.record_evaluation(9, _line("full"), full_collapse=True)
    monitor.record_evaluation(19, _line("partial"), full_collapse=False)  # resets the count
    monitor.record_evaluation(29, _line("full"), full_collapse=True)
    assert monitor.collapsed_in_a_row == 1 and monitor.stopped == ""
    monitor.record_evaluation(39, _line("full"), full_collapse=True)
    assert monitor.collapsed_in_a_row == 2
    assert "2 evaluations in a row" in monitor.stopped and "iteration 39" in monitor.stopped
    assert "run/eval/m.jsonl" in monitor.stopped
    assert [c["collapse"] for c in monitor.collapses] == ["full", "partial", "full", "full"]


def test_without_stop_on_collapse_the_run_goes_on():
    monitor = _monitor(stop_on_collapse=False, stop_after=1)
    for it in range(5):
        monitor.record_evaluation(it, _line("full"), full_collapse=True)
    assert monitor.collapsed_in_a_row == 5 and monitor.stopped == ""


def test_ranks_without_a_metric_line_count_collapses_but_record_no_line():
    monitor = _monitor(stop_after=1)
    monitor.record_evaluation(4, None, full_collapse=True)
    assert monitor.collapses == [] and monitor.last_eval is None and monitor.last_eval_iteration == 4
    assert monitor.stopped  # every rank stops together


def test_restore_reads_the_best_model_of_a_checkpoint():
    monitor = _monitor()
    monitor.restore({"iteration": 49, "best_mAP": 0.7, "best_iteration": 39, "best_above_chance": False})
    assert monitor.best == {"mAP": 0.7, "iteration": 39, "above_chance": False}
    assert monitor.checkpoint_state() == {"best_mAP": 0.7, "best_iteration": 39, "best_above_chance": False}


def test_a_checkpoint_older_than_the_chance_level_counts_its_best_as_above_it():
    old = _monitor()
    old.restore({"best_mAP": 0.4, "best_iteration": 9})
    assert old.best["above_chance"] is True
    fresh = _monitor()
    fresh.restore({})
    assert fresh.best == {"mAP": -1.0, "iteration": -1, "above_chance": False}


def test_uniform_dino_targets_are_recorded_and_warned_about(caplog):
    monitor = _monitor()
    with caplog.at_level(logging.WARNING, logger="dinov2"):
        assert monitor.check_dino_targets(9, UNIFORM_DINO_TARGETS - 0.01, window=20) is False
        assert not caplog.records
        assert monitor.check_dino_targets(19, UNIFORM_DINO_TARGETS, window=20) is True
    assert "DINO TARGETS UNIFORM" in caplog.text and "iteration 19" in caplog.text and "0.25" in caplog.text
    assert monitor.check_dino_targets(29, None, window=0) is False  # the DINO term is off
    assert [c["iteration"] for c in monitor.dino_checks] == [9, 19]


def test_a_final_evaluation_is_needed_only_after_unevaluated_steps():
    monitor = _monitor()
    assert not monitor.needs_final_evaluation(0, trained=False)
    assert monitor.needs_final_evaluation(10, trained=True)
    monitor.record_evaluation(9, _line(), full_collapse=False)
    assert not monitor.needs_final_evaluation(10, trained=True)
    monitor.record_teacher_only(14)
    assert monitor.last_eval_iteration == 14 and monitor.needs_final_evaluation(20, trained=True)
