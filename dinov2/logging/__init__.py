"""Logging set-up for training and evaluation entry points.

``setup_logging`` configures the ``dinov2`` logger once per process: rank 0 writes to the console and
to ``<output>/log.txt``; every other rank writes only to ``<output>/log.txt.rank<k>``, so a multi-process
run keeps one readable console and a full record per process.
"""

import logging
import os
import sys
from typing import Optional

from dinov2 import distributed

from .helpers import MetricLogger, SmoothedValue, drop_records_from, read_jsonl

__all__ = ["MetricLogger", "SmoothedValue", "drop_records_from", "read_jsonl", "setup_logging"]

_FORMAT = "%(levelname).1s%(asctime)s %(process)s %(name)s %(filename)s:%(lineno)s] %(message)s"
_DATE_FORMAT = "%Y%m%d %H:%M:%S"


def _log_file_name(output: str, rank: int) -> str:
    if output.endswith((".txt", ".log")):
        filename = output
    else:
        filename = os.path.join(output, "log.txt")
    if rank > 0:
        filename = f"{filename}.rank{rank}"
    return filename


def _configure_logger(name: Optional[str], level: int, output: Optional[str], rank: int) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    # Replace earlier handlers so that a second set-up (another run in the same process) does not
    # duplicate lines or keep writing to the previous run's file.
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(fmt=_FORMAT, datefmt=_DATE_FORMAT)

    if rank == 0:
        console = logging.StreamHandler(stream=sys.stdout)
        console.setLevel(logging.DEBUG)
        console.setFormatter(formatter)
        logger.addHandler(console)

    if output:
        filename = _log_file_name(output, rank)
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        file_handler = logging.StreamHandler(open(filename, "a", encoding="utf-8"))
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger


def setup_logging(
    output: Optional[str] = None,
    *,
    name: str = "dinov2",
    level: int = logging.INFO,
    capture_warnings: bool = True,
) -> logging.Logger:
    """Configure the ``name`` logger for this process.

    Args:
        output: a directory (the log goes to ``<output>/log.txt``), a ``.txt``/``.log`` file name, or
            None for the console only. Ranks other than 0 append ``.rank<k>`` to the file name.
        name: logger to configure (``dinov2``; None for the root logger).
        level: logging level.
        capture_warnings: route ``warnings.warn`` messages through logging (``py.warnings``).
    Returns:
        The configured logger.
    """
    logging.captureWarnings(capture_warnings)
    if capture_warnings:
        # Warnings are logged by "py.warnings"; send them to the same destinations.
        warnings_logger = _configure_logger("py.warnings", logging.WARNING, output, distributed.get_global_rank())
        warnings_logger.propagate = False
    return _configure_logger(name, level, output, distributed.get_global_rank())
