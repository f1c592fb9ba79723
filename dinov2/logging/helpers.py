"""Smoothed training metrics, a progress line with ETA, and a JSON-lines record of logged iterations."""

import datetime
import json
import logging
import os
import time
from collections import defaultdict, deque
from typing import Callable, Dict, Iterable, Iterator, List, Optional

import torch

from dinov2 import distributed
from dinov2.checkpoint import CheckpointError, atomic_write_text

logger = logging.getLogger("dinov2")


class SmoothedValue:
    """A series of values with a median and mean over a sliding window and a global average.

    Args:
        window_size: number of recent values the median, average and max are taken over.
        fmt: format string with the fields median, avg, global_avg, max and value.
    """

    def __init__(self, window_size: int = 20, fmt: Optional[str] = None):
        self.deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt or "{median:.4f} ({global_avg:.4f})"

    def update(self, value: float, num: int = 1) -> None:
        """Add ``value`` (counted ``num`` times in the global average)."""
        self.deque.append(value)
        self.count += num
        self.total += value * num

    def synchronize_between_processes(self) -> None:
        """Sum ``count`` and ``total`` over processes (the window stays local)."""
        if not distributed.is_enabled():
            return
        t = torch.tensor([self.count, self.total], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        self.count = int(t[0].item())
        self.total = float(t[1].item())

    @property
    def median(self) -> float:
        return float(torch.tensor(list(self.deque), dtype=torch.float64).median().item()) if self.deque else float("nan")

    @property
    def avg(self) -> float:
        return float(torch.tensor(list(self.deque), dtype=torch.float64).mean().item()) if self.deque else float("nan")

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else float("nan")

    @property
    def max(self) -> float:
        return max(self.deque) if self.deque else float("nan")

    @property
    def value(self) -> float:
        return self.deque[-1] if self.deque else float("nan")

    def __str__(self) -> str:
        return self.fmt.format(
            median=self.median, avg=self.avg, global_avg=self.global_avg, max=self.max, value=self.value
        )


class MetricLogger:
    """Named SmoothedValues, printed as one progress line every ``print_freq`` iterations.

    Args:
        delimiter: separator between the fields of the progress line.
        output_file: JSON-lines file receiving one object per logged iteration (rank 0 only), e.g.
            ``<output-dir>/training_metrics.json``; None disables it.
    """

    def __init__(self, delimiter: str = "  ", output_file: Optional[str] = None):
        self.meters: Dict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.delimiter = delimiter
        self.output_file = output_file

    def update(self, **kwargs) -> None:
        """Add one value per named meter (tensors are converted with ``item()``)."""
        for name, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            if not isinstance(value, (float, int)):
                raise TypeError(f"metric '{name}' has a value of type {type(value).__name__}, expected a number")
            self.meters[name].update(value)

    def __getattr__(self, attr):
        meters = self.__dict__.get("meters", {})
        if attr in meters:
            return meters[attr]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{attr}'")

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def synchronize_between_processes(self) -> None:
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def add_meter(self, name: str, meter: SmoothedValue) -> None:
        self.meters[name] = meter

    def dump_in_output_file(self, iteration: int, iter_time: float, data_time: float) -> None:
        """Append ``{"iteration", "iter_time", "data_time", <meter>: median, ...}`` as one JSON line."""
        if self.output_file is None or not distributed.is_main_process():
            return
        record = {"iteration": iteration, "iter_time": iter_time, "data_time": data_time}
        record.update({name: meter.median for name, meter in self.meters.items()})
        # One whole line per append, flushed to the OS when the file closes: a killed process leaves
        # complete lines. Not fsynced (once per logged iteration would cost too much); a line cut off
        # by a power loss is dropped when the run resumes (dinov2.checkpoint.drop_records_from).
        with open(self.output_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def log_every(
        self,
        iterable: Iterable,
        print_freq: int,
        header: Optional[str] = None,
        n_iterations: Optional[int] = None,
        start_iteration: int = 0,
        after_each: Optional[Callable[[int], None]] = None,
    ) -> Iterator:
        """Yield the items of ``iterable`` and log progress after every ``print_freq``-th one.

        Iteration numbers start at ``start_iteration`` (for resumed runs); iteration ``i`` is logged
        after the caller's loop body has processed it, when ``i % print_freq == 0`` or it is the last.

        Args:
            iterable: the items (an endless data loader is fine with ``n_iterations``).
            print_freq: log every this many iterations.
            header: text at the start of each progress line.
            n_iterations: iteration number to stop at (exclusive); ``len(iterable)`` when None.
            start_iteration: number of the first item.
            after_each: called with ``i`` once iteration ``i``'s record is written (or not due), e.g. to
                checkpoint: a process killed after the checkpoint then never lacks that record.
        Yields:
            The items of ``iterable``.
        """
        i = start_iteration
        header = header or ""
        if n_iterations is None:
            n_iterations = len(iterable)
        if i >= n_iterations:
            return
        start_time = time.time()
        end = time.time()
        iter_time = SmoothedValue(fmt="{avg:.6f}")
        data_time = SmoothedValue(fmt="{avg:.6f}")
        width = len(str(n_iterations))
        for obj in iterable:
            data_time.update(time.time() - end)
            yield obj
            iter_time.update(time.time() - end)
            if i % print_freq == 0 or i == n_iterations - 1:
                self.dump_in_output_file(iteration=i, iter_time=iter_time.avg, data_time=data_time.avg)
                eta_seconds = iter_time.global_avg * (n_iterations - 1 - i)
                eta = str(datetime.timedelta(seconds=int(eta_seconds)))
                fields = [
                    header,
                    f"[{i:{width}d}/{n_iterations}]",
                    f"eta: {eta}",
                    str(self),
                    f"time: {iter_time}",
                    f"data: {data_time}",
                ]
                if torch.cuda.is_available():
                    fields.append(f"max mem: {torch.cuda.max_memory_allocated() / 1024.0**2:.0f} MB")
                logger.info(self.delimiter.join(f for f in fields if f))
            if after_each is not None:
                after_each(i)
            i += 1
            end = time.time()
            if i >= n_iterations:
                break
        total_time = time.time() - start_time
        total = str(datetime.timedelta(seconds=int(total_time)))
        done = i - start_iteration
        logger.info(f"{header} total time: {total} ({total_time / max(done, 1):.6f} s / it)")


def read_jsonl(path: str) -> List[dict]:
    """The JSON objects of a JSON-lines metrics file, in order.

    A missing file gives an empty list, and a line that does not parse (the last line of a run that
    is writing it, or one cut by a kill) is skipped.
    """
    if not os.path.isfile(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def drop_records_from(path: str, iteration: int) -> int:
    """Remove the training records of ``iteration`` and later from a JSON-lines file, atomically.

    A run resumed from the checkpoint of iteration ``iteration - 1`` writes these records again;
    without this, an interrupted run's records past its last checkpoint would appear twice. A
    final line cut short by a kill is dropped too. Records marked ``eval_only`` are kept: they
    describe a given checkpoint, not this run's progress.

    Args:
        path: the JSON-lines file (nothing happens when it does not exist).
        iteration: first iteration whose records are removed.
    Returns:
        The number of lines removed.
    """
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    kept = []
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines) - 1:
                continue
            raise CheckpointError(f"{path}, line {number + 1}: not a JSON record ({line[:80]!r})") from None
        if isinstance(record, dict) and not record.get("eval_only") and record.get("iteration", -1) >= iteration:
            continue
        kept.append(line)
    removed = len([line for line in lines if line.strip()]) - len(kept)
    if removed:
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    return removed
