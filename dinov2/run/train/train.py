"""Launch SDSH training as a SLURM job (or locally with ``--local``) through submitit.

Usage::

    python dinov2/run/train/train.py --nodes 1 --ngpus 8 --partition P --timeout 2800 \\
        --config-file configs/aid.yaml --output-dir /path/to/run [key=value ...]

Options are those of ``dinov2.run.submit.get_args_parser`` plus those of the training entry point
(``dinov2.train.options.get_args_parser``); ``key=value`` config overrides come last. A requeued job
(time limit or preemption) resumes from the last checkpoint in the same output folder. This module
imports neither torch nor the trainer: ``--help`` answers at once, and the checks and the submission
(``dinov2.run.train.launch``) load once the options are parsed.
"""

import argparse
import importlib
import logging
import os
import sys
from typing import Any, Callable, List, Optional

import submitit

from dinov2.run.submit import get_args_parser, get_torch_distributed_env
from dinov2.train.options import get_args_parser as get_train_args_parser
from dinov2.utils.cli import EXIT_STATUS_HELP, run_cli

logger = logging.getLogger("dinov2")

TRAIN_MODULE = "dinov2.train.train"

TrainFn = Callable[[argparse.Namespace], Any]


def _import_train_module() -> Any:
    # Imported on use so that this launcher imports (and its tasks unpickle) without the trainer's
    # dependencies; an import failure is reported with its cause.
    try:
        return importlib.import_module(TRAIN_MODULE)
    except ImportError as e:
        raise RuntimeError(f"cannot import the training entry point {TRAIN_MODULE}: {e}") from e


class Trainer:
    """Submitit task running the training entry point in one process of the job.

    Args:
        args: training and submission options (``output_dir``, ``no_resume``, ...).
        train_fn: function called with ``args`` to train; None means ``dinov2.train.train.main``,
            looked up when the task runs.
    """

    def __init__(self, args: argparse.Namespace, train_fn: Optional[TrainFn] = None) -> None:
        self.args = args
        self.train_fn = train_fn

    def __call__(self) -> Any:
        """Export this process's torch.distributed variables, then train.

        Returns:
            What the training function returns.
        """
        job_env = submitit.JobEnvironment()
        # A MASTER_PORT set at submission time is kept: every task inherits it.
        master_port = os.environ.get("MASTER_PORT")
        dist_env = get_torch_distributed_env(job_env, master_port=int(master_port) if master_port else None)
        os.environ.update(dist_env)
        logger.info(
            "Job %s: rank %s of %s (local rank %s), rendezvous %s:%s",
            job_env.job_id,
            dist_env["RANK"],
            dist_env["WORLD_SIZE"],
            dist_env["LOCAL_RANK"],
            dist_env["MASTER_ADDR"],
            dist_env["MASTER_PORT"],
        )
        train_fn = self.train_fn if self.train_fn is not None else _import_train_module().main
        return train_fn(self.args)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit before a time-out or preemption requeue.

        Returns:
            A DelayedSubmission of a new Trainer with the same options but ``no_resume`` False, so
            that the requeued job resumes from the last checkpoint in the same output folder.
        """
        resume_args = argparse.Namespace(**vars(self.args))
        resume_args.no_resume = False
        logger.info("Requeuing; training will resume from the last checkpoint in %s", resume_args.output_dir)
        return submitit.helpers.DelayedSubmission(type(self)(resume_args, train_fn=self.train_fn))


def get_launcher_args_parser() -> argparse.ArgumentParser:
    """The submission options (``dinov2.run.submit``) followed by those of the training entry point."""
    return get_args_parser(
        description="Submit SDSH training as a SLURM job (or run it locally with --local)",
        parents=[get_train_args_parser(add_help=False)],
        epilog=EXIT_STATUS_HELP,
    )


def main(argv: Optional[List[str]] = None) -> int:
    """Parse the command line and submit one training job.

    Args:
        argv: command-line arguments; None means ``sys.argv[1:]``.
    Returns:
        The exit status of ``dinov2.utils.cli``: 0 once the job is submitted (with --local, once it has
        finished), 2 on bad input.
    """
    return run_cli(get_launcher_args_parser(), "dinov2.run.train.launch:submit", argv)


if __name__ == "__main__":
    # Run the package module's main, not this file's copy, so that the submitted task is pickled as
    # dinov2.run.train.train.Trainer and the job imports it from the installed package.
    from dinov2.run.train.train import main as package_main

    sys.exit(package_main())
