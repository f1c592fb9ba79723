"""Tests of dinov2/logging: SmoothedValue statistics, MetricLogger's JSON lines, and setup_logging's files."""

import json
import logging

import numpy as np
import pytest

from dinov2.logging import MetricLogger, SmoothedValue, setup_logging


def test_smoothed_value_window_and_global_statistics():
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    meter = SmoothedValue(window_size=4)
    for v in values:
        meter.update(v)
    window = values[-4:]
    assert meter.avg == pytest.approx(np.mean(window))
    assert meter.max == max(window)
    assert meter.value == values[-1]
    assert meter.global_avg == pytest.approx(np.mean(values))
    # torch's median of an even-sized window is the lower middle value.
    assert meter.median == sorted(window)[1]


def test_log_every_yields_all_items_and_writes_one_json_line_per_logged_iteration(tmp_path, caplog):
    out = tmp_path / "training_metrics.json"
    metric_logger = MetricLogger(output_file=str(out))
    seen = []
    with caplog.at_level(logging.INFO, logger="dinov2"):
        for item in metric_logger.log_every(iter(range(100)), 3, "Training", n_iterations=12, start_iteration=5):
            seen.append(item)
            metric_logger.update(loss=float(item), lr=0.5)
    # Iterations 5..11 are run: 7 items of the endless stream.
    assert seen == list(range(7))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # Logged when iteration % 3 == 0, and at the last iteration.
    assert [r["iteration"] for r in records] == [6, 9, 11]
    assert records[0]["lr"] == 0.5 and records[0]["loss"] == 0.0  # median of [0, 1]: the lower value
    assert {"iter_time", "data_time"} <= set(records[0])
    progress = [r.message for r in caplog.records if "eta:" in r.message]
    assert len(progress) == 3 and "[ 6/12]" in progress[0] and "loss:" in progress[0]


def test_log_every_calls_after_each_once_the_record_of_that_iteration_is_written(tmp_path):
    # A checkpoint taken in after_each must never be newer than the last written record.
    out = tmp_path / "training_metrics.json"
    metric_logger = MetricLogger(output_file=str(out))
    calls = []

    def after_each(i):
        written = [json.loads(line)["iteration"] for line in out.read_text().splitlines()] if out.exists() else []
        calls.append((i, written[-1] if written else None))

    for item in metric_logger.log_every(iter(range(100)), 1, n_iterations=4, start_iteration=1, after_each=after_each):
        metric_logger.update(loss=float(item))
    assert calls == [(1, 1), (2, 2), (3, 3)]


def test_log_every_does_nothing_when_already_finished(tmp_path):
    metric_logger = MetricLogger(output_file=str(tmp_path / "m.json"))
    assert list(metric_logger.log_every(iter(range(5)), 1, n_iterations=3, start_iteration=3)) == []
    assert not (tmp_path / "m.json").exists()


def test_update_rejects_non_numbers():
    with pytest.raises(TypeError, match="metric 'name'"):
        MetricLogger().update(name="text")


def test_setup_logging_writes_the_log_file_and_captures_warnings(tmp_path):
    logger = setup_logging(output=str(tmp_path), name="dinov2")
    logger.info("hello from the test")
    logging.getLogger("py.warnings").warning("a captured warning")
    setup_logging(output=str(tmp_path / "second"), name="dinov2")
    logger.info("second run")
    for handler in logger.handlers + logging.getLogger("py.warnings").handlers:
        handler.flush()
    first = (tmp_path / "log.txt").read_text()
    assert "hello from the test" in first and "a captured warning" in first
    # A new set-up replaces the handlers: the first file no longer receives lines.
    assert "second run" not in first
    assert "second run" in (tmp_path / "second" / "log.txt").read_text()
    assert sum(isinstance(h, logging.StreamHandler) and h.stream.name.endswith("log.txt") for h in logger.handlers
               if hasattr(h.stream, "name")) == 1


def test_read_jsonl_skips_a_partial_last_line_and_missing_files(tmp_path):
    from dinov2.logging import read_jsonl

    path = tmp_path / "metrics.json"
    path.write_text('{"iteration": 0, "loss": 1.5}\n{"iteration": 1, "loss": 1.2}\n{"iteration": 2, "lo')
    assert read_jsonl(str(path)) == [{"iteration": 0, "loss": 1.5}, {"iteration": 1, "loss": 1.2}]
    assert read_jsonl(str(tmp_path / "missing.json")) == []


def test_the_console_gets_a_short_progress_line_and_the_log_file_the_whole_record(tmp_path, capsys):
    setup_logging(output=str(tmp_path), level=logging.INFO)
    metric_logger = MetricLogger(delimiter="  ", output_file=str(tmp_path / "metrics.json"))
    names = [f"a_long_loss_term_number_{k}" for k in range(12)]
    for _ in metric_logger.log_every(range(3), 1, "Training", n_iterations=3):
        metric_logger.update(lr=0.00123, total_loss=9.87654, **{name: 1.5 for name in names})
    logging.getLogger("dinov2").handlers[-1].flush()
    console = [line for line in capsys.readouterr().out.splitlines() if "Training [" in line]
    assert len(console) == 3 and all(len(line) < 160 for line in console), console
    assert "loss 9.877" in console[-1] and "lr 0.00123" in console[-1] and "s/it" in console[-1]
    log = [line for line in (tmp_path / "log.txt").read_text().splitlines() if "Training  [" in line]
    assert len(log) == 3 and all(name in log[-1] for name in names)
    setup_logging(level=logging.INFO)  # release log.txt
